"""Database engine tuning: SQLite in WAL mode with a busy timeout, so web and workers can write together.

SQLite allows one writer at a time. Without a busy timeout a second writer fails at once with
"database is locked"; without WAL every reader blocks the writer. PostgreSQL needs none of this.
"""
from __future__ import annotations

from sqlalchemy import event

from utils.extensions import db

SQLITE_BUSY_TIMEOUT_MS = 30_000


def init_app(app) -> None:
    """Set a busy timeout (always) and WAL with synchronous=NORMAL (outside tests) on new SQLite connections.

    Tests keep the rollback journal: their fixtures copy a template database file, and in WAL mode
    the freshly migrated schema would still sit in the separate -wal file.
    """
    with app.app_context():
        engine = db.engine
    if engine.dialect.name != "sqlite":
        return
    listener = _tune_sqlite_for_tests if app.config.get("TESTING") else _tune_sqlite
    event.listen(engine, "connect", listener)


def _tune_sqlite_for_tests(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _tune_sqlite(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "memory":
            cursor.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode: a commit survives any process crash (SIGKILL included) and never corrupts;
        # only a power cut / kernel crash may lose the last commits. FULL would fsync on every commit,
        # and with SQLite's single writer that fsync serializes every process (PostgreSQL for production).
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()
