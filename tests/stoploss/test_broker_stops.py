"""Broker-side stops at the paper broker: placed on entry, moved, already filled at a gap, cancelled first."""
from __future__ import annotations

from decimal import Decimal

from sqlalchemy import select

from tests.stoploss.conftest import fresh
from tests.conftest import execute_in_process, wait_for


def resting_paper_stops(db, trade_id):
    """The paper broker's open stop orders behind the trade's stop orders."""
    from models import Order, PaperOrder
    db.session.expire_all()
    ids = [order.client_order_id for order in db.session.scalars(select(Order).where(Order.trade_id == trade_id))]
    return list(db.session.scalars(select(PaperOrder).where(PaperOrder.client_order_id.in_(ids),
                                                            PaperOrder.order_type == "stop",
                                                            PaperOrder.status == "submitted")))


def wait_stop_resting(db, broker_stops, trade_id, stop_price):
    return wait_for(lambda: [order for order in broker_stops(trade_id)
                             if order.status == "submitted" and order.stop_price == Decimal(stop_price)],
                    message=f"a resting stop at {stop_price}")[0]


def test_an_entry_fill_places_a_gtc_stop_at_the_broker(db, celery_worker, open_trade, broker_stops):
    trade = open_trade("100", stop_loss_price="95")
    stop = wait_stop_resting(db, broker_stops, trade.id, "95")
    assert (stop.side, stop.quantity, stop.time_in_force, stop.purpose) == ("sell", Decimal("10"), "gtc", "stop_loss")
    assert [event.to_status for event in stop.events][:3] == ["pending", "submitting", "submitted"]
    [paper] = resting_paper_stops(db, trade.id)
    assert (paper.stop_price, paper.quantity, paper.time_in_force) == (Decimal("95"), Decimal("10"), "gtc")


def test_moving_the_stop_replaces_the_broker_order(db, user, celery_worker, open_trade, broker_stops):
    from utils import stoploss
    trade = open_trade("100", stop_loss_price="95")
    old = wait_stop_resting(db, broker_stops, trade.id, "95")
    stoploss.update_protection(user, trade.id, {"stop_loss_price": "97"})
    db.session.commit()
    new = wait_stop_resting(db, broker_stops, trade.id, "97")
    assert new.replaces_order_id == old.id
    wait_for(lambda: fresh(db, type(old), old.id).status == "replaced", message="old stop replaced")
    assert [paper.stop_price for paper in resting_paper_stops(db, trade.id)] == [Decimal("97")]


def test_removing_the_stop_cancels_the_broker_order(db, user, celery_worker, open_trade, broker_stops):
    from utils import stoploss
    trade = open_trade("100", stop_loss_price="95")
    stop = wait_stop_resting(db, broker_stops, trade.id, "95")
    stoploss.update_protection(user, trade.id, {"stop_loss_price": None, "take_profit_price": "130"})
    db.session.commit()
    wait_for(lambda: fresh(db, type(stop), stop.id).status == "cancelled", message="stop cancelled")
    assert resting_paper_stops(db, trade.id) == []


def test_a_stop_already_filled_at_a_gap_is_recorded_and_no_second_exit_is_sent(db, celery_worker, open_trade,
                                                                                set_price, run_sweep,
                                                                                broker_stops, exit_orders):
    from models import Trade
    trade = open_trade("100", stop_loss_price="95")
    stop = wait_stop_resting(db, broker_stops, trade.id, "95")
    set_price("AAPL", "80")  # the worker's market.match fills the resting stop at the gap price
    wait_for(lambda: resting_paper_stops(db, trade.id) == [], message="the paper stop filled")
    summary = run_sweep()
    trade = fresh(db, Trade, trade.id)
    assert summary["triggered"] == 1
    assert (trade.status, trade.close_reason) == ("closed", "stop_loss")
    assert trade.exit_price <= Decimal("80")
    assert fresh(db, type(stop), stop.id).status == "filled"
    assert exit_orders(trade.id) == []


def test_a_manual_close_cancels_the_broker_stop_first(db, user, celery_worker, open_trade, broker_stops,
                                                      exit_orders):
    from models import Trade
    from utils import trades
    trade = open_trade("100", stop_loss_price="95")
    stop = wait_stop_resting(db, broker_stops, trade.id, "95")
    trades.close_trade(user, trade.id)
    db.session.commit()
    assert fresh(db, type(stop), stop.id).status == "cancelled"
    assert resting_paper_stops(db, trade.id) == []
    wait_for(lambda: fresh(db, Trade, trade.id).status == "closed", message="closed")
    assert [order.purpose for order in exit_orders(trade.id)] == ["exit"]
    assert fresh(db, Trade, trade.id).close_reason == "manual"


def test_an_exit_that_fails_hands_the_trade_back_with_its_stop_replaced(db, user, set_price, broker_stops,
                                                                       exit_orders):
    from models import Trade
    from utils import orders, trades
    set_price("AAPL", "100")
    entry, _ = orders.place_order(user, {"symbol": "AAPL", "side": "buy", "quantity": "10", "type": "market",
                                         "stop_loss_price": "95"})
    execute_in_process(db, entry.id)
    [stop] = broker_stops(entry.trade_id)
    execute_in_process(db, stop.id)
    assert fresh(db, type(stop), stop.id).status == "submitted"
    trades.close_trade(user, entry.trade_id)
    db.session.commit()
    assert fresh(db, type(stop), stop.id).status == "cancelled"
    [exit_order] = exit_orders(entry.trade_id)
    orders.cancel_order(user, exit_order.id)  # the exit never goes out: the trade is handed back
    db.session.commit()
    trade = fresh(db, Trade, entry.trade_id)
    assert (trade.status, trade.close_reason) == ("open", None)
    assert [order.status for order in broker_stops(trade.id)] == ["cancelled", "pending"]
