"""The beat task `brokers.refresh_tokens` runs on a real Celery worker and refreshes tokens nearing expiry."""
from __future__ import annotations

import os
import time

import pytest
from sqlalchemy import select

from models import BrokerConnection
from tests.conftest import base_config
from utils import jobs


@pytest.fixture(scope="module", autouse=True)
def worker_tasks(redis_server, tmp_path_factory):
    """Import worker.py once so its shared tasks register on every Celery app (the per-test ones too)."""
    scratch = tmp_path_factory.mktemp("brokers-worker-import")
    settings = base_config(redis_server.url, f"sqlite:///{scratch / 'unused.db'}")
    saved = dict(os.environ)
    os.environ.update({key: str(value) for key, value in settings.items() if isinstance(value, str)})
    try:
        import worker  # noqa: F401
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_beat_schedule_names_the_refresh_task():
    import worker
    assert worker.BEAT_SCHEDULE["brokers-refresh-tokens"]["task"] == jobs.BROKERS_REFRESH


def test_refresh_task_on_a_real_worker_refreshes_expiring_link(link, db, fakes, celery_worker):
    fakes["schwab"].control(access_ttl=400)  # inside the beat's 10-minute window
    link("schwab")
    fakes["schwab"].control(access_ttl=1800)
    jobs.send_now(jobs.BROKERS_REFRESH)
    deadline = time.monotonic() + 20
    while fakes["schwab"].counter("token_refresh_token") < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fakes["schwab"].counter("token_refresh_token") == 1
    while time.monotonic() < deadline:
        db.session.expire_all()
        connection = db.session.scalar(select(BrokerConnection))
        if connection.last_refreshed_at and connection.token_expires_at.timestamp() - time.time() > 1000:
            break
        time.sleep(0.1)
    assert connection.token_expires_at.timestamp() - time.time() > 1000
