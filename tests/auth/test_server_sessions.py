"""Server-side sessions: copied cookies die, ids rotate, timeouts, remember-me, cookie flags (issue 2 item 6)."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from models import UserSession, utcnow
from tests.auth.conftest import SESSION_COOKIE, clone_client, cookie_value, is_signed_in, post_form, session_rows
from tests.conftest import TEST_PASSWORD, base_config, csrf_token_from

NEW_PASSWORD = "Fresh-Granite-42-Lantern"


def _move_session(db, user_id: int, **offsets: timedelta) -> None:
    """Shift the user's session timestamps into the past (instead of sleeping)."""
    for row in session_rows(db, user_id):
        for column, offset in offsets.items():
            setattr(row, column, getattr(row, column) - offset)
    db.session.commit()


def test_the_cookie_carries_only_a_random_token_whose_hash_is_stored(signed_in, db, user):
    [row] = session_rows(db, user.id)
    with signed_in.session_transaction() as stored:
        token = stored["_user_id"]
    import hashlib
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest() and token not in row.token_hash
    assert str(user.id) != token and user.email not in cookie_value(signed_in)


def test_the_session_cookie_changes_at_sign_in(client, user, login):
    client.get("/auth/login")
    before = cookie_value(client)
    assert before
    login(user)
    assert cookie_value(client) != before
    planted = client.application.test_client()
    planted.set_cookie(SESSION_COOKIE, before)  # a cookie planted before sign-in stays anonymous
    assert not is_signed_in(planted)


def test_a_cookie_copied_before_logout_is_refused(app, signed_in):
    copy = clone_client(app, signed_in)
    assert is_signed_in(copy)
    post_form(signed_in, "/auth/sessions", {}, action="/auth/logout")
    assert not is_signed_in(copy)


def test_a_cookie_copied_before_revocation_is_refused(app, client, user, login, db):
    stolen = app.test_client()
    login(user, test_client=stolen)
    login(user)
    copy = clone_client(app, stolen)
    victim_row = session_rows(db, user.id)[0]
    response = post_form(client, "/auth/sessions", {}, action=f"/auth/sessions/{victim_row.id}/revoke")
    assert response.status_code == 302
    assert not is_signed_in(copy) and not is_signed_in(stolen) and is_signed_in(client)


def test_a_cookie_copied_before_a_password_change_is_refused(app, client, user, login):
    other = app.test_client()
    login(user, test_client=other)
    copy = clone_client(app, other)
    login(user)
    post_form(client, "/auth/password", {"current_password": TEST_PASSWORD,
                                         "new_password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert not is_signed_in(copy) and is_signed_in(client)


def test_a_cookie_of_a_deactivated_user_is_refused_on_the_next_request(app, signed_in, user, make_user, db):
    from utils import accounts
    copy = clone_client(app, signed_in)
    admin = make_user(email="admin@example.com", is_admin=True)
    accounts.set_active(db.session.merge(user), False, actor=admin)
    db.session.commit()
    assert not is_signed_in(signed_in) and not is_signed_in(copy)


def test_an_idle_session_expires_after_session_idle_minutes(signed_in, db, user, app):
    assert app.config["SESSION_IDLE_MINUTES"] == 30
    _move_session(db, user.id, last_seen_at=timedelta(minutes=29))
    assert is_signed_in(signed_in)  # and that request counts as activity again
    _move_session(db, user.id, last_seen_at=timedelta(minutes=31))
    assert not is_signed_in(signed_in)


def test_a_busy_session_still_ends_after_session_absolute_hours(signed_in, db, user, app):
    [row] = session_rows(db, user.id)
    assert app.config["SESSION_ABSOLUTE_HOURS"] == 12
    assert row.expires_at - row.created_at == timedelta(hours=12)
    _move_session(db, user.id, created_at=timedelta(hours=11, minutes=59))
    assert is_signed_in(signed_in)
    _move_session(db, user.id, created_at=timedelta(minutes=2))  # 12 h 01 min old, but active a moment ago
    assert not is_signed_in(signed_in)


def test_remember_me_survives_idleness_but_not_thirty_days(client, user, login, db):
    response = login(user, remember=True)
    remember_cookie = [h for h in response.headers.getlist("Set-Cookie") if h.startswith("tw_remember=")]
    assert remember_cookie, "no remember-me cookie"
    from email.utils import parsedate_to_datetime
    expires = parsedate_to_datetime(remember_cookie[0].split("Expires=")[1].split(";")[0])
    assert timedelta(days=29) < expires - utcnow() <= timedelta(days=30, minutes=1)
    [row] = session_rows(db, user.id)
    assert row.remember and row.expires_at - row.created_at == timedelta(days=30)
    _move_session(db, user.id, last_seen_at=timedelta(hours=5))
    assert is_signed_in(client)
    _move_session(db, user.id, created_at=timedelta(days=30, minutes=1))
    assert not is_signed_in(client)


def test_a_remember_cookie_alone_restores_the_session_until_it_is_revoked(app, client, user, login, db):
    login(user, remember=True)
    remembered = app.test_client()
    remembered.set_cookie("tw_remember", cookie_value(client, "tw_remember"))
    assert is_signed_in(remembered)
    db.session.execute(update(UserSession).where(UserSession.user_id == user.id).values(revoked_at=utcnow()))
    db.session.commit()
    fresh = app.test_client()
    fresh.set_cookie("tw_remember", cookie_value(client, "tw_remember"))
    assert not is_signed_in(fresh)


def _set_cookie_headers(response) -> dict[str, str]:
    return {header.split("=", 1)[0]: header for header in response.headers.getlist("Set-Cookie")}


def test_cookies_are_httponly_and_samesite_lax_and_not_secure_in_test(client, user):
    response = post_form(client, "/auth/login", {"email": user.email, "password": TEST_PASSWORD, "remember": "y"})
    cookies = _set_cookie_headers(response)
    for name in ("tw_session", "tw_remember"):
        assert "HttpOnly" in cookies[name] and "SameSite=Lax" in cookies[name]
        assert "Secure" not in cookies[name]


def test_cookies_are_secure_in_production(redis_server, database_url, make_user):
    from main import create_app
    user = make_user(email="prod@example.com")
    production = create_app(base_config(redis_server.url, database_url, TRADEWARDEN_ENV="production"))
    with production.app_context():
        browser = production.test_client()
        page = browser.get("/auth/login", base_url="https://localhost")
        response = browser.post("/auth/login", base_url="https://localhost",
                                headers={"Referer": "https://localhost/auth/login"},
                                data={"email": user.email, "password": TEST_PASSWORD, "remember": "y",
                                      "csrf_token": csrf_token_from(page.get_data(as_text=True))})
        assert response.status_code == 302, response.get_data(as_text=True)[:300]
        cookies = _set_cookie_headers(response)
        for name in ("tw_session", "tw_remember"):
            assert "Secure" in cookies[name] and "HttpOnly" in cookies[name] and "SameSite=Lax" in cookies[name]
