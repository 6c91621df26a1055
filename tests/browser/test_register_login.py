"""Register → sign in → dashboard → sign out in a real Chromium, without JavaScript help from us."""
from __future__ import annotations

from tests.browser.conftest import ARTIFACTS

PASSWORD = "Sturdy-Maple-81-Harbour"


def _sign_in(page, base: str, email: str) -> None:
    page.goto(f"{base}/auth/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_url(f"{base}/")


def test_register_sign_in_dashboard_sign_out(page, live_server):
    page.goto(f"{live_server}/auth/register")
    page.fill("input[name=email]", "browser@example.com")
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=confirm]", PASSWORD)
    page.click("form.auth-form [type=submit]")
    page.wait_for_url(f"{live_server}/")  # registering signs the new user in
    assert page.locator("h1").first.inner_text() == "Dashboard"

    page.click("header form [type=submit]")  # Sign out (a POST form in the top bar)
    page.wait_for_url(f"{live_server}/auth/login")
    assert page.locator("h1").first.inner_text() == "Sign in"

    _sign_in(page, live_server, "browser@example.com")
    assert "Dashboard" in page.locator("h1").first.inner_text()
    page.click("header form [type=submit]")
    page.wait_for_url(f"{live_server}/auth/login")
    assert page.get_by_text("You are signed out.").is_visible()


def test_auth_pages_render_on_desktop_and_phone(page, live_server):
    """Saves screenshots of the sign-in and register pages (inline errors shown) for a visual check."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(f"{live_server}/auth/register")
    page.fill("input[name=email]", "shot@example.com")
    page.fill("input[name=password]", "short")
    page.fill("input[name=confirm]", "other")
    page.click("form.auth-form [type=submit]")
    assert page.locator(".field.has-error").count() >= 2
    page.screenshot(path=str(ARTIFACTS / "register-errors-desktop.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(ARTIFACTS / "register-errors-phone.png"), full_page=True)
    page.goto(f"{live_server}/auth/login")
    page.fill("input[name=email]", "nobody@example.com")
    page.fill("input[name=password]", "Wrong-Password-1!")
    page.click("form.auth-form [type=submit]")
    assert page.locator(".alert").inner_text().strip() == "Email or password is incorrect."
    page.screenshot(path=str(ARTIFACTS / "login-error-phone.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling on a phone


def test_sessions_and_admin_pages_fit_a_phone(page, live_server, make_user):
    """Screenshots of the sessions and admin users pages at phone width; nothing scrolls sideways."""
    make_user(email="boss@example.com", password=PASSWORD, is_admin=True)
    make_user(email="someone@example.com")
    ARTIFACTS.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 390, "height": 844})
    _sign_in(page, live_server, "boss@example.com")
    for path, name in (("/auth/sessions", "sessions-phone"), ("/admin/users", "admin-users-phone")):
        page.goto(f"{live_server}{path}")
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{live_server}/auth/sessions")
    page.screenshot(path=str(ARTIFACTS / "sessions-desktop.png"), full_page=True)
