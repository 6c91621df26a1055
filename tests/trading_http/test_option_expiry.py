"""A paper option held past its expiration is settled by beat's `trades.settle_expired`: its stop is withdrawn
and a market exit, executed by the real worker, closes the trade at the contract's intrinsic value (zero when
it expired out of the money), with close reason `expired` and the realized P&L that follows."""
from __future__ import annotations

from decimal import Decimal

from sqlalchemy import func, select

from tests.market.conftest import age_the_price, let_expire
from tests.trading_http.conftest import bought_with_resting_stop, wait_for

LIVE_CALL, EXPIRED_CALL = "AAPL301220C00150000", "AAPL240119C00150000"  # the same contract, before and after


def settle(db) -> int:
    """What one beat `trades.settle_expired` run does, here; the exits it enqueues go to the real worker."""
    from utils import trades
    return trades.settle_expired_options(commit=db.session.commit)


def held_calls(api, set_price, **extra) -> dict:
    """Two live calls bought at market (about 5.00) with a broker-side stop at 2.00; then they expire."""
    set_price("AAPL", "180")
    set_price(LIVE_CALL, "5.00")
    return bought_with_resting_stop(api, LIVE_CALL, "2", "2.00", **extra)


def settled_trade(api, trade_id: int) -> dict:
    return wait_for(lambda: api.get(f"/trades/{trade_id}").get_json(), lambda trade: trade["status"] == "closed",
                    timeout=30)


def expired_and_settled(db, api, set_price, underlying_price: str) -> tuple[dict, dict]:
    """(the trade as opened, the trade once settled with AAPL at `underlying_price`)."""
    opened = held_calls(api, set_price)
    let_expire(db, LIVE_CALL, EXPIRED_CALL)
    set_price("AAPL", underlying_price)
    assert settle(db) == 1
    return opened, settled_trade(api, opened["id"])


def test_an_option_expiring_in_the_money_is_closed_at_its_intrinsic_value(app, db, api, set_price, celery_worker):
    opened, trade = expired_and_settled(db, api, set_price, "200")
    entry, fees = Decimal(opened["entry_price"]), Decimal(opened["fees"])
    assert (trade["close_reason"], trade["exit_price"], trade["exit_quantity"]) == ("expired", "50", "2")
    assert Decimal(trade["realized_pnl"]) == (Decimal(50) - entry) * 2 * 100 - fees
    orders = api.get("/orders").get_json()["items"]
    assert [(order["purpose"], order["status"]) for order in orders] == [
        ("exit", "filled"), ("stop_loss", "cancelled"), ("entry", "filled")]
    assert settle(db) == 0  # settled once


def test_an_option_expiring_worthless_is_closed_at_zero(app, db, api, set_price, celery_worker):
    opened, trade = expired_and_settled(db, api, set_price, "149.99")
    assert (trade["close_reason"], trade["exit_price"]) == ("expired", "0")
    entry, fees = Decimal(opened["entry_price"]), Decimal(opened["fees"])
    assert Decimal(trade["realized_pnl"]) == -entry * 2 * 100 - fees
    assert api.get("/positions").get_json()["items"] == []


def test_no_settlement_on_a_stale_underlying_price_and_the_trade_stays_guarded(app, db, api, set_price,
                                                                              celery_worker):
    from models import Order
    opened = held_calls(api, set_price)
    let_expire(db, LIVE_CALL, EXPIRED_CALL)
    age_the_price(app, db, "AAPL")
    assert settle(db) == 0
    assert api.get(f"/trades/{opened['id']}").get_json()["status"] == "open"
    assert db.session.scalar(select(func.count(Order.id))) == 2  # the entry and its stop; no exit was made
    set_price("AAPL", "200")  # the feed is back: the next run settles
    assert settle(db) == 1
    assert settled_trade(api, opened["id"])["exit_price"] == "50"


def test_a_live_option_is_left_alone(app, db, api, set_price, celery_worker):
    opened = held_calls(api, set_price)
    assert settle(db) == 0
    assert api.get(f"/trades/{opened['id']}").get_json()["status"] == "open"


def test_the_settlement_runs_on_beat(app):
    import worker
    from utils import jobs
    assert worker.BEAT_SCHEDULE["trades-settle-expired"]["task"] == jobs.TRADES_SETTLE_EXPIRED
    assert jobs.TRADES_SETTLE_EXPIRED in worker.celery.tasks


def test_the_stop_loss_sweep_leaves_an_expired_option_to_its_settlement(app, db, api, set_price, celery_worker):
    from utils import stoploss
    opened = held_calls(api, set_price)
    set_price(LIVE_CALL, "1.00")  # through the 2.00 stop while the contract lives
    assert [breach[0] for breach in stoploss.plan_sweep().breaches] == [opened["id"]]
    let_expire(db, LIVE_CALL, EXPIRED_CALL)
    set_price("AAPL", "149.99")  # worthless at expiry: below the stop too, yet the settlement closes it
    plan = stoploss.plan_sweep()
    assert (plan.checked, plan.breaches, plan.misses) == (0, [], [])


def test_a_settlement_the_broker_refuses_waits_before_the_next(app, db, api, set_price, celery_worker):
    """The contract is no longer at the paper broker (as when the broker settled it itself): the settlement's
    exit is refused, the trade stays open, and the next run waits instead of sending it again."""
    from sqlalchemy import delete

    from models import PaperPosition
    opened = held_calls(api, set_price)
    let_expire(db, LIVE_CALL, EXPIRED_CALL)
    db.session.execute(delete(PaperPosition).where(PaperPosition.symbol == EXPIRED_CALL))
    db.session.commit()
    set_price("AAPL", "200")
    assert settle(db) == 1
    trade = wait_for(lambda: api.get(f"/trades/{opened['id']}").get_json(),
                     lambda trade: trade["status"] == "open" and trade["exit_refusals"] == 1)
    assert trade["exit_retry_at"] is not None and trade["close_reason"] is None
    assert settle(db) == 0
    assert [order["status"] for order in api.get("/orders").get_json()["items"] if order["purpose"] == "exit"] == [
        "rejected"]
