"""Two matchers (or two senders) at once: every order fills once, every client_order_id exists once."""
from __future__ import annotations

import threading
from decimal import Decimal

from sqlalchemy import func, select

from tests.market.conftest import order_request

THREADS = 4


def run_in_threads(app, work) -> list:
    """Run work() in THREADS threads released together, each in its own app context; return errors."""
    from utils.extensions import db
    barrier, errors = threading.Barrier(THREADS), []

    def runner():
        with app.app_context():
            try:
                barrier.wait(timeout=10)
                work()
                db.session.commit()
            except Exception as error:  # collected and asserted on below
                db.session.rollback()
                errors.append(error)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=runner) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def test_concurrent_matching_fills_each_order_exactly_once(app, db, make_broker, user, other_user, set_price):
    from models import PaperFill, PaperOrder, PaperPosition
    from utils.brokers import paper
    set_price("AAPL", "100")
    brokers = [make_broker(user), make_broker(other_user)]
    for index in range(20):
        brokers[index % 2].place_order(order_request(order_type="limit", limit_price="95", quantity="3"))
    db.session.commit()
    set_price("AAPL", "90")

    errors = run_in_threads(app, paper.match_resting_orders)

    assert errors == []
    db.session.expire_all()
    fills_per_order = db.session.execute(select(PaperFill.order_id, func.count()).group_by(PaperFill.order_id)).all()
    assert len(fills_per_order) == 20 and all(count == 1 for _, count in fills_per_order)
    assert all(order.filled_quantity == 3 and order.status == "filled"
               for order in db.session.scalars(select(PaperOrder)))
    assert sorted(p.quantity for p in db.session.scalars(select(PaperPosition))) == [Decimal(30), Decimal(30)]
    for broker in brokers:
        orders = db.session.scalars(select(PaperOrder).where(PaperOrder.account_id == broker.account_id))
        fills = [fill for order in orders for fill in order.fills]
        assert broker.get_account().cash == Decimal("100000") - sum(f.quantity * f.price for f in fills)


def test_concurrent_sends_of_one_client_order_id_make_one_order(app, db, broker, user, set_price):
    from models import PaperOrder
    from utils.brokers import get_broker
    from utils.brokers.paper import ensure_paper_connection
    set_price("AAPL", "100")
    request = order_request(client_order_id="raced-1", quantity="7")

    def send():
        get_broker(ensure_paper_connection(db.session.merge(user))).place_order(request)

    errors = run_in_threads(app, send)

    assert errors == []
    db.session.expire_all()
    assert db.session.scalar(select(func.count(PaperOrder.id)).where(PaperOrder.client_order_id == "raced-1")) == 1
    assert broker.get_positions()[0].quantity == Decimal("7")
