"""`orders.sync` keeps going when one order's broker answer cannot be read: the others still get their fills."""
from __future__ import annotations

import time
from decimal import Decimal

from tests.fakes import schwab as fake_schwab
from tests.trading.test_broker_unavailable import app_config, fake_schwab_on, schwab_order, schwab_port  # noqa: F401


def _resting_schwab_order(db, template):
    """A limit buy like `template` (same user and Schwab link), sent through the order service: `submitted`."""
    from models import Order
    from utils import orders, trades
    order = Order(user_id=template.user_id, broker_connection_id=template.broker_connection_id,
                  client_order_id=f"rest-{time.time_ns()}", symbol="AAPL", asset_type="equity", side="buy",
                  instruction="BUY", order_type="limit", limit_price=Decimal("100.00"), quantity=Decimal("5"),
                  time_in_force="day", status="pending", purpose="entry")
    db.session.add(order)
    db.session.flush()
    order.trade_id = trades.create_pending(order, "long").id
    orders.claim_submission(order.id)
    orders.record_answer(order.id, orders.send_claimed(order.id))
    db.session.commit()
    assert order.status == "submitted"
    return order


def test_one_unreadable_order_does_not_stop_the_sync_of_the_others(db, schwab_order, schwab_port):
    from worker import sync_orders
    server = fake_schwab_on(schwab_port).start()
    try:
        broken = _resting_schwab_order(db, schwab_order)  # older: the sync reaches it first
        healthy = _resting_schwab_order(db, schwab_order)
        state = server.server.app.config["state"]
        state.orders[int(broken.broker_order_id)]["orderLegCollection"] = []  # an answer we cannot read
        fake_schwab._fill(state.orders[int(healthy.broker_order_id)], 99.5)

        sync_orders()
    finally:
        server.stop()

    db.session.expire_all()
    assert db.session.get(type(healthy), healthy.id).status == "filled"
    assert db.session.get(type(broken), broken.id).status == "submitted"
