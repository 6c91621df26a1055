"""`orders.sync` keeps going when one order's broker answer cannot be read: the others still get their fills."""
from __future__ import annotations

from decimal import Decimal

from tests.conftest import sent_order
from tests.fakes import schwab as fake_schwab
from tests.trading.linked_schwab import app_config, schwab_order, schwab_port  # noqa: F401


def _resting_schwab_order(db, template):
    """A limit buy like `template` (same user and Schwab link), sent through the order service: `submitted`."""
    order = sent_order(db, template.user_id, template.broker_connection_id, order_type="limit",
                       limit_price=Decimal("100.00"), quantity=Decimal("5"))
    assert order.status == "submitted"
    return order


def test_one_unreadable_order_does_not_stop_the_sync_of_the_others(db, schwab_order, schwab_port):
    from worker import sync_orders
    server = fake_schwab.linked_server(schwab_port).start()
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
