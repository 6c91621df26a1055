"""A real PostgreSQL for the tests that must run on it: the server TEST_DATABASE_URL points at, or a throwaway
cluster (initdb + postgres on a free loopback port) when PostgreSQL is installed, as `make test` installs it.

Each test asks for a database of its own with `new_database()`; as root the cluster runs as the `postgres`
user (PostgreSQL refuses to run as root).
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from sqlalchemy import make_url

USER = "tw"


def binaries() -> Path | None:
    """The directory of initdb and postgres: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        return Path(on_path).parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(debian[-1]).parent if debian else None


class PostgresServer:
    """A server we can create databases on; `url` is SQLAlchemy's URL of its maintenance database."""

    def __init__(self, url: str):
        self.url = make_url(url).set(drivername="postgresql+psycopg")

    def new_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        name = f"tw_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self._conninfo(self.url.database or "postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url.set(database=name).render_as_string(hide_password=False)

    def copy_of(self, url: str) -> str:
        """A fresh database copied from the one at `url` (nobody may be connected to it); returns its URL."""
        name = f"tw_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self._conninfo("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{make_url(url).database}"')
        return self.url.set(database=name).render_as_string(hide_password=False)

    def _conninfo(self, database: str) -> str:
        return self.url.set(drivername="postgresql", database=database).render_as_string(hide_password=False)

    def stop(self) -> None:
        """Nothing to stop for a server we did not start."""


class ThrowawayPostgres(PostgresServer):
    """initdb in a temporary directory and postgres on `port` (fsync off: test data need not survive)."""

    def __init__(self, port: int):
        super().__init__(f"postgresql://{USER}@127.0.0.1:{port}/postgres")
        self.port, self.process = port, None
        self.directory = Path(tempfile.mkdtemp(prefix="tw-postgres-"))

    def start(self) -> "ThrowawayPostgres":
        bin_dir, run_as = binaries(), self._run_as()
        data = self.directory / "data"
        subprocess.run([*run_as, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", USER, "--no-sync"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.process = subprocess.Popen(
            [*run_as, str(bin_dir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.directory),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def _run_as(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        shutil.chown(self.directory, "postgres")
        return ["runuser", "-u", "postgres", "--"]

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self._conninfo("postgres"), connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("postgres did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        shutil.rmtree(self.directory, ignore_errors=True)
