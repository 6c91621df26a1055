"""Health checks behind the probes (DESIGN §7): liveness, readiness, start-up.

Each check returns a small `Check` (name, ok, message). Messages are fixed phrases: never an
exception text, a version, a URL or a secret, because probe bodies are public.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import redis
from flask import current_app
from sqlalchemy import text

from utils import crypto
from utils.dbtypes import iso_utc
from utils.extensions import db

log = logging.getLogger("tradewarden.health")

CHECK_TIMEOUT_SECONDS = 1.0
LAST_SWEEP_KEY = "stoploss:last_sweep"  # JSON written by the stop-loss sweep: {"finished_at": ISO 8601 UTC, ...}
ROOT = Path(__file__).resolve().parent.parent

# A stuck database call must not hold the probe: it runs here and the probe waits at most 1 s.
_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health")
_redis_clients: dict[str, redis.Redis] = {}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    message: str = "ok"


def readiness() -> tuple[bool, dict]:
    """Database and Redis reachable (each within 1 s); body names every check and the last sweep."""
    checks = [check_database(), check_redis()]
    body = _body(checks)
    body["stoploss_last_sweep"] = last_stoploss_sweep()
    return body["status"] == "ok", body


def startup() -> tuple[bool, dict]:
    """Configuration usable and the schema at the migration head."""
    body = _body([check_configuration(), check_schema_at_head()])
    return body["status"] == "ok", body


def _body(checks: list[Check]) -> dict:
    failing = [check.name for check in checks if not check.ok]
    return {"status": "fail" if failing else "ok", "failing": failing,
            "checks": {check.name: asdict(check) for check in checks}}


def check_database() -> Check:
    """`SELECT 1` on the configured database, abandoned after CHECK_TIMEOUT_SECONDS."""
    engine = db.engine

    def ping() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    return _timed("database", ping, "database unreachable")


def check_redis() -> Check:
    """PING the Redis server (Celery broker, cache and rate limits share it) with 1 s timeouts."""
    client = redis_client(current_app.config["REDIS_URL"])
    return _timed("redis", client.ping, "redis unreachable")


def _timed(name: str, probe, failure_message: str) -> Check:
    future = _executor.submit(probe)
    try:
        future.result(timeout=CHECK_TIMEOUT_SECONDS)
    except FutureTimeout:
        log.warning("health check %s timed out", name)
        return Check(name, False, f"{failure_message} (timeout)")
    except Exception as error:  # any failure of the dependency means "not ready"; the detail goes to the log only
        log.warning("health check %s failed: %s", name, type(error).__name__)
        return Check(name, False, failure_message)
    return Check(name, True)


def redis_client(url: str) -> redis.Redis:
    """A shared client for `url` whose connects and reads give up after 1 s."""
    if url not in _redis_clients:
        _redis_clients[url] = redis.Redis.from_url(url, socket_timeout=CHECK_TIMEOUT_SECONDS,
                                                   socket_connect_timeout=CHECK_TIMEOUT_SECONDS)
    return _redis_clients[url]


def last_stoploss_sweep() -> dict | None:
    """The stop-loss sweep's last run as recorded in the cache Redis, with its age; information only."""
    try:
        raw = redis_client(current_app.config["CACHE_REDIS_URL"]).get(LAST_SWEEP_KEY)
    except redis.RedisError:
        return None
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        finished_at = datetime.fromisoformat(record["finished_at"])
    except (ValueError, KeyError, TypeError):
        return {"status": "unreadable"}
    if finished_at.tzinfo is None:
        finished_at = finished_at.replace(tzinfo=timezone.utc)
    age = (datetime.now(timezone.utc) - finished_at).total_seconds()
    # Only when and how long ago: the sweep's counts cover every user's trades, and this probe needs no credential
    # (they are in /health/metrics, which METRICS_TOKEN can close).
    return {"finished_at": iso_utc(finished_at), "age_seconds": round(age, 1)}


def check_configuration() -> Check:
    """The secrets loaded at start-up are usable: signing key present, encryption keys round-trip."""
    config = current_app.config
    if len(config.get("SECRET_KEY") or "") < 32:
        return Check("configuration", False, "SECRET_KEY unusable")
    try:
        probe = "tradewarden-startup-probe"
        if crypto.decrypt(crypto.encrypt(probe)) != probe:
            return Check("configuration", False, "ENCRYPTION_KEYS unusable")
    except Exception:  # a broken key list must read as "not started", not as a 500
        return Check("configuration", False, "ENCRYPTION_KEYS unusable")
    return Check("configuration", True)


def check_schema_at_head() -> Check:
    """The database's alembic_version equals the head revision of migrations/."""
    try:
        expected = migration_heads()
        with db.engine.connect() as connection:
            current = {row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))}
    except Exception as error:  # missing table or unreachable database: not started yet
        log.warning("schema check failed: %s", type(error).__name__)
        return Check("schema", False, "schema not migrated")
    if current != expected:
        return Check("schema", False, "schema not at the migration head (run `flask db upgrade`)")
    return Check("schema", True)


def migration_heads() -> set[str]:
    """The head revision(s) of the migration scripts this code ships with."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    directory = Path(current_app.extensions["migrate"].directory)
    if not directory.is_absolute():
        directory = ROOT / directory
    config = Config()
    config.set_main_option("script_location", str(directory))
    return set(ScriptDirectory.from_config(config).get_heads())
