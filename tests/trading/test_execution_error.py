"""A paper order whose execution hits an unexpected error (not a broker's answer) is counted, and given up.

The error is made real by renaming the `paper_fills` table away, so the paper fill's INSERT fails inside
the worker's one transaction (claim, send, answer). The rollback leaves nothing at the paper broker; each
failed execution is counted on the order, and after as many executions as a send has attempts the order is
`failed` instead of being queued again by the recovery sweep every 15 seconds, forever.
"""
from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import func, select

from tests.conftest import raw_sql, wait_for


@pytest.fixture
def fills_table_away(database_url):
    """Renames `paper_fills` away (every paper fill fails) and gives back a function that puts it back."""
    raw_sql(database_url, "ALTER TABLE paper_fills RENAME TO paper_fills_away")
    state = {"away": True}

    def put_back() -> None:
        if state["away"]:
            raw_sql(database_url, "ALTER TABLE paper_fills_away RENAME TO paper_fills")
            state["away"] = False

    yield put_back
    put_back()


def place_market_buy(user):
    from utils import orders
    order, created = orders.place_order(user, {"symbol": "AAPL", "side": "buy", "quantity": "3", "type": "market",
                                               "time_in_force": "day"})
    assert created
    return order


def wait_attempts(db, order_id: int, attempts: int):
    from models import Order

    def counted():
        db.session.expire_all()
        row = db.session.get(Order, order_id)
        return row if row.submit_attempts >= attempts or row.status != "pending" else None

    return wait_for(counted, message=f"execution {attempts} of order {order_id} to be counted")


def wait_status(db, order_id: int, status: str):
    from models import Order

    def reached():
        db.session.expire_all()
        row = db.session.get(Order, order_id)
        return row if row.status == status else None

    return wait_for(reached, message=f"order {order_id} to be {status}")


def paper_orders_of(db, client_order_id: str) -> int:
    from models import PaperOrder
    return db.session.scalar(select(func.count(PaperOrder.id)).where(PaperOrder.client_order_id == client_order_id))


def test_an_order_failing_every_execution_is_failed_after_the_attempts_with_nothing_at_the_broker(
        db, user, celery_worker, set_price, fills_table_away):
    from models import Order, Trade
    from utils import jobs
    from worker import ORDER_SEND_MAX_RETRIES
    set_price("AAPL", "100")
    order = place_market_buy(user)
    for attempt in range(1, ORDER_SEND_MAX_RETRIES + 1):
        row = wait_attempts(db, order.id, attempt)
        assert (row.status, row.submit_attempts) == ("pending", attempt)
        jobs.send_now(jobs.ORDERS_EXECUTE, order.id)  # what the recovery sweep does with a stuck `pending` order
    row = wait_status(db, order.id, "failed")
    assert row.submit_attempts == ORDER_SEND_MAX_RETRIES + 1
    assert "given up, nothing reached the broker" in row.reject_reason
    counted = [event for event in row.events if event.from_status == event.to_status == "pending"]
    assert len(counted) == ORDER_SEND_MAX_RETRIES
    assert all("internal error" in event.detail for event in counted)
    assert db.session.get(Trade, row.trade_id).status == "cancelled"
    assert paper_orders_of(db, row.client_order_id) == 0
    jobs.send_now(jobs.ORDERS_EXECUTE, order.id)  # a late duplicate message changes nothing
    fills_table_away()
    db.session.expire_all()
    assert db.session.get(Order, order.id).status == "failed"


def test_an_order_whose_error_passes_is_filled_once_on_its_next_execution(db, user, celery_worker, set_price,
                                                                         fills_table_away):
    from models import PaperAccount
    from utils import jobs
    set_price("AAPL", "100")
    order = place_market_buy(user)
    wait_attempts(db, order.id, 1)
    cash_before = db.session.scalar(select(PaperAccount.cash).where(PaperAccount.user_id == user.id))
    assert paper_orders_of(db, order.client_order_id) == 0
    fills_table_away()
    jobs.send_now(jobs.ORDERS_EXECUTE, order.id)
    row = wait_status(db, order.id, "filled")
    assert row.filled_quantity == Decimal("3") and row.submit_attempts == 2
    assert [(event.from_status, event.to_status) for event in row.events][:3] == [
        (None, "pending"), ("pending", "pending"), ("pending", "submitting")]
    assert paper_orders_of(db, row.client_order_id) == 1
    cash_after = db.session.scalar(select(PaperAccount.cash).where(PaperAccount.user_id == user.id))
    assert cash_after < cash_before - Decimal("300")
