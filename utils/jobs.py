"""Background jobs: the Celery app bound to Flask, task names, and enqueue-after-commit (STYLE 2, 3, 7).

Task names are the contract between the web process, the worker and beat: every task is started
by name through `enqueue_after_commit`, so nothing imports `worker.py`.
"""
from __future__ import annotations

import redis as redis_lib
from celery import Celery, Task
from flask import current_app
from kombu import Queue
from kombu.transport import redis as kombu_redis
from sqlalchemy import event
from sqlalchemy.orm import Session

from utils.extensions import db

ORDERS_EXECUTE = "orders.execute"
ORDERS_SYNC = "orders.sync"
ORDERS_RECOVER = "orders.recover"
ORDERS_CANCEL = "orders.cancel"
TRADES_SETTLE_EXPIRED = "trades.settle_expired"
POSITIONS_CHECK = "positions.check"
MARKET_TICK = "market.tick"
MARKET_MATCH = "market.match"
STOPLOSS_SWEEP = "stoploss.sweep"
EXPORTS_BUILD = "exports.build"
EXPORTS_CLEANUP = "exports.cleanup"
BROKERS_REFRESH = "brokers.refresh_tokens"

QUEUE_FOR = {ORDERS_EXECUTE: "orders", ORDERS_SYNC: "orders", ORDERS_RECOVER: "orders", ORDERS_CANCEL: "orders",
             STOPLOSS_SWEEP: "orders", EXPORTS_BUILD: "exports"}
TASK_TIME_LIMIT_SECONDS = 300

_PENDING_KEY = "tradewarden_pending_jobs"


def init_app(app) -> Celery:
    """Create the Celery app whose tasks run inside this Flask app's context."""

    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(celery_settings(app.config))
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def celery_settings(config) -> dict:
    """Reliability settings: JSON, late acks, prefetch 1, a visibility timeout above every time limit."""
    return {
        "broker_url": config["REDIS_URL"],
        # Plain redis:// only: for rediss:// kombu's own resolution of the scheme sets up TLS.
        "broker_transport": "utils.jobs:RedisTransport" if config["REDIS_URL"].startswith("redis://") else None,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": TASK_TIME_LIMIT_SECONDS * 4},
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": TASK_TIME_LIMIT_SECONDS,
        "task_soft_time_limit": TASK_TIME_LIMIT_SECONDS - 30,
        "task_default_queue": "default",
        "task_queues": [Queue("orders"), Queue("default"), Queue("exports")],
        "task_routes": {name: {"queue": queue} for name, queue in QUEUE_FOR.items()},
        "timezone": "UTC",
        "enable_utc": True,
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "redbeat_redis_url": config["REDIS_URL"],
        "redbeat_lock_timeout": max(30, config.get("STOPLOSS_INTERVAL_SECONDS", 60) * 5),
        "beat_max_loop_interval": 1,
        "worker_hijack_root_logger": False,
    }


class RedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, keeping one client for its commands instead of building a new one for each.

    kombu makes a `redis.Redis` for every publish and every acknowledgement; building one fills its two tables
    of response callbacks anew, which cost more CPU than sending the command. A client is only a handle on the
    channel's thread-safe connection pool, so one serves them all (a new pool gets a new client)."""

    def _create_client(self, asynchronous=False):
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self.__dict__.get("_shared_client")
        if client is None or client.connection_pool is not self.pool:
            client = self.__dict__["_shared_client"] = super()._create_client()
        return client


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with `RedisChannel` (Celery's `broker_transport`; REDIS_URL is unchanged)."""

    Channel = RedisChannel


def enqueue_after_commit(task_name: str, *args, countdown: float | None = None,
                         unless_waiting: str | None = None) -> None:
    """Send `task_name(*args)` once the current database transaction commits (dropped on rollback).

    With `unless_waiting` (a key naming the work, see `waiting_task_starts`) the task is not sent while one
    sent under the same key is still waiting for a worker: that one does this one's work too. Checked after
    the commit, so the waiting task, which clears the key before it reads its work, sees what was committed."""
    pending = db.session.info.setdefault(_PENDING_KEY, [])
    pending.append((task_name, args, countdown, unless_waiting))


# How long a key of `enqueue_after_commit(unless_waiting=…)` holds back further sends: a task lost between the
# key and its send (the web process died) holds them back no longer than this.
WAITING_KEY_SECONDS = 30


def _first_waiting(key: str) -> bool:
    """Mark a task sent under `key` as waiting; False when one already is. Without Redis the task is sent: a
    task too many finds its work done, a task too few would leave it undone."""
    try:
        return bool(_waiting_keys().set(key, "1", nx=True, ex=WAITING_KEY_SECONDS))
    except redis_lib.RedisError:
        return True


def waiting_task_starts(key: str) -> None:
    """Called by a task sent under `key` before it reads its work: from now on a new send goes out again."""
    try:
        _waiting_keys().delete(key)
    except redis_lib.RedisError:  # the key expires after WAITING_KEY_SECONDS
        pass


def _waiting_keys() -> redis_lib.Redis:
    from utils.risk import cache_redis
    return cache_redis()


def send_now(task_name: str, *args, countdown: float | None = None) -> None:
    """Send a task immediately (for callers with nothing to commit, e.g. beat fan-out)."""
    current_app.extensions["celery"].send_task(task_name, args=list(args), countdown=countdown,
                                               queue=QUEUE_FOR.get(task_name, "default"))


@event.listens_for(Session, "after_commit")
def _send_pending(session) -> None:
    for task_name, args, countdown, unless_waiting in session.info.pop(_PENDING_KEY, []):
        if unless_waiting is None or _first_waiting(unless_waiting):
            _send_marked(task_name, args, countdown, unless_waiting)


def _send_marked(task_name: str, args: tuple, countdown: float | None, waiting_key: str | None) -> None:
    try:
        send_now(task_name, *args, countdown=countdown)
    except Exception:
        if waiting_key is not None:  # nothing is waiting under it after all
            waiting_task_starts(waiting_key)
        raise


@event.listens_for(Session, "after_rollback")
def _drop_pending(session) -> None:
    session.info.pop(_PENDING_KEY, None)
