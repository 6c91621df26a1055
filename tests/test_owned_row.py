"""`owned_row`: the one lookup of a user's row by an id that came from a request."""
from __future__ import annotations

import pytest


@pytest.fixture
def owner_key(db, make_user):
    from utils import api_auth
    owner = make_user(email="owner@example.com")
    key, _secret = api_auth.create_api_key(owner, "script", None)
    db.session.commit()
    return owner, key


def test_the_owner_gets_the_row(owner_key):
    from models import ApiKey
    from utils.database import owned_row
    owner, key = owner_key
    assert owned_row(ApiKey, owner, key.id, "No such API key.") is key
    assert owned_row(ApiKey, owner, str(key.id), "No such API key.") is key


@pytest.mark.parametrize("row_id", ["abc", None, 0, -1, 2**63, 2**80, "1e3"])
def test_malformed_and_out_of_range_ids_are_not_found(owner_key, row_id):
    from models import ApiKey
    from utils.database import owned_row
    from utils.errors import NotFound
    owner, _key = owner_key
    with pytest.raises(NotFound) as raised:
        owned_row(ApiKey, owner, row_id, "No such API key.", code="api_key_not_found")
    assert raised.value.code == "api_key_not_found" and raised.value.message == "No such API key."


def test_another_users_row_is_not_found_like_a_missing_one(owner_key, make_user):
    from models import ApiKey
    from utils.database import owned_row
    from utils.errors import NotFound
    _owner, key = owner_key
    stranger = make_user(email="stranger@example.com")
    with pytest.raises(NotFound) as raised:
        owned_row(ApiKey, stranger, key.id, "No such API key.")
    assert raised.value.message == "No such API key."
