"""A cancel whose task gave up (the broker was unreachable through all its retries) is asked again by the
recovery sweep, so an order never stays `pending_cancel` while it still works at the broker."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from tests.conftest import wait_for


def test_recovery_asks_again_for_a_cancel_that_was_given_up(db, user, set_price, celery_worker):
    from models import Order, PaperOrder
    from utils import orders
    from utils.dbtypes import utcnow
    from worker import recover_orders
    set_price("AAPL", "105")
    order, _ = orders.place_order(user, {"symbol": "AAPL", "side": "buy", "quantity": "3", "type": "limit",
                                         "limit_price": "100", "time_in_force": "day"})
    def resting():
        db.session.expire_all()
        return db.session.get(Order, order.id).status == "submitted"
    wait_for(resting, message="the limit order resting at the paper broker")  # sent by the running worker
    orders.transition(order, "pending_cancel", detail="cancel requested; its task then gave up")
    db.session.execute(update(Order).where(Order.id == order.id).values(updated_at=utcnow() - timedelta(minutes=5)))
    db.session.commit()
    assert orders.stuck_cancels() == [order.id]

    recover_orders()

    def cancelled():
        db.session.expire_all()
        return db.session.get(Order, order.id).status == "cancelled"
    wait_for(cancelled, message="the cancel asked again and confirmed")
    paper = db.session.query(PaperOrder).filter_by(client_order_id=order.client_order_id).one()
    assert paper.status == "cancelled" and orders.stuck_cancels() == []
