"""Benchmark: orders through the JSON API → Celery worker → paper broker fills (issue 4 item 11).

Runs alone (`.venv/bin/python benchmarks/orders.py`): starts its own redis-server, a migrated SQLite
database in a temporary directory, gunicorn for the API and a Celery worker with two processes.
A user and an API key are created directly in the database. Two phases:

1. throughput: N market orders sent by concurrent clients as fast as they go;
   orders/s = N / (first submit → last fill), with p50/p99 submit-to-filled latency;
2. paced: orders at 50 per second; p99 submit-to-filled latency;
3. burst: 10 orders of one user sent at once, until all are answered (`same_user_burst_ms`, median of 6).

The peer, measured first in the same run: the bare frame of benchmarks/floor/app.py (the same gunicorn and
Celery workers, one INSERT, one task and one UPDATE per order, nothing else) under the throughput phase's
load: `floor_orders_per_second`, and `share_of_floor` = orders_per_second / floor_orders_per_second.

The fill time is the order's `completed_at` in the database (same clock as the client). Last, one more
order is counted in-process: SQL statements in the API and in the worker (`sql_statements_api`/`_worker`),
and the API's CPU time per order for a user with no history, after 100,000 old orders and after 5,000 more
filled today (`api_cpu_ms_per_order`, `api_cpu_ms_per_order_after_100k_old_orders`,
`api_cpu_ms_per_order_after_5k_orders_today`: a placement should not slow down as an account ages, nor late
in a busy day).
The CPU the processes used in the throughput phase, per order (`web_cpu_ms_per_order`, `worker_cpu_ms_per_order`,
`redis_cpu_ms_per_order`; the bare frame's in all: `floor_cpu_ms_per_order`), tells where the time goes.
The web and worker processes run as `make run` starts them (utils/local_run.process_table: the Procfile's commands,
gunicorn sized by utils/gunicorn_conf.py), and the bare frame's with the same sizes and flags, so the figures are
those of what ships. BENCH_ORDERS, BENCH_CLIENTS, BENCH_USERS, BENCH_PACED_SECONDS, WEB_CONCURRENCY and
WEB_THREADS change the run;
BENCH_DATABASE_URL runs it against an empty database of your own (e.g. PostgreSQL) instead of a new SQLite file.
The last line printed is JSON with the figures and the targets.
"""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils import gunicorn_conf  # noqa: E402
from utils.local_run import free_port, process_table, redis_server_binary  # noqa: E402
BIN = Path(sys.executable).parent

THROUGHPUT_ORDERS = int(os.environ.get("BENCH_ORDERS", "1000"))
CLIENT_THREADS = int(os.environ.get("BENCH_CLIENTS", "16"))
BENCH_USERS = int(os.environ.get("BENCH_USERS", "8"))
PACED_RATE = 50
PACED_SECONDS = int(os.environ.get("BENCH_PACED_SECONDS", "10"))
SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "AMD"]
FILL_DEADLINE_SECONDS = 120


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


class Stack:
    """redis-server, a migrated SQLite file, gunicorn and a two-process Celery worker, all local."""

    def __init__(self, directory: Path):
        from cryptography.fernet import Fernet
        self.directory, self.processes = directory, {}  # name → process, in the order started
        self.redis_port, self.web_port = free_port(), free_port()
        self.env = {**os.environ, "SECRET_KEY": "bench-secret-" + "x" * 40,
                    "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
                    "DATABASE_URL": os.environ.get("BENCH_DATABASE_URL")
                    or f"sqlite:///{directory / 'bench.db'}",
                    "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0", "TRADEWARDEN_ENV": "development",
                    # Prices are set once, by hand: they must not count as stale however long a run takes.
                    "MARKET_DATA_SOURCE": "manual", "QUOTE_MAX_AGE_SECONDS": "86400",
                    "API_RATE_LIMIT": "10000000/minute",
                    "PORT": str(self.web_port),
                    # the web sizing as shipped, or as the WEB_CONCURRENCY and WEB_THREADS of this run say
                    "WEB_CONCURRENCY": str(gunicorn_conf.workers), "WEB_THREADS": str(gunicorn_conf.threads),
                    "STORAGE_DIR": str(directory / "files"), "PYTHONUNBUFFERED": "1"}
        os.environ.update({key: value for key, value in self.env.items() if key not in ("PORT",)})

    def start(self) -> None:
        self._start_redis()
        subprocess.run([str(BIN / "flask"), "--app", "main", "db", "upgrade"], cwd=ROOT, env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        commands = process_table(self.env, fake_brokers=False)  # as `make run` starts them (the Procfile's)
        self._spawn("web", shlex.split(commands["web"]))
        self._spawn("worker", shlex.split(commands["worker"]))
        wait_port(self.web_port)

    def _start_redis(self) -> None:
        self._spawn("redis", [redis_server_binary(), "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(self.directory)])
        wait_port(self.redis_port)

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.directory / f"{name}.log", "wb")
        self.processes[name] = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=log,
                                                start_new_session=True)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user and system) used so far by each process started, with its children, by name."""
        return {name: process_tree_cpu_seconds(process.pid) for name, process in self.processes.items()}

    def stop(self) -> None:
        for process in reversed(self.processes.values()):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) used so far by process `pid` and its living children."""
    import psutil
    root = psutil.Process(pid)
    total = 0.0
    for process in (root, *root.children(recursive=True)):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def cpu_ms_per_order(before: dict[str, float], after: dict[str, float], orders: int) -> dict[str, float]:
    """Milliseconds of CPU per order of each named process (and its children) between two `cpu_seconds`."""
    return {name: round((after[name] - before[name]) / max(orders, 1) * 1000, 2) for name in after}


class FloorStack(Stack):
    """The peer: the bare frame of benchmarks/floor/app.py (one INSERT, one Celery task, one UPDATE per order)
    on its own redis-server and SQLite file, with the same gunicorn workers and Celery worker processes."""

    def start(self) -> None:
        self._start_redis()
        self.env.update(FLOOR_DATABASE=str(self.directory / "floor.db"), FLOOR_REDIS_URL=self.env["REDIS_URL"])
        os.environ.update(FLOOR_DATABASE=self.env["FLOOR_DATABASE"], FLOOR_REDIS_URL=self.env["FLOOR_REDIS_URL"])
        from benchmarks.floor import app as floor
        floor.create_schema()
        self.database = floor.engine
        self._spawn("floor-web", [str(BIN / "gunicorn"), "-k", "gthread", "-w", self.env["WEB_CONCURRENCY"],
                                  "--threads", self.env["WEB_THREADS"], "--bind", f"127.0.0.1:{self.web_port}",
                                  "benchmarks.floor.app:app"])
        self._spawn("floor-worker", [str(BIN / "celery"), "-A", "benchmarks.floor.app:celery", "worker", "--loglevel",
                                     "INFO", "--queues", "orders", "--concurrency", "2"])
        wait_port(self.web_port)


def floor_figures(directory: Path) -> dict:
    """Orders/s of the bare frame under the throughput phase's load (same clients, same order count), and the
    CPU its processes used per order."""
    from sqlalchemy import text
    stack = FloorStack(directory)
    try:
        stack.start()
        client = Client(f"http://127.0.0.1:{stack.web_port}", ["floor"])
        for number in range(20):
            client.place(number, "warmup")
        started, cpu_before = time.time(), stack.cpu_seconds()
        with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
            list(pool.map(lambda n: client.place(n, "tp"), range(THROUGHPUT_ORDERS)))
        deadline = time.monotonic() + FILL_DEADLINE_SECONDS
        with stack.database.connect() as connection:
            while time.monotonic() < deadline and connection.execute(
                    text("SELECT count(*) FROM orders WHERE status = 'pending'")).scalar():
                time.sleep(0.1)
            finished, filled = connection.execute(text("SELECT max(completed_at), count(*) FROM orders "
                                                       "WHERE status = 'filled' AND client_order_id LIKE 'tp-%'")).one()
        cpu = cpu_ms_per_order(cpu_before, stack.cpu_seconds(), filled)
        print(f"floor (bare frame): {filled} of {THROUGHPUT_ORDERS} filled after {finished - started:.2f}s; "
              f"CPU ms per order {cpu}")
        return {"floor_orders_per_second": round(filled / (finished - started), 1),
                "floor_cpu_ms_per_order": round(sum(cpu.values()), 2)}
    finally:
        stack.stop()


def prepare_accounts(app, count: int) -> list[str]:
    """`count` users with generous risk limits and an API key each (the first is an admin, to set the
    manual prices); returns the keys. Orders of one user are serialized by the per-user risk lock, so
    the load is spread over several users, as on a multi-user platform."""
    return [prepare_account(app, number) for number in range(count)]


def prepare_account(app, number: int) -> str:
    """User `bench{number}` (an admin when 0) with generous risk limits; returns its new API key."""
    from models import ApiKey, UserSettings
    from utils import accounts, api_auth
    from utils.extensions import db
    with app.app_context():
        email, password = f"bench{number}@example.com", "Bench-Horse-9-Battery-Staple"
        user = accounts.ensure_admin(email, password) if number == 0 else accounts.register(email, password)
        db.session.flush()
        settings = db.session.query(UserSettings).filter_by(user_id=user.id).one()
        settings.daily_trade_limit = 100_000
        settings.daily_notional_limit = 10 ** 11
        settings.max_concentration_pct = 100
        settings.max_risk_per_trade_pct = 100
        secret = api_auth.generate_key_secret()
        db.session.add(ApiKey(user_id=user.id, name="bench", prefix=api_auth.display_prefix(secret),
                              secret_hash=api_auth.hash_secret(secret),
                              expires_at=datetime.now(timezone.utc) + timedelta(days=1)))
        db.session.commit()
    return secret


def set_prices(base_url: str, key: str) -> None:
    for symbol in SYMBOLS:
        response = requests.put(f"{base_url}/api/v1/admin/prices/{symbol}", json={"price": "10.00"},
                                headers={"Authorization": f"Bearer {key}"}, timeout=10)
        if response.status_code >= 300:
            raise RuntimeError(f"setting the price of {symbol} failed: {response.status_code} {response.text[:200]}")


class Client:
    """Places orders and remembers when each was sent (wall clock, to compare with completed_at).

    One keep-alive http.client connection per client thread: the load generator shares the two cores with
    what it measures, and http.client costs a fraction of the CPU `requests` does per call."""

    def __init__(self, base_url: str, keys: list[str]):
        self.host, self.port = base_url.removeprefix("http://").split(":")
        self.keys = keys
        self.local = threading.local()
        self.sent: dict[str, float] = {}
        self.errors: list[str] = []

    def connection(self) -> http.client.HTTPConnection:
        if not hasattr(self.local, "connection"):
            self.local.connection = http.client.HTTPConnection(self.host, int(self.port), timeout=30)
        return self.local.connection

    def post(self, body: dict, key: str) -> tuple[int, bytes]:
        payload = json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for attempt in (1, 2):  # a keep-alive connection the server closed meanwhile is opened again once
            try:
                self.connection().request("POST", "/api/v1/orders", body=payload, headers=headers)
                response = self.connection().getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError):
                self.local.connection.close()
                del self.local.connection
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def place(self, number: int, prefix: str) -> None:
        client_order_id = f"{prefix}-{number}"
        body = {"symbol": SYMBOLS[number % len(SYMBOLS)], "side": "buy", "quantity": "1", "type": "market",
                "time_in_force": "day", "client_order_id": client_order_id}
        started = time.time()
        status, answer = self.post(body, self.keys[number % len(self.keys)])
        if status != 202:
            self.errors.append(f"{status} {answer[:200]!r}")
            return
        self.sent[client_order_id] = started


def fill_times(app, client_order_ids) -> dict[str, float]:
    from sqlalchemy import select

    from models import Order
    from utils.extensions import db
    with app.app_context():
        rows = db.session.execute(select(Order.client_order_id, Order.status, Order.completed_at).where(
            Order.client_order_id.in_(list(client_order_ids)))).all()
        db.session.remove()
    return {cid: completed.timestamp() for cid, status, completed in rows if status == "filled" and completed}


def wait_filled(app, client: Client, prefix: str) -> dict[str, float]:
    wanted = {cid for cid in client.sent if cid.startswith(prefix)}
    deadline = time.monotonic() + FILL_DEADLINE_SECONDS
    filled = {}
    while time.monotonic() < deadline:
        filled = fill_times(app, wanted)
        if len(filled) == len(wanted):
            break
        time.sleep(0.25)
    return filled


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def throughput_phase(app, client: Client) -> dict:
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
        list(pool.map(lambda n: client.place(n, "tp"), range(THROUGHPUT_ORDERS)))
    submitted = time.time()
    filled = wait_filled(app, client, "tp-")
    latencies = [(filled[cid] - client.sent[cid]) * 1000 for cid in filled]
    finished = max(filled.values()) if filled else time.time()
    print(f"throughput: {len(client.sent)} accepted, {len(filled)} filled, {len(client.errors)} errors; "
          f"submit phase {submitted - started:.2f}s ({len(client.sent) / (submitted - started):.0f} req/s), "
          f"all filled after {finished - started:.2f}s")
    return {"orders_per_second": round(len(filled) / (finished - started), 1) if filled else 0.0,
            "p50_latency_ms": round(statistics.median(latencies), 1) if latencies else None,
            "p99_latency_ms": round(percentile(latencies, 0.99), 1) if latencies else None}


def paced_phase(app, client: Client) -> float | None:
    total = PACED_RATE * PACED_SECONDS
    start = time.monotonic() + 0.2
    with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
        futures = []
        for number in range(total):
            delay = start + number / PACED_RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(client.place, number, "paced"))
        concurrent.futures.wait(futures)
    filled = wait_filled(app, client, "paced-")
    latencies = [(filled[cid] - client.sent[cid]) * 1000 for cid in filled]
    print(f"paced at {PACED_RATE}/s: {len(filled)} of {total} filled; "
          f"p50 {statistics.median(latencies):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms" if latencies
          else "paced: nothing filled")
    return round(percentile(latencies, 0.99), 1) if latencies else None


BURST_ORDERS, BURST_ROUNDS = 10, 6


def same_user_burst(base_url: str, key: str) -> float:
    """Milliseconds until BURST_ORDERS market orders of one user, sent at once (a script rebalancing a
    portfolio), are all answered: the per-user lock takes them one at a time, so this shows how long each
    waits for its turn. Median of BURST_ROUNDS rounds."""
    client = Client(base_url, [key])
    rounds = []
    with concurrent.futures.ThreadPoolExecutor(BURST_ORDERS) as pool:
        for number in range(BURST_ROUNDS):
            started = time.perf_counter()
            list(pool.map(lambda n: client.place(n, f"burst{number}"), range(BURST_ORDERS)))
            rounds.append((time.perf_counter() - started) * 1000)
            time.sleep(0.5)
    if client.errors:
        raise RuntimeError(f"burst orders refused: {client.errors[:3]}")
    print(f"{BURST_ORDERS} orders of one user at once, all answered after (ms): {[round(r) for r in rounds]}")
    return round(statistics.median(rounds), 1)


def in_process_api(redis_url: str, app=None):
    """A test client of the app whose order jobs go to an unused Redis database, so the running worker never
    takes them; and a function posting a 1-share market buy with a client_order_id through it."""
    client = (app or in_process_app(redis_url)).test_client()

    def post(key: str, client_order_id: str):
        response = client.post("/api/v1/orders", headers={"Authorization": f"Bearer {key}"}, json={
            "symbol": SYMBOLS[0], "side": "buy", "quantity": "1", "type": "market",
            "client_order_id": client_order_id})
        assert response.status_code == 202, response.get_data(as_text=True)
        return response

    return post


def in_process_app(redis_url: str):
    """The app for in_process_api: its order jobs go to an unused Redis database."""
    from main import create_app
    return create_app({"REDIS_URL": redis_url.rsplit("/", 1)[0] + "/5"})


def statements_per_order(redis_url: str, key: str) -> dict:
    """SQL statements one market order costs, counted in-process (a figure the machine's speed cannot blur):
    the API's POST /orders, then the worker's orders.execute. The order's job goes to an unused Redis
    database, so the running worker never takes it; the execution is run here instead."""
    from sqlalchemy import event

    import worker
    from utils.extensions import db
    counted: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        counted.append(statement)

    app = in_process_app(redis_url)
    post = in_process_api(redis_url, app)
    # Listened to on these two engines only: an engine with a listener sends every statement through SQLAlchemy's
    # execution from then on (utils.database._on_driver), and the CPU figures that follow use engines of their own.
    engines = []
    for flask_app in (app, worker.flask_app):
        with flask_app.app_context():
            engines.append(db.engine)

    def place(number: int) -> int:
        return post(key, f"count-{number}").get_json()["id"]

    worker.execute_order(place(0))  # warm: the key's cache, the connection pools
    for engine in engines:
        event.listen(engine, "before_cursor_execute", count)
    try:
        order_id = place(1)
        api = len(counted)
        counted.clear()
        worker.execute_order(order_id)
        return {"sql_statements_api": api, "sql_statements_worker": len(counted)}
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", count)


HISTORY_ORDERS = 100_000
DAY_ORDERS = 5_000


def placement_with_history(redis_url: str, app, email: str, key: str) -> dict:
    """CPU milliseconds of one POST /orders in-process, for a user with no history, again after HISTORY_ORDERS
    filled orders 40 days old, and again after DAY_ORDERS more filled today (as a script trading all day
    would have): a placement should cost the same after months of trading and late in a busy day. The jobs
    go to an unused Redis database, as in statements_per_order."""
    post = in_process_api(redis_url)

    def cpu_ms_per_placement(prefix: str, count: int = 60) -> float:
        started = time.process_time()
        for number in range(count):
            post(key, f"{prefix}-{number}")
        return (time.process_time() - started) / count * 1000

    cpu_ms_per_placement("history-warm", 10)
    fresh = cpu_ms_per_placement("history-none")
    insert_filled_orders(app, email, HISTORY_ORDERS, datetime.now(timezone.utc) - timedelta(days=40), "old")
    with_history = cpu_ms_per_placement("history-long")
    insert_filled_orders(app, email, DAY_ORDERS, datetime.now(timezone.utc), "today")
    late_in_day = cpu_ms_per_placement("history-day")
    return {"api_cpu_ms_per_order": round(fresh, 2),
            "api_cpu_ms_per_order_after_100k_old_orders": round(with_history, 2),
            "api_cpu_ms_per_order_after_5k_orders_today": round(late_in_day, 2)}


def insert_filled_orders(app, email: str, count: int, created_at: datetime, prefix: str) -> None:
    """`count` filled 1-share market buys of the user, placed and finished at `created_at`."""
    from sqlalchemy import insert, select

    from models import BrokerConnection, Order, User
    from utils.extensions import db
    with app.app_context():
        user_id = db.session.scalar(select(User.id).where(User.email == email))
        connection_id = db.session.scalar(select(BrokerConnection.id).where(BrokerConnection.user_id == user_id))
        db.session.execute(insert(Order), [
            {"user_id": user_id, "broker_connection_id": connection_id, "client_order_id": f"{prefix}-{number}",
             "symbol": SYMBOLS[0], "asset_type": "equity", "side": "buy", "instruction": "BUY",
             "order_type": "market", "quantity": 1, "filled_quantity": 1, "average_fill_price": 10,
             "time_in_force": "day", "status": "filled", "purpose": "entry", "created_at": created_at,
             "updated_at": created_at, "completed_at": created_at}
            for number in range(count)])
        db.session.commit()


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="tw-bench-orders-"))
    (directory / "floor").mkdir()
    floor = floor_figures(directory / "floor")
    stack = Stack(directory)
    try:
        stack.start()
        from main import create_app
        app = create_app()
        keys = prepare_accounts(app, BENCH_USERS)
        base_url = f"http://127.0.0.1:{stack.web_port}"
        set_prices(base_url, keys[0])
        client = Client(base_url, keys)
        for number in range(20):  # warm up connections, imports and caches
            client.place(number, "warmup")
        wait_filled(app, client, "warmup-")
        cpu_before = stack.cpu_seconds()
        figures = throughput_phase(app, client)
        accepted = sum(client_order_id.startswith("tp-") for client_order_id in client.sent)
        figures.update({f"{name}_cpu_ms_per_order": ms
                        for name, ms in cpu_ms_per_order(cpu_before, stack.cpu_seconds(), accepted).items()})
        time.sleep(1)
        figures["p99_latency_ms_at_50_per_s"] = paced_phase(app, client)
        figures["same_user_burst_ms"] = same_user_burst(base_url, keys[1])
        figures.update(statements_per_order(stack.env["REDIS_URL"], keys[0]))
        figures.update(placement_with_history(stack.env["REDIS_URL"], app, f"bench{BENCH_USERS}@example.com",
                                              prepare_account(app, BENCH_USERS)))
        figures.update(floor)
        figures["share_of_floor"] = round(figures["orders_per_second"] / floor["floor_orders_per_second"], 3)
        if client.errors:
            print(f"first errors: {client.errors[:3]}")
    finally:
        stack.stop()
        shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps({"benchmark": "orders", "figures": figures,
                      "targets": {"orders_per_second": ">= 200", "p99_latency_ms_at_50_per_s": "<= 250"}}))


if __name__ == "__main__":
    main()
