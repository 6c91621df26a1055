"""Schemathesis against the real app under gunicorn: no 5xx, only documented statuses, bodies match schemas.

The run authenticates with an API key made directly in the test database. The fuzzer learns ids from
responses (it lists the keys), so the operations that revoke or rotate keys would revoke its own key
mid-run: they run in a second pass authenticated with an access token, which key revocation does not
touch. Everything else runs in the first pass with the API key.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, TEST_PASSWORD, base_config, free_port

CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,ignored_auth"
KEY_KILLING_OPERATIONS = ("revokeAllApiKeys", "revokeApiKey", "rotateApiKey")


@pytest.fixture
def fuzz_env(redis_server, database_url, tmp_path) -> dict:
    config = base_config(redis_server.url, database_url, STORAGE_DIR=str(tmp_path / "files"),
                         API_RATE_LIMIT="1000000/minute", WEB_CONCURRENCY="2", WEB_THREADS="8")
    return {**os.environ, **{key: str(value) for key, value in config.items()}}


def make_user_and_key(env: dict) -> str:
    """A user and an API key written straight into the test database (before the server starts)."""
    from main import create_app
    from utils import accounts, api_auth
    from utils.extensions import db
    config = {key: env[key] for key in ("SECRET_KEY", "ENCRYPTION_KEYS", "DATABASE_URL", "REDIS_URL",
                                        "TRADEWARDEN_ENV", "MARKET_DATA_SOURCE", "MIGRATIONS_DIR", "STORAGE_DIR")}
    app = create_app(config)
    with app.app_context():
        user = accounts.register("fuzzer@example.com", TEST_PASSWORD)
        _, secret = api_auth.create_api_key(user, "fuzz")
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return secret


@pytest.fixture
def server(fuzz_env, redis_server, tmp_path):
    redis_server.flush()  # no rate-limit counters left over from earlier tests
    secret = make_user_and_key(fuzz_env)
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "wb")
    process = subprocess.Popen(
        [str(ROOT / ".venv/bin/gunicorn"), "--config", "python:utils.gunicorn_conf", "-b", f"127.0.0.1:{port}",
         "main:create_app()"], cwd=ROOT, env=fuzz_env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/api/v1/openapi.json", process)
        yield base, secret, tmp_path / "gunicorn.log"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def wait_until_up(url: str, process, deadline_seconds: float = 60) -> None:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError("gunicorn exited during start-up")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError("gunicorn did not answer in time")


def schemathesis_command(base: str, secret: str, *filters: str, report_dir: Path) -> list[str]:
    # One worker per process: CPython 3.11.7 can crash in ast.parse (used by hypothesis to describe
    # lambdas) when two threads call it at once; parallelism comes from separate processes instead.
    return [str(ROOT / ".venv/bin/st"), "run", f"{base}/api/v1/openapi.json", "--checks", CHECKS,
            "--max-examples", "50", "--workers", "1", "--phases", "examples,coverage,fuzzing",
            "--header", f"Authorization: Bearer {secret}", "--seed", "20261123", "--no-color",
            "--request-timeout", "20", "--suppress-health-check", "all", "--warnings", "off",
            "--report", "junit", "--report-dir", str(report_dir), *filters]


def run_in_parallel(commands: list[list[str]]) -> list[tuple[int, str]]:
    """Run the schemathesis processes side by side; returns (exit code, output) of each."""
    env = {**os.environ, "NO_COLOR": "1"}
    processes = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for command in commands]
    return [(process.wait(timeout=600), process.stdout.read()) for process in processes]


def test_fuzzing_every_api_operation_finds_no_failures(server, tmp_path):
    base, secret, server_log = server
    issued = requests.post(f"{base}/api/v1/auth/token", json={"email": "fuzzer@example.com", "password": TEST_PASSWORD},
                           timeout=10)  # before the fuzzer spends the per-address token limit
    assert issued.status_code == 200, issued.text
    token = issued.json()["access_token"]
    no_key_killers = [arg for op in KEY_KILLING_OPERATIONS for arg in ("--exclude-operation-id", op)]
    first_half = ("--include-path-regex", "^/[a-m]")  # two processes share the operations (2 cores)
    second_half = ("--exclude-path-regex", "^/[a-m]")
    results = run_in_parallel([
        schemathesis_command(base, secret, *no_key_killers, *first_half, report_dir=tmp_path / "a-m"),
        schemathesis_command(base, secret, *no_key_killers, *second_half, report_dir=tmp_path / "n-z"),
    ])
    only_key_killers = [arg for op in KEY_KILLING_OPERATIONS for arg in ("--include-operation-id", op)]
    results += run_in_parallel([schemathesis_command(base, token, *only_key_killers, report_dir=tmp_path / "keys")])
    for code, output in results:
        if code != 0:
            sys.stderr.write(server_log.read_text(errors="replace")[-5000:])
        assert code == 0, output[-15000:]
