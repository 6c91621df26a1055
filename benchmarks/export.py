"""Benchmark: stream 1,000,000 trades to CSV with our exporter, beside pandas `read_sql` + `to_csv` (issue 7 item 8).

Runs alone (`.venv/bin/python benchmarks/export.py`, a few minutes at most). It seeds a temporary SQLite
database (our schema, from models.py) with BENCH_TRADES trades (default 1,000,000) of one user, then runs
each contender in its own fresh Python process, which reports its export time (query to file closed)
and its own peak RSS (VmHWM from /proc/self/status: includes the interpreter and every import).
The contenders run interleaved BENCH_ROUNDS times (default 2); the figures are the fastest run of each
and the largest peak RSS.
Both read all trade columns of that user ordered by id; both files are checked for the same row count.
The last line printed is JSON with the figures and the targets.
"""
from __future__ import annotations

import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TRADES = int(os.environ.get("BENCH_TRADES", "1000000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
SEED_BATCH = 50_000
USER_ID = 1


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM belongs to the process's own memory map; getrusage's ru_maxrss would
    also carry the parent's size at fork time across exec, inflating a child's figure."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# --- seeding ----------------------------------------------------------------------------------------

def create_schema(path: Path) -> None:
    from sqlalchemy import create_engine

    import models  # noqa: F401  (registers every table on the metadata)
    from utils.extensions import db
    engine = create_engine(f"sqlite:///{path}")
    db.metadata.create_all(engine)
    engine.dispose()


def trade_rows(count: int):
    """Plausible trades, pre-formatted as SQLite stores them (decimal text, naive-UTC timestamps)."""
    rng = random.Random(7)
    start = datetime(2020, 1, 1)
    symbols = ["AAPL", "MSFT", "NVDA", "TSLA", "SPY", "QQQ", "AMZN", "BTC-USD"]
    for index in range(1, count + 1):
        opened = start + timedelta(minutes=index)
        entry = rng.randint(1000, 50000) / 100
        exit_price = round(entry * rng.uniform(0.9, 1.1), 2)
        quantity = rng.randint(1, 500)
        stamp = opened.strftime("%Y-%m-%d %H:%M:%S.000000")
        closed = (opened + timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S.000000")
        yield (index, USER_ID, 1, symbols[index % len(symbols)], "equity", "long" if index % 3 else "short",
               "closed", str(quantity), str(quantity), f"{entry:.2f}", f"{exit_price:.2f}", "1.25",
               f"{entry * 0.95:.2f}", None, None, None, "manual", f"{(exit_price - entry) * quantity:.2f}", 0,
               "swing" if index % 2 else "=breakout", stamp, closed, stamp, closed)


TRADE_COLUMNS = ("id, user_id, broker_connection_id, symbol, asset_type, side, status, quantity, exit_quantity, "
                 "entry_price, exit_price, fees, stop_loss_price, trailing_stop_percent, water_mark_price, "
                 "take_profit_price, close_reason, realized_pnl, quote_misses, strategy_tag, opened_at, closed_at, "
                 "created_at, updated_at")


def seed(path: Path, count: int) -> None:
    create_schema(path)
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode = OFF")
    connection.execute("PRAGMA synchronous = OFF")
    now = "2026-01-01 00:00:00.000000"
    connection.execute("INSERT INTO users (id, email, password_hash, is_admin, is_active, session_version, "
                       "failed_login_count, created_at, updated_at) VALUES (1, 'bench@example.test', 'x', 0, 1, 1, "
                       "0, ?, ?)", (now, now))
    connection.execute("INSERT INTO broker_connections (id, user_id, broker, status, created_at, updated_at) "
                       "VALUES (1, 1, 'paper', 'connected', ?, ?)", (now, now))
    placeholders = ", ".join("?" * len(TRADE_COLUMNS.split(",")))
    rows = trade_rows(count)
    while batch := [row for _, row in zip(range(SEED_BATCH), rows)]:
        connection.executemany(f"INSERT INTO trades ({TRADE_COLUMNS}) VALUES ({placeholders})", batch)
    connection.commit()
    connection.close()


# --- contenders (each runs in its own process) ------------------------------------------------------

def run_ours(database: str, output: str) -> dict:
    from sqlalchemy import create_engine

    from models import ExportFormat
    from utils import exports
    engine = create_engine(f"sqlite:///{database}")
    started, cpu = time.perf_counter(), time.process_time()
    with engine.connect() as connection, open(output, "wb") as sink:
        plan = exports.ExportPlan(user_id=USER_ID, format=ExportFormat.CSV)
        for chunk in exports.stream(connection, plan):
            sink.write(chunk)
    return {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}


def run_pandas(database: str, output: str) -> dict:
    import pandas
    from sqlalchemy import create_engine
    engine = create_engine(f"sqlite:///{database}")
    started, cpu = time.perf_counter(), time.process_time()
    frame = pandas.read_sql(f"SELECT * FROM trades WHERE user_id = {USER_ID} ORDER BY id", engine)
    frame.to_csv(output, index=False)
    return {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}


def contender(name: str, database: Path, output: Path) -> dict:
    completed = subprocess.run([sys.executable, __file__, "--run", name, str(database), str(output)],
                               check=True, capture_output=True, text=True)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    with output.open("rb") as written:
        result["rows"] = sum(1 for _ in written) - 1
    return result


def best_of(runs: list[dict]) -> dict:
    """The fastest run's times (other load on the machine only ever adds time) and the largest peak RSS."""
    return {"seconds": min(run["seconds"] for run in runs), "cpu_seconds": min(run["cpu_seconds"] for run in runs),
            "peak_rss_mb": max(run["peak_rss_mb"] for run in runs), "rows": min(run["rows"] for run in runs)}


def main() -> None:
    runs = {"ours": [], "pandas": []}
    with tempfile.TemporaryDirectory(prefix="tw-export-bench-") as scratch:
        database = Path(scratch) / "bench.db"
        started = time.perf_counter()
        seed(database, TRADES)
        print(f"seeded {TRADES} trades in {time.perf_counter() - started:.1f}s", flush=True)
        for _round in range(ROUNDS):  # interleaved, so a burst of outside load hurts both alike
            for name in runs:
                runs[name].append(contender(name, database, Path(scratch) / f"{name}.csv"))
                print(f"{name}: {runs[name][-1]}", flush=True)
    ours, theirs = best_of(runs["ours"]), best_of(runs["pandas"])
    if ours["rows"] != TRADES or theirs["rows"] != TRADES:
        raise SystemExit(f"row counts differ: ours {ours['rows']}, pandas {theirs['rows']}, expected {TRADES}")
    figures = {"seconds": round(ours["seconds"], 2), "pandas_seconds": round(theirs["seconds"], 2),
               "seconds_ratio_vs_pandas": round(ours["seconds"] / theirs["seconds"], 3),
               "cpu_seconds": round(ours["cpu_seconds"], 2), "pandas_cpu_seconds": round(theirs["cpu_seconds"], 2),
               "peak_rss_mb": round(ours["peak_rss_mb"], 1), "pandas_peak_rss_mb": round(theirs["peak_rss_mb"], 1),
               "memory_ratio_vs_pandas": round(ours["peak_rss_mb"] / theirs["peak_rss_mb"], 3)}
    print(json.dumps({"benchmark": "export", "figures": figures,
                      "targets": {"seconds_ratio_vs_pandas": "<= 1.0", "memory_ratio_vs_pandas": "<= 0.25",
                                  "peak_rss_mb": "<= 100"}}))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--run":
        result = {"ours": run_ours, "pandas": run_pandas}[sys.argv[2]](sys.argv[3], sys.argv[4])
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
    else:
        main()
