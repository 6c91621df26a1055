"""SQLite writers take turns on the database's writers lock file (utils/sqlite_writers.py)."""
from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from utils.sqlite_writers import TurnTakingConnection, is_write, writers_lock_path

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def database(tmp_path) -> str:
    path = str(tmp_path / "turns.db")
    with sqlite3.connect(path) as setup:
        setup.execute("PRAGMA journal_mode = WAL")
        setup.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        setup.execute("INSERT INTO counter VALUES (1, 0)")
    return path


def connect(path: str, busy_timeout_s: float = 0) -> TurnTakingConnection:
    return sqlite3.connect(path, timeout=busy_timeout_s, factory=TurnTakingConnection, check_same_thread=False)


def turn_is_free(path: str) -> bool:
    """Whether another connection could take the writers turn right now (asked without waiting)."""
    probe = os.open(writers_lock_path(path), os.O_RDWR)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(probe)


INCREMENTER = textwrap.dedent("""
    import sqlite3, sys
    from utils.sqlite_writers import TurnTakingConnection
    connection = sqlite3.connect(sys.argv[1], timeout=0, factory=TurnTakingConnection)
    for _ in range(int(sys.argv[2])):
        connection.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
        connection.execute("SELECT n FROM counter").fetchone()  # the transaction stays open a little
        connection.commit()
""")


def test_writers_in_separate_processes_take_turns_without_sqlites_busy_handler(database):
    """With SQLite's busy timeout at zero a second writer fails at once ("database is locked") unless the
    writers lock makes it wait its turn: four processes of 300 increments each all succeed."""
    runs = [subprocess.Popen([sys.executable, "-c", INCREMENTER, database, "300"], cwd=ROOT,
                             stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [run.communicate(timeout=120)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0, 0], errors
    with sqlite3.connect(database) as check:
        assert check.execute("SELECT n FROM counter").fetchone()[0] == 1200


def test_the_turn_is_held_from_the_first_write_to_commit_or_rollback(database):
    connection = connect(database)
    connection.execute("SELECT n FROM counter").fetchall()
    assert turn_is_free(database)  # a read takes no turn
    connection.execute("UPDATE counter SET n = n + 1")
    assert not turn_is_free(database)
    connection.commit()
    assert turn_is_free(database)
    connection.execute("UPDATE counter SET n = n + 1")
    connection.rollback()
    assert turn_is_free(database)


def test_a_failed_write_keeps_the_turn_until_the_rollback(database):
    connection = connect(database)
    with pytest.raises(sqlite3.IntegrityError):
        connection.execute("INSERT INTO counter VALUES (1, 5)")
    assert not turn_is_free(database)
    connection.rollback()
    assert turn_is_free(database)


def test_reads_do_not_wait_for_a_writers_turn(database):
    writer, reader = connect(database), connect(database)
    writer.execute("UPDATE counter SET n = 41")
    seen = []
    read = threading.Thread(target=lambda: seen.append(reader.execute("SELECT n FROM counter").fetchone()[0]))
    read.start()
    read.join(timeout=10)
    assert seen == [0]  # the committed value, at once, while the writer still holds its turn
    writer.rollback()


def test_closing_a_connection_mid_transaction_gives_the_turn_back(database):
    connection = connect(database)
    connection.execute("UPDATE counter SET n = n + 1")
    connection.close()
    assert turn_is_free(database)


HOLDER = textwrap.dedent("""
    import sqlite3, sys, time
    from utils.sqlite_writers import TurnTakingConnection
    connection = sqlite3.connect(sys.argv[1], timeout=0, factory=TurnTakingConnection)
    connection.execute("UPDATE counter SET n = 99 WHERE id = 1")
    print("holding", flush=True)
    time.sleep(600)
""")


def test_a_writer_killed_while_holding_its_turn_does_not_block_the_others(database):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, database], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert not turn_is_free(database)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
    connection = connect(database, busy_timeout_s=10)
    connection.execute("UPDATE counter SET n = n + 1")
    connection.commit()
    assert connection.execute("SELECT n FROM counter").fetchone()[0] == 1  # the killed write never landed


@pytest.mark.parametrize(("statement", "writes"), [
    ("INSERT INTO t VALUES (1)", True), ("  update t set a = 1", True), ("DELETE FROM t", True),
    ("REPLACE INTO t VALUES (1)", True), ("SELECT * FROM t", False), ("PRAGMA journal_mode", False),
])
def test_write_statements_are_told_from_reads(statement, writes):
    assert is_write(statement) is writes


def test_the_app_uses_turn_taking_connections_for_a_sqlite_file(app, db):
    connection = db.session.connection().connection.dbapi_connection
    if db.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL has row locks of its own")
    assert isinstance(connection, TurnTakingConnection)
