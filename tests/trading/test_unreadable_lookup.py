"""A resend's lookup that stops at an unexpected error (here an order in Schwab's list that cannot be read)
is no broker's answer: the order stays `submitting`, in doubt, with an event saying why (one, however often
the sweep meets the error again), and nothing is sent again. The order and its `notice` tell the user it may already be at Schwab. Once the list reads again, the
recovery sweep adopts Schwab's copy and the order fills once.

The starting point is what a worker killed right after Schwab took the order leaves: the order claimed and
marked in doubt in our database, and live at Schwab.
"""
from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import update

from tests.conftest import wait_for
from tests.fakes import schwab as fake_schwab
from tests.trading.linked_schwab import app_config, schwab_order, schwab_port  # noqa: F401

UNREADABLE_ID = 1000


@pytest.fixture
def schwab(schwab_port):
    server = fake_schwab.linked_server(schwab_port).start()
    yield server.server.app.config["state"]
    server.stop()


def test_an_unreadable_lookup_keeps_the_order_in_doubt_and_tells_why_then_it_is_adopted_once(
        db, celery_worker, schwab_order, schwab):
    from utils import orders
    sent = _as_a_crash_after_the_send_left_it(db, schwab_order)
    fake_schwab.add_unreadable_order(schwab, fake_schwab.ACCOUNTS[0]["hashValue"], UNREADABLE_ID)

    _recover(db, schwab_order)
    order = wait_for(lambda: _with_event(db, schwab_order, "unexpected error (InvalidOperation)"), timeout=30,
                     message="the unexpected error to be noted on the order")
    assert (order.status, order.send_outcome_unknown, order.submit_attempts) == ("submitting", True, 2)
    assert set(schwab.orders) == {int(sent.broker_order_id), UNREADABLE_ID}  # not sent again
    notice = orders.order_to_dict(order)["notice"]
    assert "may already be at Charles Schwab" in notice and "after 2 send attempts" in notice

    for attempt in (3, 4):  # the sweep meets the same error again: the note counts it, no new events
        _recover(db, schwab_order)
        order = wait_for(lambda: _with_event(db, schwab_order, f"send attempts 2–{attempt} stopped"), timeout=30,
                         message=f"send attempt {attempt} to be counted on the note")
    assert [event.detail for event in order.events if "unexpected error" in (event.detail or "")] == [
        "send attempts 2–4 stopped by an unexpected error (InvalidOperation), not an answer from the broker: "
        "the recovery sweep asks it again"]
    assert [event.detail for event in order.events if re.fullmatch(r"send attempt \d+", event.detail or "")] == [
        "send attempt 2"]
    assert (order.status, order.submit_attempts) == ("submitting", 4)
    assert set(schwab.orders) == {int(sent.broker_order_id), UNREADABLE_ID}  # still not sent again

    del schwab.orders[UNREADABLE_ID]
    _recover(db, schwab_order)
    order = wait_for(lambda: (o := _reloaded(db, schwab_order)).status == "filled" and o, timeout=30,
                     message="the order to be adopted and filled")
    assert set(schwab.orders) == {int(sent.broker_order_id)} and order.broker_order_id == sent.broker_order_id
    assert order.filled_quantity == Decimal("10") and sum(fill.quantity for fill in order.fills) == Decimal("10")
    assert orders.order_to_dict(order)["notice"] is None


def test_the_notice_says_whether_the_broker_may_have_the_order(db, schwab_order):
    from models import Order
    from utils import orders
    assert orders.waiting_notice(schwab_order) is None  # pending, never tried
    _set(db, schwab_order, status="submitting", submit_attempts=1, send_outcome_unknown=True)
    assert orders.waiting_notice(_reloaded(db, schwab_order)) is None  # the first send is under way
    _set(db, schwab_order, submit_attempts=3, send_outcome_unknown=False)
    assert orders.waiting_notice(_reloaded(db, schwab_order)) == ("Not at Charles Schwab yet after 3 send attempts; "
                                                                 "Tradewarden keeps trying.")
    _set(db, schwab_order, send_outcome_unknown=True)
    assert "check your Charles Schwab account before you place it again" in orders.waiting_notice(
        _reloaded(db, schwab_order))
    _set(db, schwab_order, status="pending", submit_attempts=2, send_outcome_unknown=False)
    assert "stopped at an internal error (2 so far)" in orders.waiting_notice(db.session.get(Order, schwab_order.id))


def test_the_order_page_the_orders_list_and_the_status_poll_show_the_notice(client, login, user, db, schwab_order):
    import html
    login(user)
    listing = client.get("/orders").get_data(as_text=True)
    assert re.search(r'class="notice-mark js-notice" title="" hidden>delayed<', listing)
    _set(db, schwab_order, status="submitting", submit_attempts=3, send_outcome_unknown=True)

    page = html.unescape(client.get(f"/orders/{schwab_order.id}").get_data(as_text=True))
    listing = html.unescape(client.get("/orders").get_data(as_text=True))
    poll = client.get(f"/orders/{schwab_order.id}/status.json").get_json()

    assert re.search(r'class="notice js-notice" role="status">Charles Schwab has not confirmed this order after 3 '
                     r'send attempts\. It may already be at Charles Schwab', page)
    assert re.search(r'title="Charles Schwab has not confirmed[^"]+">delayed<', listing)
    assert poll["status"] == "submitting" and poll["notice"].startswith("Charles Schwab has not confirmed")


def _as_a_crash_after_the_send_left_it(db, order):
    from utils import orders
    sent = orders.broker_for(order).place_order(orders.broker_request(order))
    _set(db, order, status="submitting", submit_attempts=1, send_outcome_unknown=True)
    return sent


def _recover(db, order) -> None:
    """Run the recovery sweep as beat would once the send time limit has passed."""
    from utils import jobs
    from utils.dbtypes import utcnow
    _set(db, order, updated_at=utcnow() - timedelta(hours=1))
    jobs.send_now(jobs.ORDERS_RECOVER)


def _set(db, order, **values) -> None:
    from models import Order
    db.session.execute(update(Order).where(Order.id == order.id).values(**values))
    db.session.commit()


def _reloaded(db, order):
    db.session.expire_all()
    return db.session.get(type(order), order.id)


def _with_event(db, order, text: str):
    current = _reloaded(db, order)
    return current if any(text in (event.detail or "") for event in current.events) else None
