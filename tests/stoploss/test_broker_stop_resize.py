"""Partial entry fills grow the trade, and its broker-side stop is resized (replaced) to match."""
from __future__ import annotations

from decimal import Decimal

import pytest

from tests.stoploss.conftest import fresh
from tests.conftest import wait_for
from tests.stoploss.test_broker_stops import resting_paper_stops


@pytest.fixture
def app_config(app_config):
    return {**app_config, "PAPER_LIQUIDITY_PER_TICK": "4"}  # the paper broker fills 4 units per pass


def test_partial_fills_resize_the_broker_stop(db, user, celery_worker, set_price, broker_stops):
    from models import Order, Trade
    from utils import orders
    set_price("AAPL", "100")
    entry, _ = orders.place_order(user, {"symbol": "AAPL", "side": "buy", "quantity": "10", "type": "market",
                                         "time_in_force": "gtc", "stop_loss_price": "95"})
    wait_for(lambda: fresh(db, Order, entry.id).filled_quantity == 4, message="first partial fill")
    first = wait_for(lambda: [o for o in broker_stops(entry.trade_id) if o.status == "submitted"],
                     message="a stop for the first 4")[0]
    assert first.quantity == Decimal("4")
    set_price("AAPL", "100")  # another matching pass at the paper broker fills 4 more
    wait_for(lambda: (orders.sync_order(entry.id), db.session.commit(),
                      fresh(db, Order, entry.id).filled_quantity == 8)[-1], message="second partial fill")
    assert fresh(db, Trade, entry.trade_id).quantity == Decimal("8")
    resized = wait_for(lambda: [o for o in broker_stops(entry.trade_id) if o.status == "submitted"
                                and o.quantity == 8], message="the stop resized to 8")[0]
    assert resized.replaces_order_id == first.id
    wait_for(lambda: fresh(db, Order, first.id).status == "replaced", message="the first stop replaced")
    assert [paper.quantity for paper in resting_paper_stops(db, entry.trade_id)] == [Decimal("8")]
