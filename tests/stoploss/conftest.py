"""Fixtures for the stop-loss guard: the worker's tasks, manual prices, entries that really fill, polling."""
from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import func, select

from tests.conftest import wait_for



@pytest.fixture
def user(make_user):
    return make_user(email="guarded@example.com")


@pytest.fixture
def other_user(make_user):
    return make_user(email="someone-else@example.com")


def fresh(db, model, row_id):
    db.session.expire_all()
    return db.session.get(model, row_id)


@pytest.fixture
def open_trade(db, user, set_price):
    """open_trade(price="100", quantity="10", side="buy", **protection) places a market entry at `price`,
    waits (with a running worker) until it filled, and returns the open Trade."""
    from models import Order, Trade
    from utils import orders

    def factory(price: str = "100", quantity: str = "10", side: str = "buy", symbol: str = "AAPL", **protection):
        set_price(symbol, price)
        request = {"symbol": symbol, "side": side, "quantity": quantity, "type": "market",
                   "instruction": "BUY" if side == "buy" else "SELL_SHORT", **protection}
        order, _ = orders.place_order(user, request)
        wait_for(lambda: (row := fresh(db, Order, order.id)) is not None and row.status == "filled",
                 message=f"entry {order.id} filled")
        return fresh(db, Trade, order.trade_id)

    return factory


@pytest.fixture
def exit_orders(db):
    """exit_orders(trade_id) → the trade's market exit orders (what a close sends), oldest first."""
    from models import Order

    def query(trade_id: int):
        db.session.expire_all()
        return list(db.session.scalars(select(Order).where(
            Order.trade_id == trade_id, Order.purpose != "entry", Order.order_type == "market").order_by(Order.id)))

    return query


@pytest.fixture
def broker_stops(db):
    """broker_stops(trade_id) → the trade's broker-side stop orders, oldest first."""
    from models import Order

    def query(trade_id: int):
        db.session.expire_all()
        return list(db.session.scalars(select(Order).where(
            Order.trade_id == trade_id, Order.purpose == "stop_loss", Order.order_type == "stop").order_by(Order.id)))

    return query


@pytest.fixture
def run_sweep(app, db):
    """run_sweep() runs one stop-loss sweep in the test process (the worker's task does the same) and commits."""
    from utils import stoploss

    def sweep() -> dict:
        summary = stoploss.sweep(commit=db.session.commit)
        db.session.commit()
        return summary

    return sweep


def audit_count(db, event_type: str) -> int:
    from models import AuditEvent
    return db.session.scalar(select(func.count(AuditEvent.id)).where(AuditEvent.event_type == event_type))


def dec(text: str) -> Decimal:
    return Decimal(text)
