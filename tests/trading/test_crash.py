"""A worker SIGKILLed in the middle of an execution loses nothing and doubles nothing.

The middle is made reachable without mocks by ORDERS_EXECUTE_FAULT_DELAY_SECONDS, a documented
test-only setting that pauses the worker after the broker accepted the order and before our commit.
The test waits for the worker's log line announcing that pause, kills the whole worker (process
group, SIGKILL), starts a fresh worker without the delay and runs the recovery sweep: the order is
`submitting`, so the sweep asks the broker by client_order_id first and adopts the order it finds.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.conftest import ROOT, wait_for

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


def test_a_worker_killed_mid_execution_leaves_one_order_filled_once(app, db, user, set_price, worker_env, tmp_path,
                                                                     broker_order_count):
    from models import Fill, Order
    from utils import jobs, orders
    set_price("AAPL", "100")
    slow = WorkerProcess({**worker_env, "ORDERS_EXECUTE_FAULT_DELAY_SECONDS": "120"}, tmp_path / "worker1.log")
    try:
        order, _ = orders.place_order(user, {"symbol": "AAPL", "side": "buy", "quantity": "7", "type": "market",
                                             "client_order_id": "crash-1"})
        wait_for(lambda: "fault injection" in slow.output(), timeout=60, message="the worker to reach the pause")
    finally:
        slow.kill()
    db.session.expire_all()
    assert db.session.get(Order, order.id).status == "submitting"
    assert broker_order_count("crash-1") == 1  # the broker has it; we never recorded the answer

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
    order = db.session.get(Order, order.id)
    assert order.filled_quantity == Decimal("7")
    assert db.session.scalar(select(func.count(Fill.id)).where(Fill.order_id == order.id)) == len(order.fills) >= 1
    assert sum(fill.quantity for fill in order.fills) == Decimal("7")
    assert broker_order_count("crash-1") == 1
    assert any(event.detail and "send attempt 2" in event.detail for event in order.events)
    assert any(event.detail and "found by client_order_id" in (event.detail or "") for event in order.events)
