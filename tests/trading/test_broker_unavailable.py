"""BrokerUnavailable during `orders.execute` (issue 4 item 5): retried with exponential backoff, then `failed`;
a broker that comes back during the retries gets the order exactly once and it ends `filled`.

The broker is the real Schwab adapter pointed at a loopback port: nothing listens there at first, so the
POST is refused (→ BrokerUnavailable); for the recovery case the fake Schwab server is started on that
port after a few refused attempts.
"""
from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import pytest

from tests.conftest import free_port, wait_for
from tests.fakes import schwab as fake_schwab
from tests.trading.linked_schwab import RETRY_BASE, app_config, schwab_order, schwab_port  # noqa: F401

def execute(db, order) -> None:
    from utils import jobs
    jobs.enqueue_after_commit(jobs.ORDERS_EXECUTE, order.id)
    db.session.commit()


def reloaded(db, order):
    db.session.expire_all()
    return db.session.get(type(order), order.id)


def attempt_events(order) -> list:
    return [event for event in order.events if event.to_status == "submitting"]


def test_unreachable_broker_is_retried_with_growing_delays_then_the_order_fails(db, celery_worker, schwab_order):
    from worker import ORDER_SEND_MAX_RETRIES
    execute(db, schwab_order)

    order = wait_for(lambda: (o := reloaded(db, schwab_order)).status == "failed" and o, timeout=30,
                     message="the order to fail")

    attempts = attempt_events(order)
    assert len(attempts) == ORDER_SEND_MAX_RETRIES + 1  # the first send plus every retry
    assert [event.detail for event in attempts[1:]] == [f"send attempt {n}" for n in
                                                         range(2, ORDER_SEND_MAX_RETRIES + 2)]
    gaps = [(later.created_at - earlier.created_at).total_seconds() for earlier, later in zip(attempts, attempts[1:])]
    for attempt, gap in enumerate(gaps, start=1):  # countdowns are lower bounds: never earlier than the backoff
        assert gap >= float(RETRY_BASE) * 2 ** (attempt - 1) * 0.95, gaps
    assert order.submit_attempts == ORDER_SEND_MAX_RETRIES + 1
    assert "unreachable" in order.reject_reason and order.events[-1].to_status == "failed"
    assert order.fills == [] and order.broker_order_id is None


def test_broker_back_during_the_retries_fills_the_order_exactly_once(db, celery_worker, schwab_order, schwab_port):
    execute(db, schwab_order)
    wait_for(lambda: len(attempt_events(reloaded(db, schwab_order))) >= 3, timeout=20,
             message="three refused attempts")

    server = fake_schwab.linked_server(schwab_port).start()
    try:
        order = wait_for(lambda: (o := reloaded(db, schwab_order)).status == "filled" and o, timeout=30,
                         message="the order to fill")
        placed = server.server.app.config["state"].orders
    finally:
        server.stop()

    assert len(placed) == 1  # the broker received the order once
    assert order.filled_quantity == Decimal("10") and sum(fill.quantity for fill in order.fills) == Decimal("10")
    assert order.broker_order_id == str(next(iter(placed)))
    statuses = [event.to_status for event in order.events]
    assert statuses.count("submitted") == 1 and statuses.count("filled") == 1 and "failed" not in statuses
    assert len(attempt_events(order)) >= 3


def test_a_resend_adopts_the_order_schwab_already_took_instead_of_sending_it_twice(db, celery_worker, schwab_order,
                                                                                   schwab_port):
    """Schwab keeps no client order id. When the answer to the first send was lost (a crash, a read
    timeout), the resend must find the order Schwab already has by its details, skipping an identical
    order that is already recorded as one of ours, and adopt it rather than place a second one."""
    from models import Order
    from utils import orders
    server = fake_schwab.linked_server(schwab_port).start()
    try:
        broker = orders.broker_for(schwab_order)
        twin = broker.place_order(orders.broker_request(schwab_order))  # an earlier identical order, recorded
        db.session.add(Order(user_id=schwab_order.user_id, broker_connection_id=schwab_order.broker_connection_id,
                             client_order_id=f"twin-{time.time_ns()}", symbol="AAPL", asset_type="equity", side="buy",
                             instruction="BUY", order_type="market", quantity=Decimal("10"), time_in_force="day",
                             status="submitted", purpose="entry", broker_order_id=twin.broker_order_id))
        assert orders.claim_submission(schwab_order.id) == 1
        db.session.commit()
        lost = broker.place_order(orders.broker_request(schwab_order))  # Schwab took it; we never heard back

        from utils import jobs
        jobs.enqueue_after_commit(jobs.ORDERS_EXECUTE, schwab_order.id, 1)  # the retry of attempt 1
        db.session.commit()
        order = wait_for(lambda: (o := reloaded(db, schwab_order)).status == "filled" and o, timeout=30,
                         message="the order to fill")
        placed = server.server.app.config["state"].orders
    finally:
        server.stop()

    assert len(placed) == 2  # the recorded twin and the lost send; no third order
    assert order.broker_order_id == lost.broker_order_id != twin.broker_order_id
    assert order.filled_quantity == Decimal("10") and sum(fill.quantity for fill in order.fills) == Decimal("10")


def test_an_order_schwab_took_but_could_not_show_is_found_on_the_retry_not_rejected(db, celery_worker, schwab_order,
                                                                                    schwab_port):
    """The POST is accepted (201) but reading the order back fails (404): the order exists at Schwab, so
    it must not be recorded as rejected; the retry finds it and it fills, sent once."""
    server = fake_schwab.linked_server(schwab_port).start()
    try:
        server.server.app.config["state"].failures.push([0, 404])  # POST answered normally, the GET after it 404
        execute(db, schwab_order)
        order = wait_for(lambda: (o := reloaded(db, schwab_order)).status in ("filled", "rejected") and o,
                         timeout=30, message="the order to settle")
        placed = server.server.app.config["state"].orders
    finally:
        server.stop()

    assert order.status == "filled", order.reject_reason
    assert len(placed) == 1 and order.broker_order_id == str(next(iter(placed)))
    assert "rejected" not in [event.to_status for event in order.events]


def test_a_remote_order_counts_as_stuck_in_submitting_only_after_the_send_time_limit(db, schwab_order, make_user):
    """Recovery must not resend a Schwab order whose first send may still be running (up to the task time
    limit); a paper order (idempotent, same database) is picked up after ORDERS_STUCK_AFTER_SECONDS."""
    from sqlalchemy import update

    from models import Order
    from utils import jobs, orders
    from utils.brokers.paper import ensure_paper_connection
    from utils.dbtypes import utcnow
    paper_user = make_user(email="paper-stuck@example.com")
    paper = Order(user_id=paper_user.id, broker_connection_id=ensure_paper_connection(paper_user).id,
                  client_order_id=f"stuck-{time.time_ns()}", symbol="AAPL", asset_type="equity", side="buy",
                  instruction="BUY", order_type="market", quantity=Decimal("1"), time_in_force="day",
                  status="submitting", submit_attempts=1, purpose="entry")
    db.session.add(paper)
    db.session.execute(update(Order).where(Order.id == schwab_order.id).values(status="submitting", submit_attempts=1))
    db.session.commit()

    def stuck_after(seconds: float) -> set[int]:
        db.session.execute(update(Order).values(updated_at=utcnow() - timedelta(seconds=seconds)))
        db.session.commit()
        return {order_id for order_id, _attempt in orders.stuck_orders()[1]}

    assert stuck_after(60) == {paper.id}  # past ORDERS_STUCK_AFTER_SECONDS (30), inside the send time limit
    assert stuck_after(jobs.TASK_TIME_LIMIT_SECONDS + 31) == {paper.id, schwab_order.id}


def test_an_order_whose_send_may_have_reached_schwab_is_never_called_failed_and_is_adopted_later(
        db, celery_worker, schwab_order, schwab_port):
    """Schwab takes the order but its answer is lost (a 502 after it acted), and every lookup after that
    fails too. Calling the order `failed` would leave a live order at Schwab that nobody watches (and the
    user would place it again): it stays `submitting` until Schwab answers, then recovery adopts its copy."""
    server = fake_schwab.linked_server(schwab_port).start()
    state = server.server.app.config["state"]
    try:
        state.lost_answers.push([502])  # the POST is carried out, its answer lost
        state.failures.push([0] + [503] * 200)  # then nothing answers the lookups
        _send_until_kept_in_doubt(db, schwab_order)
        assert len(state.orders) == 1  # Schwab has it

        _recover_once_schwab_answers(db, schwab_order, state)
        order = wait_for(lambda: (o := reloaded(db, schwab_order)).status == "filled" and o, timeout=30,
                         message="the recovered order to fill")
    finally:
        server.stop()

    assert len(state.orders) == 1  # adopted, never sent twice
    assert order.broker_order_id == str(next(iter(state.orders)))
    assert order.filled_quantity == Decimal("10") and sum(fill.quantity for fill in order.fills) == Decimal("10")
    assert "failed" not in [event.to_status for event in order.events]


def test_an_order_in_doubt_that_the_broker_never_got_ends_failed_and_is_not_sent_hours_later(
        db, celery_worker, schwab_order, schwab_port):
    """Every send answered 5xx (so each may have arrived) but Schwab never took one. Once its sends have run
    out and Schwab answers the lookup without a copy, the order is `failed`: sending it then would reach a
    market that has moved on since the user placed it."""
    server = fake_schwab.linked_server(schwab_port).start()
    state = server.server.app.config["state"]
    try:
        state.failures.push([502] + [503] * 200)  # the POST refused with a 5xx, then nothing answers the lookups
        _send_until_kept_in_doubt(db, schwab_order)

        _recover_once_schwab_answers(db, schwab_order, state)
        order = wait_for(lambda: (o := reloaded(db, schwab_order)).status == "failed" and o, timeout=30,
                         message="the order to fail once Schwab says it never got it")
    finally:
        server.stop()

    assert state.orders == {}  # never sent again
    assert "never got the order" in order.reject_reason and not order.send_outcome_unknown


def _send_until_kept_in_doubt(db, order) -> None:
    """Execute the order and wait until its retries end with it kept `submitting` (a send may have arrived)."""
    execute(db, order)
    kept = wait_for(lambda: _kept_submitting(reloaded(db, order)), timeout=60,
                    message="the retries to end without calling the order failed")
    assert kept.status == "submitting" and kept.send_outcome_unknown


def _kept_submitting(order):
    return order if any("not called failed" in (event.detail or "") for event in order.events) else None


def _recover_once_schwab_answers(db, order, state) -> None:
    """Schwab answers again; run recovery as beat would once the send time limit has passed."""
    from sqlalchemy import update

    from models import Order
    from utils import jobs
    from utils.dbtypes import utcnow
    state.failures.queue.clear()
    db.session.execute(update(Order).where(Order.id == order.id).values(updated_at=utcnow() - timedelta(hours=1)))
    db.session.commit()
    jobs.send_now(jobs.ORDERS_RECOVER)


def test_a_send_refused_before_it_reached_the_broker_is_not_in_doubt():
    """Only a connection never made proves the broker did not get an order; a 429 was not acted on."""
    import requests

    from utils.brokers.transport import BrokerHttp
    from utils.errors import BrokerUnavailable
    refused = BrokerHttp(f"http://127.0.0.1:{free_port()}", dict, "Schwab")
    with pytest.raises(BrokerUnavailable) as raised:
        refused.request("POST", "/orders", json={})
    assert raised.value.may_have_arrived is False
    with pytest.raises(BrokerUnavailable) as raised:
        refused.request("GET", "/orders")
    assert raised.value.may_have_arrived is False
    assert isinstance(raised.value.__cause__, requests.ConnectionError)


def test_a_schwab_resend_waits_for_an_identical_order_in_flight_instead_of_adopting_it(db, celery_worker, schwab_order,
                                                                                         schwab_port):
    """Schwab keeps no client order id, so a resend looks for its lost order among the orders not yet recorded
    as ours. An identical order of ours whose send is in flight (Schwab has it, its answer is not recorded)
    must not be taken for it: the resend waits for that send's turn to end, then sends its own order."""
    from sqlalchemy import update

    from models import Order
    from utils import jobs, orders
    server = fake_schwab.linked_server(schwab_port).start()
    state = server.server.app.config["state"]
    try:
        twin = Order(user_id=schwab_order.user_id, broker_connection_id=schwab_order.broker_connection_id,
                     client_order_id=f"twin-{time.time_ns()}", symbol="AAPL", asset_type="equity", side="buy",
                     instruction="BUY", order_type="market", quantity=Decimal("10"), time_in_force="day",
                     status="submitting", submit_attempts=1, purpose="entry")
        db.session.add(twin)
        db.session.commit()
        turn = orders.send_lock(schwab_order.broker_connection_id)  # the twin's worker holds the turn...
        assert turn.acquire(blocking=False)
        in_flight = orders.broker_for(twin).place_order(orders.broker_request(twin))  # ...and Schwab has its order

        assert orders.claim_submission(schwab_order.id) == 1  # our first send never reached Schwab
        db.session.commit()
        jobs.enqueue_after_commit(jobs.ORDERS_EXECUTE, schwab_order.id, 1)  # its retry
        db.session.commit()
        time.sleep(2)
        assert reloaded(db, schwab_order).broker_order_id is None  # waiting, not adopting the twin's order

        db.session.execute(update(Order).where(Order.id == twin.id).values(
            status="submitted", broker_order_id=in_flight.broker_order_id))  # the twin's answer is recorded
        db.session.commit()
        turn.release()
        order = wait_for(lambda: (o := reloaded(db, schwab_order)).status == "filled" and o, timeout=30,
                         message="the resent order to fill")
    finally:
        server.stop()

    assert len(state.orders) == 2  # the twin's and ours
    assert order.broker_order_id != in_flight.broker_order_id
    assert order.filled_quantity == Decimal("10")
