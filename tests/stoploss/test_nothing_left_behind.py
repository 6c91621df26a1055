"""When one exit closes a trade at the broker (its stop, or a limit sell the user left resting), every other
exit still working is withdrawn, so nothing is left behind that could sell again and open a short."""
from __future__ import annotations

from tests.conftest import wait_for
from tests.stoploss.conftest import fresh
from tests.stoploss.test_broker_stops import resting_paper_stops, wait_stop_resting
from tests.stoploss.test_close_with_resting_exit import paper_quantity, place_limit_exit, resting_limit_exit  # noqa: F401


def _synced(predicate):
    """The predicate after asking the worker for `orders.sync` (what beat does every 2 s) to record fills."""
    from utils import jobs

    def check():
        jobs.send_now(jobs.ORDERS_SYNC)
        return predicate()
    return check


def _settled_flat(db, user, trade_id, leftover):
    from models import Order, Trade
    wait_for(_synced(lambda: fresh(db, Trade, trade_id).status == "closed"), interval=0.5, message="the trade closed")
    wait_for(lambda: fresh(db, Order, leftover.id).status == "cancelled", message="the other exit withdrawn")
    assert paper_quantity(db, user) == 0


def test_a_stop_filled_at_the_broker_withdraws_the_resting_limit_exit(db, user, celery_worker, open_trade, set_price,
                                                                      broker_stops, resting_limit_exit):
    trade = open_trade("100", stop_loss_price="95")
    wait_stop_resting(db, broker_stops, trade.id, "95")
    limit_exit = resting_limit_exit(trade, "120")

    set_price("AAPL", "90")  # the paper broker fills the resting stop
    _settled_flat(db, user, trade.id, limit_exit)
    set_price("AAPL", "121")  # the withdrawn limit sell must not sell again
    wait_for(lambda: fresh(db, type(limit_exit), limit_exit.id).status == "cancelled", message="still cancelled")
    assert paper_quantity(db, user) == 0 and fresh(db, type(limit_exit), limit_exit.id).filled_quantity == 0


def test_a_limit_exit_filled_at_the_broker_withdraws_the_broker_stop(db, user, celery_worker, open_trade, set_price,
                                                                     broker_stops, resting_limit_exit):
    trade = open_trade("100", stop_loss_price="95")
    stop = wait_stop_resting(db, broker_stops, trade.id, "95")
    resting_limit_exit(trade, "120")

    set_price("AAPL", "121")  # the limit sell fills and closes the trade
    _settled_flat(db, user, trade.id, stop)
    assert resting_paper_stops(db, trade.id) == []
    set_price("AAPL", "90")  # the withdrawn stop must not sell again
    assert paper_quantity(db, user) == 0 and fresh(db, type(stop), stop.id).filled_quantity == 0


def test_an_exit_still_being_sent_when_a_fill_closed_the_trade_is_refused_by_the_paper_broker(db, user, set_price):
    """No worker: each step runs here. The user's limit sell is being sent while the broker-side stop fills
    and closes the trade; when the limit sell reaches the paper broker there is nothing left to close, so
    it is refused there and never rests (the withdrawal on arrival, for brokers that accept it anyway, is
    tested against the fake Schwab in test_exit_withdrawn_at_schwab.py)."""
    from models import Order, PaperOrder, Trade
    from tests.conftest import execute_in_process
    from utils import orders, stoploss
    from utils.brokers import paper
    set_price("AAPL", "100")
    entry, _ = orders.place_order(user, {"symbol": "AAPL", "side": "buy", "quantity": "10", "type": "market",
                                         "stop_loss_price": "95"})
    execute_in_process(db, entry.id)
    [stop] = stoploss.working_stops(entry.trade_id)
    execute_in_process(db, stop.id)
    limit_exit, _ = orders.place_order(user, {"symbol": "AAPL", "side": "sell", "instruction": "SELL", "type": "limit",
                                              "limit_price": "120", "quantity": "10", "trade_id": entry.trade_id})
    orders.claim_submission(limit_exit.id)  # its send has begun
    db.session.commit()

    set_price("AAPL", "90")
    paper.match_resting_orders(["AAPL"])  # the stop fills at the broker
    orders.sync_order(stop.id)
    db.session.commit()
    assert db.session.get(Trade, entry.trade_id).status == "closed"

    assert orders.send_claimed(limit_exit.id) is None  # the limit sell arrives only now
    db.session.commit()
    refused = db.session.get(Order, limit_exit.id)
    assert refused.status == "rejected" and "Nothing to close" in refused.reject_reason
    assert db.session.query(PaperOrder).filter_by(client_order_id=limit_exit.client_order_id).count() == 0
    assert db.session.get(Trade, entry.trade_id).status == "closed"