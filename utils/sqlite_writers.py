"""SQLite writers take turns on a kernel file lock instead of SQLite's sleeping busy handler.

SQLite lets one connection write at a time. A second writer that finds the database locked is put to sleep
by SQLite's busy handler in growing steps (1, 2, 5, 10, 15, 20, 25 … ms) and then tries again, so under load
the write lock is often free while every waiter is still asleep: the cores idle and orders wait. Here each
connection takes an exclusive `flock` on `<database file>.writers` just before the first write of a
transaction (where SQLite itself takes its write lock) and lets go as soon as the transaction ends. The
kernel wakes a waiter the moment the lock is free, and SQLite never sees two writers at once.

- Only writes take a turn: reads never wait for one (in WAL mode readers do not block the writer).
- The kernel drops the lock of a process that ends, however it ends (SIGKILL included), so a crash never
  leaves it taken.
- A waiter waits as long as the writer before it takes. No writer of ours waits without a limit while it
  holds a turn (Redis locks have their wait limits, HTTP calls their timeouts), so no cycle of waiters can
  stand. Other programs writing to the file (a `sqlite3` shell) do not take turns: against them SQLite's
  busy timeout applies as before.

Used for file databases through `engine_options` (utils/config.py); PostgreSQL needs none of this.
"""
from __future__ import annotations

import fcntl
import os
import sqlite3

WRITE_STATEMENTS = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def is_write(statement: str) -> bool:
    """Whether `statement` is one before which sqlite3 opens a write transaction (INSERT, UPDATE, …)."""
    return statement.lstrip()[:7].upper().startswith(WRITE_STATEMENTS)


def writers_lock_path(database: str) -> str:
    return f"{database}.writers"


class TurnTakingConnection(sqlite3.Connection):
    """A sqlite3 connection whose write transactions take turns on the database's writers lock file.

    Passed as `sqlite3.connect(..., factory=TurnTakingConnection)`; its cursors take the turn before a
    write, and commit, rollback and close give it back."""

    def __init__(self, database, *args, **kwargs):
        super().__init__(database, *args, **kwargs)
        self._writers = os.open(writers_lock_path(os.fspath(database)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.writing = False

    def cursor(self, factory=None):
        return super().cursor(factory or TurnTakingCursor)

    # sqlite3's own shortcuts run their statement without calling the cursor's methods.
    def execute(self, statement, *args):
        return self.cursor().execute(statement, *args)

    def executemany(self, statement, *args):
        return self.cursor().executemany(statement, *args)

    def take_turn(self) -> None:
        """Wait until no other connection writes, then hold the turn until the transaction ends."""
        if not self.writing:
            fcntl.flock(self._writers, fcntl.LOCK_EX)
            self.writing = True

    def end_turn(self) -> None:
        if self.writing:
            self.writing = False
            fcntl.flock(self._writers, fcntl.LOCK_UN)

    def end_turn_outside_transaction(self) -> None:
        """Give the turn back when no transaction is open any more (a failed BEGIN, an autocommit write)."""
        if self.writing and not self.in_transaction:
            self.end_turn()

    def commit(self):
        try:
            super().commit()
        finally:
            self.end_turn()

    def rollback(self):
        try:
            super().rollback()
        finally:
            self.end_turn()

    def close(self):
        try:
            super().close()
        finally:
            self._release_file()

    def __del__(self):
        self._release_file()

    def _release_file(self) -> None:
        if getattr(self, "_writers", None) is not None:
            self.writing = False
            os.close(self._writers)  # closing the file also drops a lock still held on it
            self._writers = None


class TurnTakingCursor(sqlite3.Cursor):
    """Takes its connection's writers turn before a write statement."""

    def execute(self, statement, *args):
        return self._run(super().execute, statement, *args)

    def executemany(self, statement, *args):
        return self._run(super().executemany, statement, *args)

    def _run(self, run, statement, *args):
        if not is_write(statement):
            return run(statement, *args)
        self.connection.take_turn()
        try:
            return run(statement, *args)
        finally:
            self.connection.end_turn_outside_transaction()
