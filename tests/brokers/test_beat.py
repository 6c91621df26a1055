"""The beat task `brokers.refresh_tokens` runs on a real Celery worker and refreshes tokens nearing expiry."""
from __future__ import annotations

import time

from sqlalchemy import select

from models import BrokerConnection
from utils import jobs


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
