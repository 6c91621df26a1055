"""With PROMETHEUS_MULTIPROC_DIR set, /health/metrics of the real gunicorn web process sums every worker."""
from __future__ import annotations

import subprocess
import urllib.request

from cryptography.fernet import Fernet
from flask_migrate import upgrade

from main import create_app
from tests.baseline.test_fail_closed_processes import VALID_SECRET, scrubbed_env, wait_for_status, web_command
from tests.baseline.test_health import metric_value
from tests.conftest import ROOT, base_config

REQUESTS = 20


def test_metrics_are_merged_over_all_gunicorn_workers(tmp_path, redis_server):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "counter_99999.db").write_bytes(b"stale samples of a previous run")
    database = f"sqlite:///{tmp_path / 'web.db'}"
    with create_app(base_config(redis_server.url, database)).app_context():
        upgrade(directory=str(ROOT / "migrations"))
    env = scrubbed_env(tmp_path, SECRET_KEY=VALID_SECRET, ENCRYPTION_KEYS=Fernet.generate_key().decode(),
                       REDIS_URL=redis_server.url, DATABASE_URL=database, TRADEWARDEN_ENV="test",
                       WEB_CONCURRENCY="3", WEB_THREADS="1", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    process = subprocess.Popen(web_command(), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{env['PORT']}"
    try:
        wait_for_status(f"{base}/health/live", process)
        before = scrape(base)
        for _ in range(REQUESTS):
            urllib.request.urlopen(f"{base}/health/live", timeout=5).close()
        after = scrape(base)
    finally:
        process.terminate()
        process.wait(timeout=30)
    # Whichever worker answers the scrape, the sum covers every worker that served one of the requests.
    live = {"endpoint": "health.live", "method": "GET", "status": "200"}
    assert metric_value(after, "http_requests_total", **live) - metric_value(before, "http_requests_total", **live) \
        == REQUESTS
    assert len(list(metrics_dir.glob("counter_*.db"))) >= 1
    assert not (metrics_dir / "counter_99999.db").exists(), "stale samples are removed at start"


def scrape(base: str) -> str:
    with urllib.request.urlopen(f"{base}/health/metrics", timeout=5) as response:
        return response.read().decode()
