"""The `market.tick` beat task: moves the simulated feed and matches resting paper orders."""
from __future__ import annotations

import time
from decimal import Decimal

import pytest
from sqlalchemy import select

from tests.market.conftest import order_request


def test_market_tasks_are_registered_and_ticked_by_beat(app):
    import worker
    from utils import jobs
    assert {jobs.MARKET_TICK, jobs.MARKET_MATCH} <= set(worker.celery.tasks)
    assert {jobs.MARKET_TICK, jobs.MARKET_MATCH} <= set(app.extensions["celery"].tasks)
    entry = worker.BEAT_SCHEDULE["market-tick"]
    assert entry["task"] == jobs.MARKET_TICK
    assert entry["schedule"] == float(worker.flask_app.config["MARKET_TICK_SECONDS"])


def test_tick_matches_resting_orders_against_a_price_changed_without_a_match(app, db, broker, set_price):
    import worker
    from models import MarketPrice
    set_price("AAPL", "100")
    order = broker.place_order(order_request(order_type="limit", limit_price="95"))
    db.session.commit()
    row = db.session.scalar(select(MarketPrice).where(MarketPrice.symbol == "AAPL"))
    row.price = Decimal("90")  # as if the match after the price change had been lost
    db.session.commit()
    worker.market_tick()
    assert broker.get_order(order.broker_order_id).status == "filled"


class TestSimulated:
    @pytest.fixture
    def market_settings(self):
        return {"MARKET_DATA_SOURCE": "simulated", "SIMULATED_SYMBOLS": "AAPL=100", "SIMULATED_SEED": "5"}

    def test_a_tick_through_the_real_worker_moves_the_walk_one_step(self, app, db, celery_worker):
        from models import MarketPrice
        from utils import jobs, market_data
        deadline = time.monotonic() + 15
        row = None
        while time.monotonic() < deadline and (row is None or row.tick < 1):
            jobs.send_now(jobs.MARKET_TICK)  # the first inserts the start price, the next ones move it
            time.sleep(0.2)
            db.session.rollback()
            row = db.session.scalar(select(MarketPrice).where(MarketPrice.symbol == "AAPL"))
        assert row is not None and row.tick >= 1
        expected = Decimal("100")
        for step in range(1, row.tick + 1):
            expected = market_data.simulated_step(5, "AAPL", step, expected)
        assert row.price == expected
        assert market_data.get_quotes(["AAPL"])["AAPL"].last == row.price

    def test_overlapping_ticks_do_not_both_run(self, app, db):
        import worker
        from models import MarketPrice
        from utils import market_data
        with market_data.tick_lock() as acquired:
            assert acquired
            worker.market_tick()  # another tick while this one holds the lock: skipped
        assert db.session.scalar(select(MarketPrice).where(MarketPrice.symbol == "AAPL")) is None
        worker.market_tick()
        assert db.session.scalar(select(MarketPrice).where(MarketPrice.symbol == "AAPL")).tick == 0

    def test_manual_prices_cannot_be_set(self, app):
        from utils import market_data
        from utils.errors import Conflict
        with pytest.raises(Conflict):
            market_data.set_manual_price("AAPL", "1")
