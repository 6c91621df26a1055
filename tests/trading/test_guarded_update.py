"""The order path's prebuilt writes (utils.database): a guarded UPDATE changes the row only while its guards
hold, and a row inserted without the ORM lands in the same transaction."""
from __future__ import annotations

from decimal import Decimal

from sqlalchemy import select


def test_a_guarded_update_changes_the_row_only_while_every_guard_holds(db, make_order):
    from models import Order
    from utils.database import guarded_update
    order = make_order(status="submitted", quantity="10")
    assert guarded_update(Order, order.id, {"status": "pending"}, {"reject_reason": "no"}) == 0
    assert guarded_update(Order, order.id, {"status": ("pending", "submitting")}, {"reject_reason": "no"}) == 0
    assert guarded_update(Order, order.id, {"status": ("pending", "submitted"), "filled_quantity": Decimal("0")},
                          {"filled_quantity": Decimal("2.5")}) == 1
    assert guarded_update(Order, order.id, {"filled_quantity": Decimal("0")}, {"filled_quantity": Decimal("9")}) == 0
    db.session.commit()
    db.session.expire_all()
    stored = db.session.get(Order, order.id)
    assert (stored.filled_quantity, stored.reject_reason) == (Decimal("2.5"), None)


def test_changes_pending_in_the_session_are_written_before_the_guarded_update(db, make_order):
    """The ORM change is flushed first, so the guard sees it (as the ORM's autoflush did)."""
    from models import Order
    from utils.database import guarded_update
    order = make_order(status="submitted")
    order.reject_reason = "set through the ORM"
    assert guarded_update(Order, order.id, {"reject_reason": "set through the ORM"}, {"status": "cancelled"}) == 1


def test_an_inserted_row_is_read_back_in_the_same_transaction_and_rolled_back_with_it(db, make_order):
    from models import OrderEvent
    from utils.database import insert_row
    order = make_order(status="submitted")
    event_id = insert_row(OrderEvent, {"order_id": order.id, "from_status": "submitted", "to_status": "filled",
                                       "detail": "inserted"})
    assert db.session.scalar(select(OrderEvent.detail).where(OrderEvent.id == event_id)) == "inserted"
    assert db.session.get(OrderEvent, event_id).created_at is not None  # the column default applied
    db.session.rollback()
    assert db.session.scalar(select(OrderEvent.id).where(OrderEvent.id == event_id)) is None
