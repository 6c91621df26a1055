"""`make run` (utils/local_run.py): secrets written once with mode 0600; everything starts, becomes
ready, serves the sign-in page, and one Ctrl-C (SIGINT) stops web, worker, beat and Redis."""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time
import urllib.error
import urllib.request

import psutil
import pytest

from tests.conftest import ROOT, free_port
from utils.config import load_config
from utils.local_run import ensure_env_file, port_answers

PROJECT_ENTRIES = ("main.py", "worker.py", "models.py", "Procfile", "utils", "routes", "templates", "static",
                   "migrations", "tests")


def test_env_file_is_written_once_private_and_valid(tmp_path):
    path = tmp_path / ".env"
    values = ensure_env_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = load_config(env=values)
    assert config["ENV_NAME"] == "development" and len(config["ENCRYPTION_KEYS"]) == 1
    first = path.read_text()
    assert ensure_env_file(path) == values and path.read_text() == first, "never regenerated"


@pytest.fixture
def project_copy(tmp_path):
    """The project files in a scratch directory (so its .env and instance/ stay there), sharing the venv."""
    copy = tmp_path / "project"
    copy.mkdir()
    for entry in PROJECT_ENTRIES:
        source = ROOT / entry
        if source.is_dir():
            shutil.copytree(source, copy / entry, ignore=shutil.ignore_patterns("__pycache__", "*.db"))
        else:
            shutil.copy2(source, copy / entry)
    (copy / ".venv").symlink_to(ROOT / ".venv")
    return copy


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def wait_until_ready(url: str, process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "local_run exited early"
        try:
            if http_status(url) == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"{url} not ready within {seconds} s")


def descendants(process: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(process.pid).children(recursive=True)


def test_local_run_starts_everything_and_sigint_stops_everything(project_copy):
    port, redis_port = free_port(), free_port()
    env = {"PATH": os.environ["PATH"], "HOME": str(project_copy), "LANG": "C.UTF-8", "PORT": str(port),
           "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "WEB_CONCURRENCY": "1"}
    process = subprocess.Popen([str(project_copy / ".venv/bin/python"), "-m", "utils.local_run"], cwd=project_copy,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    started = []
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/health/ready", process)
        started = descendants(process)
        assert http_status(f"http://127.0.0.1:{port}/auth/login") == 200
        assert stat.S_IMODE((project_copy / ".env").stat().st_mode) == 0o600
        names = " ".join(" ".join(child.cmdline()) for child in started)
        assert "gunicorn" in names and "worker worker" in names and "worker beat" in names
        assert "redis-server" in names
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        process.wait(timeout=60)
        _, alive = psutil.wait_procs(started, timeout=30)
        assert alive == [], f"still running after Ctrl-C: {alive}"
        assert not port_answers("127.0.0.1", port) and not port_answers("127.0.0.1", redis_port)
    finally:
        leftovers = [child for child in started if child.is_running()]
        if process.poll() is None:
            leftovers.append(psutil.Process(process.pid))
        for leftover in leftovers:
            leftover.kill()
    output = process.stdout.read()
    assert f"open http://127.0.0.1:{port}" in output
