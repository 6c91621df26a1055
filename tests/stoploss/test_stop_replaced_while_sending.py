"""Moving a stop while the previous broker-side stop is still being sent: the new stop waits and then
replaces the old one at the broker, so exactly one stop is ever live there (never two that could both fill)."""
from __future__ import annotations

from decimal import Decimal

from tests.conftest import wait_for
from tests.stoploss.conftest import fresh
from tests.stoploss.test_broker_stops import resting_paper_stops


def test_a_stop_moved_during_the_old_stops_send_replaces_it_once_that_send_is_done(db, user, celery_worker,
                                                                                  open_trade, broker_stops):
    from models import Order
    from utils import orders, stoploss
    trade = open_trade("100")  # no stop yet
    trade.stop_loss_price = Decimal("95")
    old = stoploss._new_stop(trade, trade.quantity)
    orders.claim_submission(old.id)  # this test is the slow sender of the old stop: the worker cannot claim it
    db.session.commit()

    stoploss.update_protection(user, trade.id, {"stop_loss_price": "97"})
    db.session.commit()
    [new] = [stop for stop in broker_stops(trade.id) if stop.replaces_order_id == old.id]
    wait_for(lambda: len([e for e in fresh(db, Order, new.id).events if e.to_status == "submitting"]) >= 2,
             timeout=30, message="the new stop to wait for the old one")

    orders.record_answer(old.id, orders.send_claimed(old.id))  # the old stop's send finishes only now
    db.session.commit()

    wait_for(lambda: fresh(db, Order, new.id).status == "submitted", timeout=30, message="the new stop sent")
    assert fresh(db, Order, old.id).status == "replaced"
    assert [paper.stop_price for paper in resting_paper_stops(db, trade.id)] == [Decimal("97")]
