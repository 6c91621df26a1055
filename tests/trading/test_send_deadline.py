"""An entry the worker takes up too late is not sent (ORDERS_SEND_DEADLINE_SECONDS, default 300 s).

Placing an order answers 202 and leaves the sending to the worker. If the worker is down, or far behind,
the order waits in the queue; sent when the worker comes back it would meet a market that has moved on
since the user placed it. So an entry still unsent past its deadline is `failed` with the reason, and
nothing reaches the broker. An exit is still sent: closing a position late does what was asked.

"The worker was down" is real here: a worker process is stopped, orders are placed (their jobs wait in
Redis), their placement time is moved back past the deadline, and a new worker process takes the jobs up.
"""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from sqlalchemy import update

from tests.conftest import wait_for
from tests.fakes import schwab as fake_schwab
from tests.trading.linked_schwab import app_config, schwab_order, schwab_port  # noqa: F401  (fixtures)
from tests.trading.test_crash import WorkerProcess, worker_env  # noqa: F401  (worker_env is a fixture)

MARKET_BUY = {"symbol": "AAPL", "side": "buy", "type": "market", "time_in_force": "day"}


def test_an_entry_taken_up_past_its_deadline_is_failed_unsent_and_an_exit_still_goes(
        app, db, user, set_price, worker_env, tmp_path, broker_order_count):
    from models import Order, Trade
    from utils import orders, trades
    set_price("AAPL", "100")
    first = WorkerProcess(worker_env, tmp_path / "worker1.log")
    try:
        held, _ = orders.place_order(user, {**MARKET_BUY, "quantity": "5", "client_order_id": "held"})
        wait_for(lambda: _reloaded(db, held).status == "filled", timeout=60, message="the first entry to fill")
    finally:
        first.stop()

    late, _ = orders.place_order(user, {**MARKET_BUY, "quantity": "3", "client_order_id": "late"})
    trades.close_trade(user, held.trade_id)
    db.session.commit()
    exit_order = db.session.query(Order).filter_by(trade_id=held.trade_id, purpose="exit").one()
    _placed_minutes_ago(db, 10, late, exit_order)
    notice = orders.waiting_notice(_reloaded(db, late))
    assert notice.startswith("Waiting for Tradewarden's worker since") and "it is not sent at all" in notice
    assert "It is sent as soon as the worker runs." in orders.waiting_notice(_reloaded(db, exit_order))

    second = WorkerProcess(worker_env, tmp_path / "worker2.log")
    try:
        late = wait_for(lambda: (o := _reloaded(db, late)).status == "failed" and o, timeout=60,
                        message="the late entry to be failed")
        exit_order = wait_for(lambda: (o := _reloaded(db, exit_order)).status == "filled" and o, timeout=60,
                              message="the late exit to be sent and filled")
    finally:
        second.stop()

    assert late.reject_reason.startswith("not sent: it waited 6") and "past the 300 s send deadline" in late.reject_reason
    assert late.submit_attempts == 0 and [event.to_status for event in late.events] == ["pending", "failed"]
    assert broker_order_count("late") == 0  # nothing reached the paper broker
    assert db.session.get(Trade, late.trade_id).status == "cancelled"
    assert exit_order.filled_quantity == Decimal("5") and db.session.get(Trade, held.trade_id).status == "closed"
    assert orders.waiting_notice(late) is None and orders.waiting_notice(exit_order) is None


def test_an_entry_inside_its_deadline_is_claimed_and_a_zero_deadline_never_fails_one(app, db, user, set_price):
    from utils import orders
    set_price("AAPL", "100")
    recent, _ = orders.place_order(user, {**MARKET_BUY, "quantity": "1"})
    _placed_minutes_ago(db, 4, recent)
    assert orders.claim_submission(recent.id) == 1  # 4 minutes: inside the default 5

    old, _ = orders.place_order(user, {**MARKET_BUY, "quantity": "1"})
    _placed_minutes_ago(db, 60 * 24, old)
    app.config["ORDERS_SEND_DEADLINE_SECONDS"] = 0
    assert orders.send_deadline(_reloaded(db, old)) is None
    assert orders.waiting_notice(_reloaded(db, old)).endswith("It is sent as soon as the worker runs.")
    assert orders.claim_submission(old.id) == 1


def _placed_minutes_ago(db, minutes: int, *placed) -> None:
    from models import Order
    from utils.dbtypes import utcnow
    back = utcnow() - timedelta(minutes=minutes)
    db.session.execute(update(Order).where(Order.id.in_([order.id for order in placed]))
                       .values(created_at=back, updated_at=back))
    db.session.commit()


def _reloaded(db, order):
    db.session.expire_all()
    return db.session.get(type(order), order.id)


def test_the_metrics_count_orders_waiting_for_the_worker_and_orders_unconfirmed(app, db, client, user, set_price):
    from models import Order
    from utils import orders
    set_price("AAPL", "100")
    waiting, fresh, unconfirmed, cancelling = (orders.place_order(user, {**MARKET_BUY, "quantity": "1"})[0]
                                               for _ in range(4))
    db.session.execute(update(Order).where(Order.id == unconfirmed.id).values(status="submitting", submit_attempts=2))
    db.session.execute(update(Order).where(Order.id == cancelling.id).values(status="pending_cancel"))
    db.session.commit()
    _placed_minutes_ago(db, 2, waiting, cancelling)  # the cancel, too, was asked for 2 minutes ago

    metrics = client.get("/health/metrics").get_data(as_text=True)

    assert 'orders_delayed{reason="waiting_for_worker"} 1.0' in metrics  # not the one placed a moment ago
    assert 'orders_delayed{reason="unconfirmed_by_broker"} 1.0' in metrics
    assert 'orders_delayed{reason="cancel_unconfirmed"} 1.0' in metrics
    assert orders.waiting_notice(_reloaded(db, cancelling)) == (
        "The paper broker has not confirmed the cancel yet; until it does, the order may still fill. "
        "Tradewarden asks again.")


def test_a_crashed_send_of_an_entry_is_not_made_again_past_its_deadline(db, celery_worker, schwab_order, schwab_port):
    """A worker killed after its claim and before its POST leaves the order `submitting` and Schwab without it.
    Recovery asks Schwab first; by then (at least the 5.5-minute send time limit later) the entry is past its
    send deadline, so Schwab's answer that it has no copy ends the order `failed` instead of a late send."""
    from utils import jobs
    from utils.dbtypes import utcnow
    server = fake_schwab.linked_server(schwab_port).start()
    state = server.server.app.config["state"]
    try:
        _placed_minutes_ago(db, 6, schwab_order)
        db.session.execute(update(type(schwab_order)).where(type(schwab_order).id == schwab_order.id).values(
            status="submitting", submit_attempts=1, send_outcome_unknown=True, updated_at=utcnow() - timedelta(hours=1)))
        db.session.commit()
        jobs.send_now(jobs.ORDERS_RECOVER)
        order = wait_for(lambda: (o := _reloaded(db, schwab_order)).status == "failed" and o, timeout=30,
                         message="the late resend to be given up")
    finally:
        server.stop()

    assert state.orders == {}  # asked, never sent
    assert order.reject_reason == ("the broker answered that it never got the order, and its send deadline has "
                                   "passed; not sent again")
    assert "GET /trader/v1/accounts/<account_hash>/orders" in state.api_calls
