"""Coinbase fills: every page of an order's executions is read, and an edit in place (the replacement keeps
the broker order id) never counts fills made before the edit again."""
from __future__ import annotations

import uuid
from decimal import Decimal

from models import Order, Trade
from tests.brokers.test_adapters import coinbase  # noqa: F401  (the fixture)
from tests.conftest import execute_in_process, sent_order
from tests.fakes.coinbase import _now


def _execute_at_coinbase(fakes, broker_order_id: str, size: str, price: str) -> None:
    """One partial execution of a resting order at the fake Coinbase (fills list and order totals)."""
    state = fakes["coinbase"].server.server.app.config["state"]
    with state.lock:
        order = state.orders[broker_order_id]
        before, average = Decimal(order["filled_size"]), Decimal(order["average_filled_price"])
        filled = before + Decimal(size)
        state.fills.append({"entry_id": str(uuid.uuid4()), "trade_id": str(uuid.uuid4()), "order_id": broker_order_id,
                            "trade_time": _now(), "trade_type": "FILL", "price": price, "size": size,
                            "commission": "0", "product_id": order["product_id"], "side": order["side"],
                            "liquidity_indicator": "MAKER", "size_in_quote": False})
        order.update(filled_size=str(filled), average_filled_price=str((average * before + Decimal(price) *
                                                                       Decimal(size)) / filled))


def _resting_limit(db, coinbase):
    order = sent_order(db, coinbase.connection.user_id, coinbase.connection.id, symbol="ETH-USD", asset_type="crypto",
                       order_type="limit", limit_price=Decimal("2900"), quantity=Decimal("1"), time_in_force="gtc")
    assert order.status == "submitted"
    return order


def test_an_edit_sent_after_the_order_began_to_fill_is_refused_and_the_fill_kept(coinbase, fakes, db):
    """The edit is asked for while the order rests; Coinbase fills 0.4 before the worker sends it."""
    from models import User
    from utils import orders
    first = _resting_limit(db, coinbase)
    edited = orders.replace_order(db.session.get(User, first.user_id), first.id, {"limit_price": "2950"})
    _execute_at_coinbase(fakes, first.broker_order_id, "0.4", "2899")

    execute_in_process(db, edited.id)

    assert edited.status == "rejected" and first.status == "partially_filled"
    assert [fill.quantity for fill in first.fills] == [Decimal("0.4")]
    assert fakes["coinbase"].server.server.app.config["state"].orders[first.broker_order_id]["edit_history"] == []


def test_fills_recorded_before_an_edit_in_place_are_not_counted_again_on_the_edited_order(coinbase, fakes, db):
    """The narrow race the refusal above cannot close: a sync records a fill on the old order between the
    last look at it and the edit. The edited order (same Coinbase id) then reports that fill too."""
    from utils import orders
    first = _resting_limit(db, coinbase)
    _execute_at_coinbase(fakes, first.broker_order_id, "0.4", "2899")
    orders.sync_order(first.id)
    edited = Order(user_id=first.user_id, broker_connection_id=first.broker_connection_id, client_order_id="edit-1",
                   symbol="ETH-USD", asset_type="crypto", side="buy", instruction="BUY", order_type="limit",
                   limit_price=Decimal("2950"), quantity=Decimal("1"), time_in_force="gtc", status="submitted",
                   purpose="entry", trade_id=first.trade_id, replaces_order_id=first.id,
                   broker_order_id=first.broker_order_id)
    db.session.add(edited)
    db.session.flush()

    orders.record_broker_fills(edited, coinbase.get_order(first.broker_order_id))
    assert edited.fills == []  # the 0.4 stays on the first order only
    _execute_at_coinbase(fakes, first.broker_order_id, "0.3", "2950")
    orders.record_broker_fills(edited, coinbase.get_order(first.broker_order_id))
    db.session.commit()
    assert [fill.quantity for fill in edited.fills] == [Decimal("0.3")]
    assert db.session.get(Trade, first.trade_id).quantity == Decimal("0.7")


def test_every_page_of_an_orders_fills_is_read(coinbase, fakes, db):
    from utils import orders
    order = _resting_limit(db, coinbase)
    for _ in range(250):  # three pages of 100
        _execute_at_coinbase(fakes, order.broker_order_id, "0.002", "2899")
    orders.sync_order(order.id)
    db.session.commit()
    assert len(order.fills) == 250 and order.filled_quantity == Decimal("0.5")


def test_a_fills_list_that_lags_the_order_totals_is_never_topped_up_and_counted_twice(coinbase, fakes, db):
    """Coinbase's order says 0.4 filled before its fills list shows the execution: nothing is recorded from
    the total, and the execution is recorded once when it appears."""
    from utils import orders
    order = _resting_limit(db, coinbase)
    state = fakes["coinbase"].server.server.app.config["state"]
    _execute_at_coinbase(fakes, order.broker_order_id, "0.4", "2899")
    lagging = state.fills.pop()  # the total moved, the list has not caught up yet
    orders.sync_order(order.id)
    db.session.commit()
    assert order.fills == [] and order.filled_quantity == 0

    state.fills.append(lagging)
    orders.sync_order(order.id)
    orders.sync_order(order.id)
    db.session.commit()
    assert [fill.quantity for fill in order.fills] == [Decimal("0.4")] and order.filled_quantity == Decimal("0.4")
