"""Shared fixtures: a real redis-server, a migrated SQLite database per test, the app, clients, factories.

Rules (DESIGN §8): real Redis and a real Celery worker, no fakes of our own code, and any socket to
a non-loopback address fails the test.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis as redis_lib
from cryptography.fernet import Fernet

from utils.local_run import free_port, redis_server_binary  # noqa: F401  (tests import free_port from here)

ROOT = Path(__file__).resolve().parent.parent
TEST_PASSWORD = "Correct-Horse-9-Battery"


# --- network guard ------------------------------------------------------------------------------

_real_connect = socket.socket.connect


def _is_loopback(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise AssertionError(f"test tried to connect to a non-loopback address: {address!r}")
    return _real_connect(self, address)


@pytest.fixture(scope="session", autouse=True)
def loopback_only():
    socket.socket.connect = _guarded_connect
    yield
    socket.socket.connect = _real_connect


# --- real redis-server --------------------------------------------------------------------------

class RedisServer:
    """A real redis-server on a free loopback port that tests may stop and start again."""

    def __init__(self, directory: Path):
        self.port, self.directory, self.process = free_port(), directory, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis_lib.Redis(port=self.port, socket_connect_timeout=0.2)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis_lib.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def flush(self) -> None:
        redis_lib.Redis(port=self.port).flushall()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    """The PostgreSQL of TEST_DATABASE_URL, else a throwaway cluster; skips where PostgreSQL is not installed
    (`make test` installs it)."""
    from tests.postgres_server import PostgresServer, ThrowawayPostgres, binaries
    if os.environ.get("TEST_DATABASE_URL"):
        server = PostgresServer(os.environ["TEST_DATABASE_URL"])
    elif binaries() is None:
        pytest.skip("PostgreSQL is not installed")
    else:
        server = ThrowawayPostgres(free_port()).start()
    yield server
    server.stop()


# --- configuration, migrated database, app ------------------------------------------------------

def base_config(redis_url: str, database_url: str, **extra) -> dict:
    return {
        "SECRET_KEY": "test-secret-key-" + "x" * 32,
        "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "TRADEWARDEN_ENV": "test",
        "MARKET_DATA_SOURCE": "manual",
        "TESTING": True,
        "MIGRATIONS_DIR": str(ROOT / "migrations"),
        **extra,
    }


# TEST_DATABASE=postgresql runs every test on PostgreSQL (a database per test, copied from a migrated
# template) instead of SQLite; tests that start the benchmark stack or the `make run` launcher still use SQLite.
ON_POSTGRESQL = os.environ.get("TEST_DATABASE", "sqlite") == "postgresql"


@pytest.fixture(scope="session")
def template_database(request, tmp_path_factory, redis_server):
    """A database migrated to head once per session (a SQLite file, or a PostgreSQL database's URL); each
    test gets a copy."""
    from flask_migrate import upgrade

    from main import create_app
    from utils.extensions import db
    if ON_POSTGRESQL:
        url = request.getfixturevalue("postgres_server").new_database()
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'template.db'}"
    app = create_app(base_config(redis_server.url, url))
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))
        db.engine.dispose()
    return url


@pytest.fixture
def database_url(tmp_path, template_database) -> str:
    return copy_of(template_database, tmp_path / "tradewarden.db")


def raw_sql(database_url: str, statement: str, **params) -> list[tuple]:
    """Run `statement` straight on the database at `database_url`, outside the app (to read what is stored,
    or to damage it on purpose), in its own committed transaction; the rows it returns."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement), params)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def copy_of(template_database: str, path: Path) -> str:
    """A fresh copy of the migrated template: a PostgreSQL database, or a SQLite file at `path`; its URL."""
    if ON_POSTGRESQL:
        from tests.postgres_server import PostgresServer
        return PostgresServer(template_database).copy_of(template_database)
    shutil.copy(template_database.removeprefix("sqlite:///"), path)
    return f"sqlite:///{path}"


@pytest.fixture
def app_config(redis_server, database_url, tmp_path) -> dict:
    """Override in a test module (or extend) to change settings before the app is built."""
    return base_config(redis_server.url, database_url, STORAGE_DIR=str(tmp_path / "files"))


@pytest.fixture
def app(app_config, redis_server):
    from main import create_app
    from utils.extensions import db as _db
    redis_server.flush()
    application = create_app(app_config)
    with application.app_context():
        _reset_process_wide_limiter_state()
        yield application
        _db.session.remove()
        _db.engine.dispose()


def _reset_process_wide_limiter_state() -> None:
    """Flask-Limiter keeps some state on its one process-wide object across `init_app` calls: "storage
    is down" and default limits from an earlier app's RATELIMIT_DEFAULT. A real process builds one app,
    so only tests need this: one test's outage or default limit must not leak into the next."""
    from utils.extensions import limiter
    limiter._storage_dead = False
    if not limiter_default_configured():
        limiter.limit_manager.set_default_limits([])


def limiter_default_configured() -> bool:
    from flask import current_app
    return bool(current_app.config.get("RATELIMIT_DEFAULT"))


@pytest.fixture
def db(app):
    from utils.extensions import db as _db
    return _db


@pytest.fixture
def client(app):
    return app.test_client()


# --- factories and sign-in ----------------------------------------------------------------------

@pytest.fixture
def make_user(db):
    """make_user(email=..., password=..., is_admin=False) → a committed User."""
    from utils import accounts
    counter = iter(range(1, 10_000))

    def factory(email: str | None = None, password: str = TEST_PASSWORD, is_admin: bool = False):
        email = email or f"user{next(counter)}@example.com"
        user = accounts.ensure_admin(email, password) if is_admin else accounts.register(email, password)
        db.session.commit()
        return user

    return factory


@pytest.fixture
def user(make_user):
    return make_user()


def csrf_token_from(html: str) -> str:
    import re
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html) or \
        re.search(r'value="([^"]+)"[^>]*name="csrf_token"', html)
    assert match, "page has no CSRF token"
    return match.group(1)


@pytest.fixture
def login(client):
    """login(user, password=TEST_PASSWORD, remember=False) signs the test client in through the form."""

    def sign_in(user, password: str = TEST_PASSWORD, remember: bool = False, test_client=None):
        browser = test_client or client
        page = browser.get("/auth/login")
        data = {"email": user.email, "password": password, "csrf_token": csrf_token_from(page.get_data(as_text=True))}
        if remember:
            data["remember"] = "y"
        response = browser.post("/auth/login", data=data)
        assert response.status_code == 302, response.get_data(as_text=True)[:500]
        return response

    return sign_in


# --- a real Celery worker -----------------------------------------------------------------------

@pytest.fixture(scope="session", autouse=True)
def worker_tasks(redis_server, tmp_path_factory):
    """Import worker.py once so its shared tasks register on every Celery app (the per-test ones too).

    worker.py builds its own app from the environment at import, so it gets a throwaway configuration.
    """
    scratch = tmp_path_factory.mktemp("worker-import")
    settings = base_config(redis_server.url, f"sqlite:///{scratch / 'unused.db'}")
    saved = dict(os.environ)
    os.environ.update({key: str(value) for key, value in settings.items() if isinstance(value, str)})
    try:
        import worker  # noqa: F401
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def celery_worker(app):
    """A real Celery worker (threads pool) consuming every queue from the test Redis."""
    from celery.contrib.testing.worker import start_worker
    celery_app = app.extensions["celery"]
    with start_worker(celery_app, pool="threads", concurrency=4, perform_ping_check=False,
                      loglevel="WARNING", shutdown_timeout=20) as worker:
        yield worker


# --- waiting on the worker and setting prices ------------------------------------------------------

def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, message: str = "condition"):
    """Poll `predicate` until it returns a truthy value (returned) or `timeout` seconds pass (then fail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}")


@pytest.fixture
def set_price(db):
    """set_price("AAPL", "100") sets a manual price (MARKET_DATA_SOURCE=manual) and commits, as the CLI and
    the admin API do; the worker then matches resting paper orders of that symbol."""
    from utils import market_data

    def setter(symbol: str, price: str) -> None:
        market_data.set_manual_price(symbol, price)
        db.session.commit()

    return setter


def statements_sent(db, action) -> list[tuple[str, object, object]]:
    """(SQL, parameters, execution context) of each statement `action()` sends to the database driver."""
    from sqlalchemy import event
    sent = []

    def remember(_conn, _cursor, statement, parameters, context, _executemany):
        sent.append((statement, parameters, context))

    event.listen(db.engine, "before_cursor_execute", remember)
    try:
        action()
    finally:
        event.remove(db.engine, "before_cursor_execute", remember)
    return sent


def execute_in_process(db, order_id):
    """What the worker's orders.execute does, step by step, here (for tests that must not race a worker)."""
    from utils import orders
    orders.claim_submission(order_id)
    db.session.commit()
    answer = orders.send_claimed(order_id)
    db.session.commit()
    orders.record_answer(order_id, answer)
    db.session.commit()


def sent_order(db, user_id: int, connection_id: int, **columns):
    """An entry order (`columns` over a 1-share AAPL market buy) with its pending trade, sent through the
    order service as the worker sends it (claim, send, record) and committed; returns the Order."""
    from models import Order
    from utils import trades
    values = {"client_order_id": f"sent-{time.time_ns()}", "symbol": "AAPL", "asset_type": "equity", "side": "buy",
              "instruction": "BUY", "order_type": "market", "quantity": "1", "time_in_force": "day", **columns}
    order = Order(user_id=user_id, broker_connection_id=connection_id, status="pending", purpose="entry", **values)
    db.session.add(order)
    db.session.flush()
    order.trade_id = trades.create_pending(order, "long")
    db.session.commit()
    execute_in_process(db, order.id)
    return order
