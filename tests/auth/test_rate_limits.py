"""Rate limits on the auth forms, the soft lock, and the in-memory fallback when Redis stops (issue 2 item 7)."""
from __future__ import annotations

from datetime import timedelta

from models import utcnow
from tests.auth.conftest import audit_events, post_form
from tests.conftest import TEST_PASSWORD, csrf_token_from


def _sign_in_attempt(client, email: str, password: str = "Wrong-Password-1!", ip: str = "127.0.0.1"):
    page = client.get("/auth/login", environ_base={"REMOTE_ADDR": ip})
    token = csrf_token_from(page.get_data(as_text=True))
    return client.post("/auth/login", data={"email": email, "password": password, "csrf_token": token},
                       environ_base={"REMOTE_ADDR": ip})


def _assert_rate_limit_page(response):
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert response.mimetype == "text/html" and "Too many requests" in response.get_data(as_text=True)


def test_sign_in_is_limited_to_ten_posts_a_minute_per_address(client, user):
    statuses = [_sign_in_attempt(client, f"someone{n}@example.com", ip="10.0.0.7").status_code for n in range(10)]
    assert statuses == [200] * 10
    _assert_rate_limit_page(_sign_in_attempt(client, "someone-else@example.com", ip="10.0.0.7"))
    # GETs never count, and another address is not affected
    assert client.get("/auth/login", environ_base={"REMOTE_ADDR": "10.0.0.7"}).status_code == 200
    assert _sign_in_attempt(client, user.email, TEST_PASSWORD, ip="10.0.0.8").status_code == 302


def test_sign_in_is_limited_to_five_posts_a_minute_per_account(client, user):
    for n in range(5):
        assert _sign_in_attempt(client, user.email, ip=f"10.0.1.{n}").status_code == 200
    _assert_rate_limit_page(_sign_in_attempt(client, f"  {user.email.upper()} ", TEST_PASSWORD, ip="10.0.1.99"))
    assert _sign_in_attempt(client, "other@example.com", ip="10.0.1.99").status_code == 200


def test_a_rate_limited_form_post_is_a_page_even_with_a_same_site_referer(client, user):
    for n in range(5):
        _sign_in_attempt(client, user.email, ip=f"10.0.2.{n}")
    page = client.get("/auth/login")
    response = client.post("/auth/login", headers={"Referer": "http://localhost/auth/login"},
                           data={"email": user.email, "password": "x",
                                 "csrf_token": csrf_token_from(page.get_data(as_text=True))})
    _assert_rate_limit_page(response)


def test_register_is_limited_to_five_posts_an_hour_per_address(client):
    for n in range(5):
        response = post_form(client, "/auth/register", {"email": f"r{n}@example.com", "password": "weak",
                                                        "confirm": "weak"})
        assert response.status_code == 200
    response = post_form(client, "/auth/register", {"email": "r9@example.com", "password": "weak", "confirm": "weak"})
    _assert_rate_limit_page(response)
    assert 3000 < int(response.headers["Retry-After"]) <= 3600


def test_password_change_is_limited_to_three_posts_a_minute_per_user(signed_in):
    data = {"current_password": "Not-The-Password-1", "new_password": "x", "confirm": "x"}
    for _ in range(3):
        assert post_form(signed_in, "/auth/password", data).status_code == 200
    _assert_rate_limit_page(post_form(signed_in, "/auth/password", data))


def test_a_rate_limit_hit_is_audited(client, user):
    for n in range(6):
        _sign_in_attempt(client, user.email, ip=f"10.0.3.{n}")
    from utils.extensions import db
    assert audit_events(db, "security.rate_limited")


def test_twenty_failures_soft_lock_the_account_even_for_the_right_password(client, user, db, app):
    from utils import accounts
    with app.test_request_context("/auth/login", method="POST"):
        for _ in range(accounts.LOCKOUT_THRESHOLD):
            try:
                accounts.authenticate(user.email, "Wrong-Password-1!")
            except accounts.InvalidCredentials:
                db.session.commit()
    db.session.refresh(user)
    assert user.locked_until is not None and user.locked_until - utcnow() > timedelta(minutes=14)
    response = _sign_in_attempt(client, user.email, TEST_PASSWORD)
    assert response.status_code == 200 and accounts.GENERIC_LOGIN_ERROR in response.get_data(as_text=True)
    assert audit_events(db, "auth.account_locked")
    user.locked_until = utcnow() - timedelta(seconds=1)  # the 15 minutes are over
    db.session.commit()
    assert _sign_in_attempt(client, user.email, TEST_PASSWORD).status_code == 302


def test_nineteen_failures_then_a_success_reset_the_count(client, user, db, app):
    from utils import accounts
    with app.test_request_context("/auth/login", method="POST"):
        for _ in range(accounts.LOCKOUT_THRESHOLD - 1):
            try:
                accounts.authenticate(user.email, "Wrong-Password-1!")
            except accounts.InvalidCredentials:
                db.session.commit()
        accounts.authenticate(user.email, TEST_PASSWORD)
        db.session.commit()
    db.session.refresh(user)
    assert user.failed_login_count == 0 and user.locked_until is None


def test_sign_in_stays_rate_limited_while_redis_is_down(client, user, redis_server, app):
    from utils.extensions import limiter
    assert _sign_in_attempt(client, "warmup@example.com", ip="10.0.4.1").status_code == 200
    redis_server.stop()
    try:
        statuses = [_sign_in_attempt(client, f"down{n}@example.com", ip="10.0.4.2").status_code for n in range(10)]
        assert statuses == [200] * 10  # no 500 while the storage is unreachable
        _assert_rate_limit_page(_sign_in_attempt(client, "down-more@example.com", ip="10.0.4.2"))
        for n in range(5):
            _sign_in_attempt(client, user.email, ip=f"10.0.5.{n}")
        _assert_rate_limit_page(_sign_in_attempt(client, user.email, TEST_PASSWORD, ip="10.0.5.9"))
        assert limiter.limiter.storage is not limiter.storage  # counted in the in-memory fallback
    finally:
        redis_server.start()
    _wait_until_limiter_uses_redis_again(client, limiter)


def _wait_until_limiter_uses_redis_again(client, limiter, timeout: float = 70.0) -> None:
    """Flask-Limiter re-checks the storage with exponential back-off; poll with a deadline."""
    import time
    deadline = time.monotonic() + timeout
    while limiter.limiter.storage is not limiter.storage:
        assert time.monotonic() < deadline, "the limiter never went back to Redis"
        client.get("/auth/login")
        time.sleep(0.25)
