"""Real `celery -A worker beat` processes at a 1 s STOPLOSS_INTERVAL_SECONDS: the schedule drives the sweep,
and with two beats running (celery-redbeat) only one of them sends it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stoploss.conftest import fresh
from tests.conftest import ROOT, wait_for


@pytest.fixture
def app_config(app_config):
    return {**app_config, "STOPLOSS_BROKER_STOPS": "false", "STOPLOSS_INTERVAL_SECONDS": 1}


@pytest.fixture
def start_beat(app_config, tmp_path):
    """start_beat(name) runs `celery -A worker beat` against the test database and Redis; stopped at the end."""
    processes = []
    env = {**os.environ, **{key: str(value) for key, value in app_config.items() if isinstance(value, (str, int))
                            and not isinstance(value, bool)}}
    env.pop("TESTING", None)
    celery = Path(sys.executable).parent / "celery"

    def start(name: str) -> Path:
        log = tmp_path / f"{name}.log"
        processes.append(subprocess.Popen(
            [str(celery), "-A", "worker", "beat", "--loglevel", "INFO", "--schedule", str(tmp_path / name)],
            cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT))
        return log

    yield start
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def test_the_jobs_settings_use_redbeat():
    from utils.jobs import celery_settings
    settings = celery_settings({"REDIS_URL": "redis://127.0.0.1:1/0", "STOPLOSS_INTERVAL_SECONDS": 1})
    assert settings["beat_scheduler"] == "redbeat.RedBeatScheduler"
    import worker
    entry = worker.BEAT_SCHEDULE["stoploss-sweep"]
    assert entry["task"] == "stoploss.sweep" and entry["schedule"] == float(worker.flask_app.config[
        "STOPLOSS_INTERVAL_SECONDS"])


def test_two_beats_close_a_breach_once_and_only_one_schedules(db, app, celery_worker, open_trade, set_price,
                                                             exit_orders, start_beat):
    from models import Trade
    from utils import stoploss
    trade = open_trade("100", stop_loss_price="95")
    logs = [start_beat("beat-a"), start_beat("beat-b")]
    wait_for(lambda: stoploss.totals().get("sweeps", 0) >= 2, timeout=45, message="two scheduled sweeps")
    set_price("AAPL", "90")
    closed = wait_for(lambda: (row := fresh(db, Trade, trade.id)).status == "closed" and row, timeout=30,
                      message="the trade closed by a scheduled sweep")
    assert closed.close_reason == "stop_loss"
    wait_for(lambda: all(order.status == "filled" for order in exit_orders(trade.id)), message="exit filled")
    assert len(exit_orders(trade.id)) == 1
    texts = [log.read_text() for log in logs]
    assert all("beat: Starting" in text for text in texts), texts  # both beats run ...
    senders = [text for text in texts if "Sending due task stoploss-sweep" in text]
    assert len(senders) == 1, texts  # ... but only the lock holder schedules
