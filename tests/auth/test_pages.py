"""Register, sign in, sign out and change password through the HTML forms (issue 2 item 5)."""
from __future__ import annotations

from tests.auth.conftest import audit_events, is_signed_in, post_form, session_rows
from tests.conftest import TEST_PASSWORD

NEW_PASSWORD = "Fresh-Granite-42-Lantern"


def test_register_creates_the_account_and_signs_in(client, db):
    response = post_form(client, "/auth/register",
                         {"email": "New.Person@Example.com", "password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    from models import User
    user = db.session.scalar(db.select(User).where(User.email == "new.person@example.com"))
    assert user is not None and user.password_hash.startswith("$argon2id$")
    assert is_signed_in(client)
    assert "Dashboard" in client.get("/").get_data(as_text=True)


def test_register_shows_inline_errors_for_a_weak_password_and_a_mismatch(client):
    response = post_form(client, "/auth/register", {"email": "a@example.com", "password": "password1",
                                                    "confirm": "password2"})
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'class="error">The passwords do not match.' in html
    response = post_form(client, "/auth/register", {"email": "a@example.com", "password": "password1",
                                                    "confirm": "password1"})
    html = response.get_data(as_text=True)
    assert "field has-error" in html and "special character" in html
    assert not is_signed_in(client)


def test_register_refuses_a_common_password_and_a_taken_email(client, user):
    response = post_form(client, "/auth/register", {"email": "b@example.com", "password": "Password123!",
                                                    "confirm": "Password123!"})
    assert "too common" in response.get_data(as_text=True)
    response = post_form(client, "/auth/register", {"email": user.email.upper(), "password": NEW_PASSWORD,
                                                    "confirm": NEW_PASSWORD})
    assert "already exists" in response.get_data(as_text=True)


def test_register_accepts_a_long_passphrase_exactly_as_typed(client, db):
    passphrase = "  correct horse battery staple, forever é " * 3  # 126 characters, spaces kept
    response = post_form(client, "/auth/register", {"email": "c@example.com", "password": passphrase,
                                                    "confirm": passphrase})
    assert response.status_code == 302
    client.post("/auth/logout", data={"csrf_token": _token(client)})
    response = post_form(client, "/auth/login", {"email": "c@example.com", "password": passphrase.strip()})
    assert response.status_code == 200  # trimmed is a different password
    response = post_form(client, "/auth/login", {"email": "c@example.com", "password": passphrase})
    assert response.status_code == 302


def _token(client):
    from tests.conftest import csrf_token_from
    return csrf_token_from(client.get("/auth/sessions").get_data(as_text=True))


def test_login_page_has_exactly_the_documented_fields(client):
    html = client.get("/auth/login").get_data(as_text=True)
    for name in ('name="email"', 'name="password"', 'name="remember"', 'name="csrf_token"'):
        assert name in html
    assert 'type="checkbox"' in html


def test_login_redirects_to_a_safe_next_only(client, user):
    response = post_form(client, "/auth/login?next=/orders?x=1", {"email": user.email, "password": TEST_PASSWORD})
    assert response.headers["Location"] == "/orders?x=1"
    for unsafe in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
        other = client.application.test_client()
        response = post_form(other, f"/auth/login?next={unsafe}", {"email": user.email, "password": TEST_PASSWORD})
        assert response.headers["Location"] == "/", unsafe


def test_login_gives_one_generic_error_for_every_failure(client, make_user, db, app):
    from utils import accounts
    active = make_user(email="active@example.com")
    inactive = make_user(email="gone@example.com")
    admin = make_user(email="boss@example.com", is_admin=True)
    accounts.set_active(inactive, False, actor=admin)
    db.session.commit()
    attempts = [("nobody@example.com", TEST_PASSWORD), (active.email, "Wrong-Password-1!"),
                (inactive.email, TEST_PASSWORD), ("not-an-email", TEST_PASSWORD)]
    bodies = []
    for email, password in attempts:
        response = post_form(app.test_client(), "/auth/login", {"email": email, "password": password})
        assert response.status_code == 200
        html = response.get_data(as_text=True)
        assert accounts.GENERIC_LOGIN_ERROR in html
        bodies.append(html.replace(email, ""))
    assert len({body.split("<form")[0] for body in bodies}) == 1  # nothing before the form differs


def test_logout_is_post_only_and_ends_the_session(signed_in, db, user):
    assert signed_in.get("/auth/logout").status_code == 405
    response = post_form(signed_in, "/auth/sessions", {}, action="/auth/logout")
    assert response.status_code == 302 and response.headers["Location"].endswith("/auth/login")
    assert not is_signed_in(signed_in)
    assert all(row.revoked_at is not None for row in session_rows(db, user.id))


def test_change_password_keeps_this_session_and_ends_the_others(app, client, user, login, db):
    other_device = app.test_client()
    login(user, test_client=other_device)
    login(user)
    version = user.session_version
    response = post_form(client, "/auth/password", {"current_password": TEST_PASSWORD,
                                                    "new_password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert response.status_code == 302
    assert is_signed_in(client) and not is_signed_in(other_device)
    db.session.refresh(user)
    assert user.session_version == version + 1
    assert len([row for row in session_rows(db, user.id) if row.revoked_at is None]) == 1
    assert audit_events(db, "auth.password_changed")


def test_change_password_needs_the_current_password(signed_in):
    response = post_form(signed_in, "/auth/password", {"current_password": "Not-The-Password-1",
                                                       "new_password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and "current password is not correct" in html


def test_pages_need_a_signed_in_user(client):
    for url in ("/auth/password", "/auth/sessions"):
        response = client.get(url)
        assert response.status_code == 302 and "/auth/login" in response.headers["Location"]
