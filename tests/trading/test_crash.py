"""A worker SIGKILLed in the middle of an execution loses nothing and doubles nothing.

The middle is made reachable without mocks by ORDERS_EXECUTE_FAULT_DELAY_SECONDS, a documented
test-only setting that pauses the worker after the broker accepted the order and before its answer is
recorded. The tests wait for the worker's log line announcing that pause, kill the whole worker (process
group, SIGKILL), start a fresh worker without the delay and run the recovery sweep.

- At a remote broker (the fake Schwab) the claim was committed before the send, so the order is
  `submitting` and the broker has it: the sweep asks the broker first and adopts the order it finds.
- At the paper broker claim, send and answer are one transaction, so the kill undoes all three: the
  order is `pending` and the broker has nothing; the sweep queues it again and it is sent once.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from tests.conftest import ROOT, wait_for
from tests.fakes import schwab as fake_schwab
from tests.trading.linked_schwab import app_config, schwab_order, schwab_port  # noqa: F401

CELERY = str(Path(sys.executable).parent / "celery")


class WorkerProcess:
    """`celery -A worker worker` as a subprocess in its own process group, logging to a file."""

    def __init__(self, env: dict, log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [CELERY, "-A", "worker", "worker", "-Q", "orders,default", "-c", "1", "--loglevel", "INFO",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture
def worker_env(app_config):
    """The subprocess environment: the test's own configuration (same database, Redis and keys)."""
    env = {key: value for key, value in os.environ.items()}
    env.update({key: value for key, value in app_config.items() if isinstance(value, str)})
    env["ORDERS_STUCK_AFTER_SECONDS"] = "1"
    return env


def test_a_worker_killed_mid_execution_leaves_one_paper_order_filled_once(app, db, user, set_price, worker_env,
                                                                           tmp_path, broker_order_count):
    from models import Order, PaperOrder
    from utils import orders
    set_price("AAPL", "100")
    slow = WorkerProcess({**worker_env, "ORDERS_EXECUTE_FAULT_DELAY_SECONDS": "120"}, tmp_path / "worker1.log")
    try:
        order, _ = orders.place_order(user, {"symbol": "AAPL", "side": "buy", "quantity": "7", "type": "market",
                                             "client_order_id": "crash-1"})
        wait_for(lambda: "fault injection" in slow.output(), timeout=60, message="the worker to reach the pause")
        assert broker_order_count("crash-1") == 0  # the paper broker's side is not committed before ours
    finally:
        slow.kill()
    db.session.expire_all()
    assert db.session.get(Order, order.id).status == "pending"  # claim, send and answer were undone together
    assert broker_order_count("crash-1") == 0

    order = _recovered_until_filled(db, order, worker_env, tmp_path)
    _assert_filled_once(order, Decimal("7"))
    assert broker_order_count("crash-1") == 1
    assert db.session.scalar(select(func.count(PaperOrder.id)).where(PaperOrder.client_order_id == "crash-1")) == 1


def test_a_worker_killed_mid_execution_leaves_one_schwab_order_filled_once(app, db, schwab_order, schwab_port,
                                                                           worker_env, tmp_path):
    from models import Order
    from utils import orders
    server = fake_schwab.linked_server(schwab_port).start()
    try:
        placed = server.server.app.config["state"].orders
        _killed_after_the_send(db, schwab_order, worker_env, tmp_path)
        db.session.expire_all()
        assert db.session.get(Order, schwab_order.id).status == "submitting"
        assert len(placed) == 1  # Schwab has it; we never recorded its answer

        _as_after_the_send_time_limit(db, schwab_order)
        order = _recovered_until_filled(db, schwab_order, worker_env, tmp_path)
    finally:
        server.stop()
    _assert_filled_once(order, Decimal("10"))
    assert len(placed) == 1  # adopted, not sent again
    assert order.broker_order_id == str(next(iter(placed)))
    assert any(event.detail and "send attempt 2" in event.detail for event in order.events)
    assert any(event.detail and "found by client_order_id" in event.detail for event in order.events)
    assert orders.stuck_orders() == ([], [])


def _killed_after_the_send(db, order, worker_env, tmp_path) -> None:
    """Execute `order` in a worker that pauses after the broker accepted it, and SIGKILL that worker there."""
    from utils import jobs
    slow = WorkerProcess({**worker_env, "ORDERS_EXECUTE_FAULT_DELAY_SECONDS": "120"}, tmp_path / "worker1.log")
    try:
        jobs.enqueue_after_commit(jobs.ORDERS_EXECUTE, order.id)
        db.session.commit()
        wait_for(lambda: "fault injection" in slow.output(), timeout=60, message="the worker to reach the pause")
    finally:
        slow.kill()


def _as_after_the_send_time_limit(db, order) -> None:
    """What waiting out the task time limit and the killed worker's send lock would do: a remote order
    counts as stuck only once no send of it can still be running, and the dead worker's Schwab send turn
    lapses (SEND_LOCK_SECONDS). Done by moving the order's clock back and dropping the lapsed lock."""
    from datetime import timedelta

    from models import Order
    from utils import jobs, orders, risk
    from utils.dbtypes import utcnow
    db.session.execute(update(Order).where(Order.id == order.id).values(
        updated_at=utcnow() - timedelta(seconds=jobs.TASK_TIME_LIMIT_SECONDS + 60)))
    db.session.commit()
    risk.cache_redis().delete(orders.send_lock(order.broker_connection_id).name)


def _recovered_until_filled(db, order, worker_env, tmp_path):
    """Start a fresh worker and run the recovery sweep until the order is filled; the order reloaded."""
    from models import Order
    from utils import jobs
    fresh_worker = WorkerProcess(worker_env, tmp_path / "worker2.log")
    try:
        def filled():
            jobs.send_now(jobs.ORDERS_RECOVER)
            db.session.expire_all()
            return db.session.get(Order, order.id).status == "filled"
        wait_for(filled, timeout=60, interval=1.0, message="the recovered order to fill")
    finally:
        fresh_worker.stop()
    db.session.expire_all()
    return db.session.get(Order, order.id)


def _assert_filled_once(order, quantity: Decimal) -> None:
    from models import Fill
    from utils.extensions import db
    assert order.filled_quantity == quantity
    assert db.session.scalar(select(func.count(Fill.id)).where(Fill.order_id == order.id)) == len(order.fills) >= 1
    assert sum(fill.quantity for fill in order.fills) == quantity


def test_a_send_cut_off_by_a_crash_is_not_called_failed_while_schwab_answers_no_lookup(app, db, schwab_order,
                                                                                      schwab_port, worker_env,
                                                                                      tmp_path):
    """The killed worker's send reached Schwab, but nothing says so. If Schwab then answers none of the
    recovery's lookups until its retries run out, the order must stay `submitting` (Schwab may hold it),
    not be called `failed` beside a live order nobody watches; once Schwab answers, it is adopted."""
    server = fake_schwab.linked_server(schwab_port).start()
    state = server.server.app.config["state"]
    try:
        _killed_after_the_send(db, schwab_order, worker_env, tmp_path)
        assert len(state.orders) == 1  # Schwab has it; we never recorded its answer

        state.failures.push([503] * 500)  # from now on Schwab answers no lookup
        _as_after_the_send_time_limit(db, schwab_order)
        kept = _recovered_once_until_settled(db, schwab_order, worker_env, tmp_path)
        assert (kept.status, kept.send_outcome_unknown) == ("submitting", True)

        state.failures.queue.clear()
        _as_after_the_send_time_limit(db, schwab_order)
        order = _recovered_until_filled(db, schwab_order, worker_env, tmp_path)
    finally:
        server.stop()
    _assert_filled_once(order, Decimal("10"))
    assert len(state.orders) == 1 and order.broker_order_id == str(next(iter(state.orders)))


def _recovered_once_until_settled(db, order, worker_env, tmp_path):
    """One recovery sweep with a fresh worker, waiting until its retries end: the order `failed`, or kept
    `submitting` with the event saying the broker may have it. The order reloaded."""
    from models import Order
    from utils import jobs
    worker = WorkerProcess(worker_env, tmp_path / "worker-retries.log")
    try:
        jobs.send_now(jobs.ORDERS_RECOVER)

        def settled():
            db.session.expire_all()
            current = db.session.get(Order, order.id)
            kept = any("not called failed" in (event.detail or "") for event in current.events)
            return current if current.status == "failed" or kept else None
        return wait_for(settled, timeout=60, interval=0.5, message="the recovery's retries to end")
    finally:
        worker.stop()
