"""Fixtures for the trading core: a broker connection row, orders made straight in the database, polling."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from decimal import Decimal

import pytest



@pytest.fixture
def run_sync(app, db):
    """run_sync() does what one beat `orders.sync` run does, here in the test process."""
    from utils import orders

    def sync() -> None:
        for order_id in orders.open_order_ids():
            orders.sync_order(order_id)
            db.session.commit()

    return sync


@pytest.fixture
def user(make_user):
    """The trading user (an example.com address, which every email validator accepts)."""
    return make_user(email="trader@example.com")


@pytest.fixture
def other_user(make_user):
    return make_user(email="someone-else@example.com")


@pytest.fixture
def paper_connection(db, user):
    """A committed paper BrokerConnection for `user` (made directly, without the broker adapter)."""
    from models import Broker, BrokerConnection
    connection = BrokerConnection(user_id=user.id, broker=Broker.PAPER)
    db.session.add(connection)
    db.session.commit()
    return connection


@pytest.fixture
def make_order(db, user, paper_connection):
    """make_order(status="submitted", quantity="10", purpose="entry", side="buy", **columns) → a committed Order
    with its pending Trade (entries) — for tests of recording, not of placing."""
    from models import Order, OrderPurpose
    from utils import orders, trades
    counter = iter(range(1, 10_000))

    def factory(status="submitted", quantity="10", purpose="entry", side="buy", symbol="AAPL", trade=None,
                **columns):
        order = Order(user_id=user.id, broker_connection_id=paper_connection.id,
                      client_order_id=f"test-{next(counter)}-{time.monotonic_ns()}", symbol=symbol,
                      asset_type=orders.asset_type_for(symbol), side=side,
                      instruction=columns.pop("instruction", side.upper()), order_type="market",
                      quantity=Decimal(quantity), time_in_force="day", status=status, purpose=purpose,
                      broker_order_id=f"B-{next(counter)}", **columns)
        db.session.add(order)
        db.session.flush()
        if purpose == OrderPurpose.ENTRY and trade is None:
            order.trade_id = trades.create_pending(order, "long" if side == "buy" else "short")
        else:
            order.trade_id = trade.id if trade is not None else None
        db.session.commit()
        return order

    return factory


def broker_fill(execution_id: str, quantity: str, price: str, fee: str = "0"):
    from utils.brokers.base import BrokerFill
    return BrokerFill(execution_id=execution_id, quantity=Decimal(quantity), price=Decimal(price), fee=Decimal(fee),
                      executed_at=datetime.now(timezone.utc))


@pytest.fixture
def match_paper_orders(app, db):
    """match_paper_orders() runs the paper broker's matching pass (what the market tick does) and commits."""
    from utils.brokers import paper

    def match() -> int:
        fills = paper.match_resting_orders()
        db.session.commit()
        return fills

    return match


@pytest.fixture
def broker_order_count(app, db):
    """broker_order_count(client_order_id) → how many orders the paper broker holds with that id."""
    from sqlalchemy import func, select

    from models import PaperOrder

    def count(client_order_id: str) -> int:
        db.session.expire_all()
        return db.session.scalar(select(func.count(PaperOrder.id)).where(
            PaperOrder.client_order_id == client_order_id))

    return count
