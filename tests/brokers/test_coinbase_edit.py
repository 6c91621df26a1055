"""Coinbase edits an order in place (the replacement keeps the broker order id): fills made before the
edit belong to the replaced order and are never counted again on its replacement."""
from __future__ import annotations

import uuid
from decimal import Decimal

from models import Order, Trade
from tests.brokers.test_adapters import coinbase  # noqa: F401  (the fixture)
from tests.conftest import sent_order
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


def test_fills_before_an_edit_in_place_are_not_counted_again(coinbase, fakes, db):
    """The edit is asked for while the order rests; before the worker sends it, Coinbase fills 0.4 and the
    sync records that on the first order. The edited order then reports the same 0.4 under the same id."""
    from models import User
    from utils import orders
    first = sent_order(db, coinbase.connection.user_id, coinbase.connection.id, symbol="ETH-USD", asset_type="crypto",
                       order_type="limit", limit_price=Decimal("2900"), quantity=Decimal("1"), time_in_force="gtc")
    assert first.status == "submitted"
    edited = orders.replace_order(db.session.get(User, first.user_id), first.id, {"limit_price": "2950"})

    _execute_at_coinbase(fakes, first.broker_order_id, "0.4", "2899")
    orders.sync_order(first.id)
    db.session.commit()
    assert first.filled_quantity == Decimal("0.4")

    orders.claim_submission(edited.id)
    orders.record_answer(edited.id, orders.send_claimed(edited.id))
    db.session.commit()
    assert edited.broker_order_id == first.broker_order_id and first.status == "replaced"
    assert edited.fills == []  # the 0.4 stays on the first order only

    _execute_at_coinbase(fakes, edited.broker_order_id, "0.3", "2950")
    orders.sync_order(edited.id)
    db.session.commit()
    assert [fill.quantity for fill in edited.fills] == [Decimal("0.3")]
    assert db.session.get(Trade, first.trade_id).quantity == Decimal("0.7")
    assert db.session.get(Order, first.id).filled_quantity == Decimal("0.4")
