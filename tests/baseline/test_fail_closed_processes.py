"""The real web, worker, beat and release processes refuse to start without valid secrets (issue 2 item 2).

Each is started exactly as the Procfile does, from the repository root, with a scrubbed environment.
It must exit non-zero, and its stderr must carry one line naming the variable and no traceback.
"""
from __future__ import annotations

import subprocess
import time
import urllib.request

import pytest
from cryptography.fernet import Fernet

from tests.conftest import ROOT, free_port

VALID_SECRET = "v" * 48
EXIT_TIMEOUT_SECONDS = 60


def web_command() -> list[str]:
    return [str(ROOT / ".venv/bin/gunicorn"), "--config", "python:utils.gunicorn_conf", "main:create_app()"]


COMMANDS = {
    "web": web_command,
    "worker": lambda: [str(ROOT / ".venv/bin/celery"), "-A", "worker", "worker", "--loglevel", "INFO"],
    "beat": lambda: [str(ROOT / ".venv/bin/celery"), "-A", "worker", "beat", "--loglevel", "INFO"],
    "release": lambda: [str(ROOT / ".venv/bin/flask"), "--app", "main", "db", "upgrade"],
}

BROKEN_SETTINGS = {
    "secret key missing": ("SECRET_KEY", {"ENCRYPTION_KEYS": Fernet.generate_key().decode()}),
    "encryption keys malformed": ("ENCRYPTION_KEYS", {"SECRET_KEY": VALID_SECRET, "ENCRYPTION_KEYS": "not-a-key"}),
}


def scrubbed_env(tmp_path, **values) -> dict:
    """Only what a bare process needs, plus `values`; nothing inherited from the test run."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", "PORT": str(free_port()),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'unused.db'}", **values}


@pytest.mark.parametrize("process", sorted(COMMANDS))
@pytest.mark.parametrize("case", sorted(BROKEN_SETTINGS))
def test_process_exits_with_one_line_naming_the_bad_variable(process, case, tmp_path):
    variable, values = BROKEN_SETTINGS[case]
    result = subprocess.run(COMMANDS[process](), cwd=ROOT, env=scrubbed_env(tmp_path, **values),
                            capture_output=True, text=True, timeout=EXIT_TIMEOUT_SECONDS)
    assert result.returncode != 0
    naming = [line for line in result.stderr.splitlines() if variable in line]
    assert len(naming) == 1, result.stderr
    assert naming[0].startswith("tradewarden: configuration error:"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_web_process_starts_and_answers_when_the_configuration_is_valid(tmp_path, redis_server):
    """Control for the test above: the same command with valid settings serves /health/live."""
    env = scrubbed_env(tmp_path, SECRET_KEY=VALID_SECRET, ENCRYPTION_KEYS=Fernet.generate_key().decode(),
                       REDIS_URL=redis_server.url, TRADEWARDEN_ENV="test", WEB_CONCURRENCY="1")
    process = subprocess.Popen(web_command(), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert wait_for_status(f"http://127.0.0.1:{env['PORT']}/health/live", process) == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_for_status(url: str, process: subprocess.Popen, deadline_seconds: float = 60) -> int:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"web process exited: {process.stderr.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {deadline_seconds} s")
