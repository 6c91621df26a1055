"""A replace asked for while the order rests, sent after the order began to fill at the broker: the fills
are recorded on the old order and the replacement is refused, so the broker never works more than asked."""
from __future__ import annotations

from decimal import Decimal

import pytest

from tests.conftest import execute_in_process


@pytest.fixture
def app_config(app_config):
    return {**app_config, "PAPER_LIQUIDITY_PER_TICK": "4"}  # a crossing price fills 4 shares per tick


def test_a_replacement_of_an_order_that_filled_meanwhile_is_refused_and_the_fills_kept(db, user, set_price):
    from models import PaperOrder
    from utils import orders
    from utils.brokers import paper
    set_price("AAPL", "105")
    old, _ = orders.place_order(user, {"symbol": "AAPL", "side": "buy", "quantity": "10", "type": "limit",
                                       "limit_price": "100", "time_in_force": "day"})
    execute_in_process(db, old.id)
    assert old.status == "submitted"
    new = orders.replace_order(user, old.id, {"limit_price": "101"})

    set_price("AAPL", "99")
    paper.match_resting_orders(["AAPL"])  # the broker fills 4 of the old order before the replacement is sent
    db.session.commit()
    execute_in_process(db, new.id)

    assert new.status == "rejected" and "partially_filled" in new.reject_reason
    assert old.status == "partially_filled" and old.filled_quantity == Decimal("4")
    working = db.session.query(PaperOrder).filter(PaperOrder.status.in_(("submitted", "partially_filled"))).all()
    assert [(order.client_order_id, order.quantity - order.filled_quantity) for order in working] == \
        [(old.client_order_id, Decimal("6"))]  # only the old order's remainder works at the broker
