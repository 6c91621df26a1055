"""Password rules, email normalisation and hashing in utils.accounts (issue 2 item 5)."""
from __future__ import annotations

import pytest

from utils import accounts
from utils.errors import Conflict, ValidationFailed


@pytest.mark.parametrize("password", ["Tr4der!Gecko", "tidal marble lantern quietly",  # mixed / passphrase
                                      ("Zq7#kV9mWp2!" * 11)[:128]])  # 128 characters, the maximum
def test_acceptable_passwords(app, password):
    assert accounts.password_problems(password) == []


@pytest.mark.parametrize("password, fragment", [
    ("Sh0rt!", "at least 8"), ("alllowercase1!", "Mix upper"), ("NoDigits!here", "Mix upper"),
    ("Password1!", "too common"), ("aaaaaaaaaaaaaaaaaaaa", "too common"), (("Zq7#kV9mWp2!" * 11)[:129], "at most 128"),
])
def test_refused_passwords_say_why(app, password, fragment):
    problems = accounts.password_problems(password)
    assert problems and fragment in " ".join(problems)


def test_a_password_built_from_the_email_is_refused(app):
    assert "too common" in " ".join(accounts.password_problems("Jonathan.Smith1!", "jonathan.smith@example.com"))


def test_emails_are_normalised_and_validated(app):
    assert accounts.normalise_email("  Mixed.Case@Example.COM ") == "mixed.case@example.com"
    for bad in ("", "no-at-sign", "a@b", "a@@example.com"):
        with pytest.raises(ValidationFailed):
            accounts.normalise_email(bad)


def test_register_hashes_with_argon2id_and_rejects_duplicates(app, db):
    user = accounts.register("Hash@Example.com", "Tr4der!Gecko")
    db.session.commit()
    assert user.password_hash.startswith("$argon2id$") and "Tr4der!Gecko" not in user.password_hash
    with pytest.raises(Conflict):
        accounts.register("hash@example.com", "Tr4der!Gecko")


def test_authenticate_accepts_any_case_of_the_email_and_refuses_with_one_error(app, db, user):
    from tests.conftest import TEST_PASSWORD
    assert accounts.authenticate(user.email.upper(), TEST_PASSWORD).id == user.id
    with pytest.raises(accounts.InvalidCredentials) as unknown:
        accounts.authenticate("nobody@example.com", TEST_PASSWORD)
    with pytest.raises(accounts.InvalidCredentials) as wrong:
        accounts.authenticate(user.email, "Wrong-Password-1!")
    assert str(unknown.value) == str(wrong.value) == accounts.GENERIC_LOGIN_ERROR
