"""The sweep with a real worker and manual prices, when no stop rests at the broker: one claim, one exit."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import update

from tests.stoploss.conftest import audit_count, fresh
from tests.conftest import wait_for


@pytest.fixture
def app_config(app_config):
    # The sweep's own market exit is what these tests watch, so no stop rests at the paper broker.
    return {**app_config, "STOPLOSS_BROKER_STOPS": "false"}


def wait_closed(db, trade_id):
    from models import Trade
    return wait_for(lambda: (row := fresh(db, Trade, trade_id)).status == "closed" and row,
                    message=f"trade {trade_id} closed")


def test_a_breached_stop_closes_the_trade_with_exactly_one_exit(db, celery_worker, open_trade, set_price,
                                                                 exit_orders, broker_stops):
    from utils import jobs
    trade = open_trade("100", stop_loss_price="95")
    assert broker_stops(trade.id) == []
    set_price("AAPL", "94")
    jobs.send_now(jobs.STOPLOSS_SWEEP)
    trade = wait_closed(db, trade.id)
    assert trade.close_reason == "stop_loss"
    exits = exit_orders(trade.id)
    assert [(order.purpose, order.status) for order in exits] == [("stop_loss", "filled")]
    jobs.send_now(jobs.STOPLOSS_SWEEP)  # a later sweep finds nothing left to close
    wait_for(lambda: fresh(db, type(trade), trade.id) and len(exit_orders(trade.id)) == 1, timeout=2)
    assert len(exit_orders(trade.id)) == 1


def test_a_gap_through_the_stop_fills_at_the_gap_price(db, celery_worker, open_trade, set_price, run_sweep):
    trade = open_trade("100", stop_loss_price="95")
    set_price("AAPL", "80")
    assert run_sweep()["triggered"] == 1
    trade = wait_closed(db, trade.id)
    assert trade.exit_price <= Decimal("80")
    assert trade.realized_pnl < (Decimal("80") - Decimal("100")) * 10 + 1


def test_take_profit_closes_a_short_with_its_own_reason(db, celery_worker, open_trade, set_price, run_sweep,
                                                       exit_orders):
    trade = open_trade("100", side="sell", take_profit_price="90")
    set_price("AAPL", "89")
    run_sweep()
    trade = wait_closed(db, trade.id)
    assert trade.close_reason == "take_profit"
    assert [order.purpose for order in exit_orders(trade.id)] == ["take_profit"]


def test_a_stale_quote_never_exits_and_warns_once_after_three_misses(db, app, user, celery_worker, open_trade,
                                                                     run_sweep, exit_orders):
    from models import MarketPrice, Trade
    from utils import market_data, stoploss
    trade = open_trade("100", stop_loss_price="95")
    old = datetime.now(timezone.utc) - timedelta(seconds=app.config["QUOTE_MAX_AGE_SECONDS"] + 60)
    db.session.execute(update(MarketPrice).where(MarketPrice.symbol == "AAPL").values(price="50", as_of=old))
    db.session.commit()
    market_data.cache().flushdb()
    summaries = [run_sweep() for _ in range(4)]
    assert [summary["quote_unavailable"] for summary in summaries] == [1, 1, 1, 1]
    assert all(summary["triggered"] == 0 for summary in summaries)
    trade = fresh(db, Trade, trade.id)
    assert (trade.status, trade.quote_misses, exit_orders(trade.id)) == ("open", 4, [])
    assert audit_count(db, "stoploss.quote_unavailable") == 1
    assert [warning["trade_id"] for warning in stoploss.guard_status(user)["warnings"]] == [trade.id]


def test_a_good_quote_resets_the_misses(db, celery_worker, open_trade, set_price, run_sweep):
    from models import Trade
    trade = open_trade("100", stop_loss_price="95")
    db.session.execute(update(Trade).where(Trade.id == trade.id).values(quote_misses=5))
    db.session.commit()
    run_sweep()
    assert fresh(db, Trade, trade.id).quote_misses == 0


def _in_threads(app, count, action):
    """Run action() in `count` threads at once, each with its own app context and session."""
    from utils.extensions import db as database
    barrier, results = threading.Barrier(count), []

    def run():
        with app.app_context():
            barrier.wait()
            try:
                results.append(action())
            finally:
                database.session.remove()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_two_sweeps_at_once_send_one_exit(db, app, celery_worker, open_trade, set_price, exit_orders):
    from utils import stoploss
    from utils.extensions import db as database
    trade = open_trade("100", stop_loss_price="95")
    set_price("AAPL", "90")
    results = _in_threads(app, 2, lambda: stoploss.sweep(commit=database.session.commit))
    assert sorted(result.get("triggered", 0) for result in results) == [0, 1]
    wait_closed(db, trade.id)
    assert len(exit_orders(trade.id)) == 1


def test_two_closers_past_the_lock_still_send_one_exit(db, app, celery_worker, open_trade, set_price,
                                                        exit_orders):
    """Even without the sweep lock (e.g. it expired), the conditional claim lets only one close through."""
    from utils import stoploss
    from utils.extensions import db as database
    trade = open_trade("100", stop_loss_price="95")
    set_price("AAPL", "90")
    plan = stoploss.plan_sweep()
    assert [breach[0] for breach in plan.breaches] == [trade.id]
    results = _in_threads(app, 3, lambda: stoploss.close_breaches(plan, database.session.commit))
    assert sorted(closed for closed, _failed in results) == [0, 0, 1]
    wait_closed(db, trade.id)
    assert len(exit_orders(trade.id)) == 1


def test_two_enqueued_sweeps_send_one_exit(db, celery_worker, open_trade, set_price, exit_orders):
    from utils import jobs
    trade = open_trade("100", stop_loss_price="95")
    set_price("AAPL", "90")
    jobs.send_now(jobs.STOPLOSS_SWEEP)
    jobs.send_now(jobs.STOPLOSS_SWEEP)
    wait_closed(db, trade.id)
    wait_for(lambda: all(order.status == "filled" for order in exit_orders(trade.id)), message="exits settled")
    assert len(exit_orders(trade.id)) == 1


def test_a_manual_close_racing_the_sweep_sends_one_exit(db, app, user, celery_worker, open_trade, set_price,
                                                        exit_orders):
    from utils import stoploss, trades
    from utils.errors import Conflict
    from utils.extensions import db as database
    trade = open_trade("100", stop_loss_price="95")
    set_price("AAPL", "90")

    def close_by_hand():
        try:
            trades.close_trade(database.session.get(type(user), user.id), trade.id)
            database.session.commit()
            return "manual"
        except Conflict:
            database.session.rollback()
            return "refused"

    actions = iter([close_by_hand, lambda: stoploss.sweep(commit=database.session.commit)])
    lock = threading.Lock()

    def next_action():
        with lock:
            action = next(actions)
        return action()

    results = _in_threads(app, 2, next_action)
    closed = wait_closed(db, trade.id)
    assert len(exit_orders(trade.id)) == 1
    manual_won = "manual" in results
    assert closed.close_reason == ("manual" if manual_won else "stop_loss")


def test_a_trailing_stop_ratchets_up_never_down_and_then_closes(db, celery_worker, open_trade, set_price,
                                                                run_sweep, exit_orders):
    from models import Trade
    trade = open_trade("100", trailing_stop_percent="10")
    from utils.market_data import round_price
    assert trade.water_mark_price == trade.entry_price
    assert trade.stop_loss_price == round_price(trade.entry_price * Decimal("0.9"))
    set_price("AAPL", "120")
    run_sweep()
    assert fresh(db, Trade, trade.id).stop_loss_price == Decimal("108")
    set_price("AAPL", "110")
    assert run_sweep()["triggered"] == 0
    trade = fresh(db, Trade, trade.id)
    assert (trade.stop_loss_price, trade.water_mark_price, trade.status) == (Decimal("108"), Decimal("120"), "open")
    set_price("AAPL", "107")
    assert run_sweep()["triggered"] == 1
    assert wait_closed(db, trade.id).close_reason == "stop_loss"
    assert len(exit_orders(trade.id)) == 1


def test_a_breach_is_checked_again_on_the_current_price_right_before_its_close(db, celery_worker, open_trade,
                                                                               set_price, exit_orders):
    """A sweep's quotes can age while earlier closes in the same sweep wait on brokers: each close first
    looks at the price again and closes only if the trade is still breached then."""
    from models import Trade
    from utils import stoploss
    recovered = open_trade("100", stop_loss_price="95")
    still_down = open_trade("50", stop_loss_price="45", symbol="MSFT")
    set_price("AAPL", "94")
    set_price("MSFT", "44")
    plan = stoploss.plan_sweep()
    assert {trade_id for trade_id, _user, _reason in plan.breaches} == {recovered.id, still_down.id}

    set_price("AAPL", "96")  # back above the stop before the sweep reaches the close
    closed, failed = stoploss.close_breaches(plan, db.session.commit)

    assert (closed, failed) == (1, 0)
    assert fresh(db, Trade, recovered.id).status == "open" and exit_orders(recovered.id) == []
    assert fresh(db, Trade, still_down.id).status in ("closing", "closed")
