"""Database engine tuning (SQLite in WAL mode with a busy timeout, so web and workers can write together),
and `owned_row`, the one lookup of a user's row by an id from a request.

SQLite allows one writer at a time. Without a busy timeout a second writer fails at once with
"database is locked"; without WAL every reader blocks the writer. PostgreSQL needs none of this.
"""
from __future__ import annotations

from sqlalchemy import event, select

from utils.errors import NotFound
from utils.extensions import db

LARGEST_ROW_ID = 2**63 - 1  # a larger id cannot exist and would overflow the database integer

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


def owned_row(model, user, row_id, message: str, code: str = "not_found"):
    """The row of `model` with id `row_id` that belongs to `user`; NotFound(message) for a malformed or
    unknown id and for another user's row alike, so ids of other users cannot be told apart."""
    try:
        row_id = int(row_id)
    except (TypeError, ValueError):
        raise NotFound(message, code=code) from None
    row = None
    if 0 < row_id <= LARGEST_ROW_ID:
        row = db.session.scalar(select(model).where(model.id == row_id, model.user_id == user.id))
    if row is None:
        raise NotFound(message, code=code)
    return row
