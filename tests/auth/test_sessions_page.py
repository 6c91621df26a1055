"""The /auth/sessions page: list own sign-ins, revoke one, sign out everywhere (issue 2 item 5)."""
from __future__ import annotations

from tests.auth.conftest import is_signed_in, post_form, session_rows

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.5 Mobile/15E148 Safari/604.1")


def _sign_in_with_agent(app, user, agent: str, ip: str):
    from tests.conftest import TEST_PASSWORD, csrf_token_from
    browser = app.test_client()
    headers, environ = {"User-Agent": agent}, {"REMOTE_ADDR": ip}
    page = browser.get("/auth/login", headers=headers, environ_base=environ)
    response = browser.post("/auth/login", headers=headers, environ_base=environ,
                            data={"email": user.email, "password": TEST_PASSWORD,
                                  "csrf_token": csrf_token_from(page.get_data(as_text=True))})
    assert response.status_code == 302
    return browser


def test_sessions_page_lists_own_sign_ins_with_browser_ip_and_this_device(app, user, make_user):
    other_user = make_user(email="other@example.com")
    _sign_in_with_agent(app, other_user, FIREFOX, "10.9.9.9")
    _sign_in_with_agent(app, user, IPHONE, "10.1.1.1")
    mine = _sign_in_with_agent(app, user, FIREFOX, "10.2.2.2")
    html = mine.get("/auth/sessions", headers={"User-Agent": FIREFOX}).get_data(as_text=True)
    assert "Safari 17 on iOS" in html and "Firefox 128 on Linux" in html
    assert "10.1.1.1" in html and "10.2.2.2" in html and "10.9.9.9" not in html
    assert html.count("this device") == 1 and "Last seen" in html


def test_revoking_another_users_session_is_404(app, client, user, make_user, login, db):
    other_user = make_user(email="other@example.com")
    _sign_in_with_agent(app, other_user, FIREFOX, "10.9.9.9")
    [foreign] = session_rows(db, other_user.id)
    login(user)
    response = post_form(client, "/auth/sessions", {}, action=f"/auth/sessions/{foreign.id}/revoke")
    assert response.status_code == 404
    assert session_rows(db, other_user.id)[0].revoked_at is None


def test_revoking_this_device_signs_it_out(client, user, login, db):
    login(user)
    [row] = session_rows(db, user.id)
    response = post_form(client, "/auth/sessions", {}, action=f"/auth/sessions/{row.id}/revoke")
    assert response.status_code == 302 and not is_signed_in(client)


def test_sign_out_everywhere_ends_every_session_including_this_one(app, client, user, login, db):
    phone = _sign_in_with_agent(app, user, IPHONE, "10.1.1.1")
    login(user)
    response = post_form(client, "/auth/sessions", {}, action="/auth/sessions/revoke-all")
    assert response.status_code == 302 and response.headers["Location"].endswith("/auth/login")
    assert not is_signed_in(client) and not is_signed_in(phone)
    assert all(row.revoked_at is not None for row in session_rows(db, user.id))


def test_describe_agent_names_common_browsers():
    from utils.sessions import describe_agent
    chrome = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/126.0.0.0 Safari/537.36")
    assert describe_agent(chrome) == "Chrome 126 on Windows"
    assert describe_agent(chrome + " Edg/126.0.0.0") == "Edge 126 on Windows"
    assert describe_agent(IPHONE) == "Safari 17 on iOS"
    assert describe_agent("") == "Unknown browser"
    assert describe_agent("curl/8.5.0") == "curl/8.5.0"
