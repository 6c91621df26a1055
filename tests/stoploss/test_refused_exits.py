"""An automatic exit the broker refuses (here: the position is no longer at the paper broker, as when it was
sold at the broker directly) hands the trade back to `open` and makes the next automatic exit wait 2, 5, then
15 minutes, instead of sending the same refused order at every sweep. The user sees why on the
dashboard; saving the trade's protection, or an exit the broker takes, ends the wait."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, select, update

from tests.conftest import wait_for
from tests.stoploss.conftest import audit_count, fresh


@pytest.fixture
def app_config(app_config):
    # The sweep's own market exit is what these tests watch, so no stop rests at the paper broker.
    return {**app_config, "STOPLOSS_BROKER_STOPS": "false"}


def sold_at_the_broker(db, trade) -> None:
    """The paper broker no longer holds the trade's position; Tradewarden's trade is still open."""
    from models import PaperAccount, PaperPosition
    account_ids = select(PaperAccount.id).where(PaperAccount.connection_id == trade.broker_connection_id)
    db.session.execute(delete(PaperPosition).where(PaperPosition.account_id.in_(account_ids),
                                                   PaperPosition.symbol == trade.symbol))
    db.session.commit()


def refused(db, exit_orders, trade_id: int, count: int, in_a_row: int | None = None):
    """Wait until the trade's `count`-th exit was rejected and the trade handed back with `in_a_row`
    refusals counted (default `count`); return the trade."""
    from models import Trade
    in_a_row = count if in_a_row is None else in_a_row
    wait_for(lambda: [order.status for order in exit_orders(trade_id)] == ["rejected"] * count,
             message=f"{count} exits of trade {trade_id} rejected")
    return wait_for(lambda: (row := fresh(db, Trade, trade_id)).status == "open" and row.exit_refusals == in_a_row
                    and row, message=f"trade {trade_id} open again after {in_a_row} refusals")


def let_the_wait_pass(db, trade_id: int) -> None:
    from models import Trade
    db.session.execute(update(Trade).where(Trade.id == trade_id).values(
        exit_retry_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
    db.session.commit()


def assert_waits(trade, minutes: int) -> None:
    wait = trade.exit_retry_at - datetime.now(timezone.utc)
    assert timedelta(minutes=minutes) - timedelta(seconds=30) < wait <= timedelta(minutes=minutes)


def test_a_refused_stop_loss_exit_is_not_sent_again_at_every_sweep(db, user, celery_worker, open_trade, set_price,
                                                                    run_sweep, exit_orders):
    from utils import stoploss, trades
    trade = open_trade("100", stop_loss_price="95")
    sold_at_the_broker(db, trade)
    set_price("AAPL", "94")
    assert run_sweep()["triggered"] == 1
    trade = refused(db, exit_orders, trade.id, 1)
    assert_waits(trade, 2)
    assert audit_count(db, "trade.exit_refused") == 1
    for _ in range(3):  # the price is still through the stop, but the refused exit waits
        assert run_sweep()["triggered"] == 0
    assert len(exit_orders(trade.id)) == 1

    let_the_wait_pass(db, trade.id)
    assert run_sweep()["triggered"] == 1
    trade = refused(db, exit_orders, trade.id, 2)
    assert_waits(trade, 5)
    [warning] = stoploss.guard_status(user)["refused_exits"]
    assert (warning["trade_id"], warning["refusals"]) == (trade.id, 2)
    assert "Nothing to close" in warning["reason"]
    shown = trades.trade_to_dict(trade)
    assert shown["exit_refusals"] == 2 and shown["exit_retry_at"].endswith("Z")


def test_the_wait_grows_to_a_quarter_of_an_hour_and_stays_there():
    from utils.trades import exit_retry_delay
    assert [exit_retry_delay(n) for n in range(1, 6)] == [timedelta(minutes=m) for m in (2, 5, 15, 15, 15)]


def test_saving_the_protection_ends_the_wait(db, user, celery_worker, open_trade, set_price, run_sweep,
                                             exit_orders):
    from models import Trade
    from utils import stoploss
    trade = open_trade("100", stop_loss_price="95")
    sold_at_the_broker(db, trade)
    set_price("AAPL", "94")
    run_sweep()
    refused(db, exit_orders, trade.id, 1)
    stoploss.update_protection(user, trade.id, {"stop_loss_price": "93"})
    db.session.commit()
    trade = fresh(db, Trade, trade.id)
    assert (trade.exit_refusals, trade.exit_retry_at) == (0, None)
    assert stoploss.guard_status(user)["refused_exits"] == []
    set_price("AAPL", "92")
    assert run_sweep()["triggered"] == 1  # at once, and counted afresh when refused again
    assert_waits(refused(db, exit_orders, trade.id, 2, in_a_row=1), 2)


def test_an_exit_the_broker_takes_clears_the_refusals(db, celery_worker, open_trade, set_price, run_sweep,
                                                      exit_orders):
    from models import PaperPosition, Trade
    trade = open_trade("100", stop_loss_price="95")
    position = db.session.scalar(select(PaperPosition).where(PaperPosition.symbol == "AAPL"))
    held = {"account_id": position.account_id, "symbol": "AAPL", "asset_type": position.asset_type,
            "quantity": position.quantity, "average_price": position.average_price}
    sold_at_the_broker(db, trade)
    set_price("AAPL", "94")
    run_sweep()
    refused(db, exit_orders, trade.id, 1)
    db.session.add(PaperPosition(**held))  # the position is back at the broker
    db.session.commit()
    let_the_wait_pass(db, trade.id)
    assert run_sweep()["triggered"] == 1
    trade = wait_for(lambda: (row := fresh(db, Trade, trade.id)).status == "closed" and row, message="closed")
    assert (trade.close_reason, trade.exit_refusals, trade.exit_retry_at) == ("stop_loss", 0, None)


def test_a_refused_close_the_user_asked_for_is_not_counted_and_not_held_back(db, user, celery_worker, open_trade,
                                                                             set_price, run_sweep, exit_orders):
    from models import Order, Trade
    from utils import trades
    trade = open_trade("100", stop_loss_price="95")
    sold_at_the_broker(db, trade)
    set_price("AAPL", "94")
    run_sweep()
    waiting_until = refused(db, exit_orders, trade.id, 1).exit_retry_at
    trades.close_trade(user, trade.id)  # the user may always try: the wait holds back only automatic exits
    db.session.commit()
    wait_for(lambda: [order.status for order in exit_orders(trade.id)] == ["rejected", "rejected"],
             message="the manual exit rejected")
    trade = wait_for(lambda: (row := fresh(db, Trade, trade.id)).status == "open" and row, message="open again")
    assert (trade.exit_refusals, trade.exit_retry_at) == (1, waiting_until)
    assert [order.purpose for order in exit_orders(trade.id)] == ["stop_loss", "exit"]
    assert db.session.scalar(select(Order.reject_reason).where(Order.purpose == "exit")).startswith("Nothing")
    assert audit_count(db, "trade.exit_refused") == 1


def test_the_dashboard_says_why_and_when(db, client, login, user, celery_worker, open_trade, set_price, run_sweep,
                                          exit_orders):
    trade = open_trade("100", stop_loss_price="95")
    sold_at_the_broker(db, trade)
    set_price("AAPL", "94")
    run_sweep()
    trade = refused(db, exit_orders, trade.id, 1)
    login(user)
    html = client.get("/").get_data(as_text=True)
    assert f"Trade #{trade.id} (AAPL):" in html and "refused its automatic exit" in html
    assert "Nothing to close" in html and trade.exit_retry_at.strftime("%H:%M") in html
    assert f"/trades/{trade.id}/stop-loss" in html
    assert "exit refused" in client.get("/trades").get_data(as_text=True)


def test_a_position_sold_at_the_broker_is_recorded_and_the_retries_end(db, user, celery_worker, open_trade, set_price,
                                                                      run_sweep, exit_orders):
    from utils import trades
    trade = open_trade("100", stop_loss_price="95")
    sold_at_the_broker(db, trade)
    set_price("AAPL", "94")
    run_sweep()
    refused(db, exit_orders, trade.id, 1)
    trade = trades.record_closed_at_broker(user, trade.id, {"exit_price": "96.20"})
    db.session.commit()
    assert (trade.status, trade.close_reason, trade.exit_refusals, trade.exit_retry_at) == ("closed", "broker", 0, None)
    assert stoploss_warnings(user) == []
    let_the_wait_pass(db, trade.id)
    assert run_sweep()["triggered"] == 0
    assert len(exit_orders(trade.id)) == 1


def stoploss_warnings(user) -> list:
    from utils import stoploss
    return stoploss.guard_status(user)["refused_exits"]
