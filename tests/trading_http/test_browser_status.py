"""In real Chromium: the order ticket works, and static/orders.js updates an order's status without a reload."""
from __future__ import annotations

from tests.browser.conftest import browser, live_server, page  # noqa: F401  (fixtures)
from tests.conftest import TEST_PASSWORD


def sign_in(page, base: str, email: str) -> None:
    page.goto(f"{base}/auth/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", TEST_PASSWORD)
    page.click("main form [type=submit]")
    page.wait_for_url(f"{base}/")


def test_order_status_cell_updates_without_a_reload(page, live_server, user, set_price, celery_worker, db):
    from utils import orders
    set_price("AAPL", "100")
    sign_in(page, live_server, user.email)
    page.goto(f"{live_server}/orders/new")
    page.fill("#symbol", "AAPL")
    page.fill("#quantity", "2")
    page.select_option("#order_type", "limit")
    page.fill("#limit_price", "90")
    page.click("text=Place order")
    page.wait_for_url(f"{live_server}/orders/*")
    order_id = int(page.url.rsplit("/", 1)[1])

    page.goto(f"{live_server}/orders")
    row = page.locator(f"tr[data-order-id='{order_id}']")
    row.locator(".js-status", has_text="submitted").wait_for(timeout=20_000)
    page.evaluate("window.notReloaded = true")

    orders.cancel_order(user, order_id)  # as if cancelled from another tab
    db.session.commit()
    row.locator(".js-status", has_text="cancelled").wait_for(timeout=20_000)
    assert page.evaluate("window.notReloaded === true")
    assert row.get_attribute("data-open") == "false"
