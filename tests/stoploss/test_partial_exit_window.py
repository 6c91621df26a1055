"""A partial exit leaves the broker-side stop for the whole position until the stop is resized; if the stop
triggers in that window it must close what is left, never open a short of the difference.

Driven step by step in the test process (no worker), so the stop triggers exactly inside the window: the
entry, its stop and a partial exit are executed, the resized stop is *not* sent yet, and the price falls
through the stop. The paper broker fills the old stop only for what is still held and cancels the rest
(a closing instruction never passes zero); the trade ends closed with every unit sold once, and the resize,
still pending, is withdrawn with the closed trade and never sent.
"""
from __future__ import annotations

from decimal import Decimal

from sqlalchemy import select

from tests.conftest import execute_in_process
from tests.stoploss.conftest import fresh


def test_a_stop_triggered_before_its_resize_closes_what_is_left_and_opens_no_short(db, user, set_price,
                                                                                  broker_stops):
    from models import Order, PaperPosition, Trade
    from utils import orders
    from utils.brokers import paper
    set_price("AAPL", "100")
    entry, _ = orders.place_order(user, {"symbol": "AAPL", "side": "buy", "quantity": "10", "type": "market",
                                         "time_in_force": "gtc", "stop_loss_price": "95"})
    execute_in_process(db, entry.id)
    [stop] = broker_stops(entry.trade_id)
    execute_in_process(db, stop.id)
    assert fresh(db, Order, stop.id).status == "submitted"

    partial, _ = orders.place_order(user, {"symbol": "AAPL", "side": "sell", "quantity": "4", "type": "market",
                                           "time_in_force": "day", "trade_id": entry.trade_id})
    execute_in_process(db, partial.id)
    assert fresh(db, Order, partial.id).status == "filled"
    resize = [order for order in broker_stops(entry.trade_id) if order.id != stop.id]
    assert [(order.status, order.quantity) for order in resize] == [("pending", Decimal("6"))]  # not sent yet

    set_price("AAPL", "94")  # through the stop, inside the window
    paper.match_resting_orders(["AAPL"])
    db.session.commit()
    orders.sync_order(stop.id)
    db.session.commit()

    stopped = fresh(db, Order, stop.id)
    assert (stopped.status, stopped.filled_quantity) == ("cancelled", Decimal("6"))
    trade = fresh(db, Trade, entry.trade_id)
    assert (trade.status, trade.exit_quantity) == ("closed", Decimal("10"))
    assert db.session.scalars(select(PaperPosition)).all() == []  # no short of 4 at the broker

    late = fresh(db, Order, resize[0].id)  # withdrawn when the trade closed: it is never sent
    assert (late.status, late.events[-1].detail) == ("cancelled", "withdrawn before it was sent")
    execute_in_process(db, late.id)
    assert fresh(db, Order, late.id).status == "cancelled"
    assert db.session.scalars(select(PaperPosition)).all() == []
