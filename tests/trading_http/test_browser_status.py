"""In real Chromium: the order ticket works, and static/orders.js updates an order's status without a reload."""
from __future__ import annotations

from sqlalchemy import update

from tests.browser.conftest import browser, live_server, page  # noqa: F401  (fixtures)
from tests.conftest import TEST_PASSWORD
from tests.trading.linked_schwab import app_config, schwab_order, schwab_port  # noqa: F401  (fixtures)


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


def test_the_status_poll_shows_why_an_order_is_not_confirmed_without_a_reload(page, live_server, db, user,
                                                                                schwab_order):
    from models import Order

    def set_order(**values) -> None:
        db.session.execute(update(Order).where(Order.id == schwab_order.id).values(**values))
        db.session.commit()

    set_order(status="submitting", submit_attempts=1, send_outcome_unknown=True)
    sign_in(page, live_server, user.email)
    page.goto(f"{live_server}/orders/{schwab_order.id}")
    notice = page.locator(".js-notice")
    assert notice.is_hidden()
    page.evaluate("window.notReloaded = true")

    set_order(submit_attempts=2)  # a retry went out, and nothing confirms either send

    notice.wait_for(state="visible", timeout=10_000)
    assert notice.inner_text().startswith("Charles Schwab has not confirmed this order after 2 send attempts.")
    assert page.evaluate("window.notReloaded === true")  # shown by the poll, not by a reload
