"""gunicorn settings for the web process (`gunicorn --config python:utils.gunicorn_conf "main:create_app()"`).

gthread workers; the configuration is validated in the master before any worker starts, so a
missing secret stops the process with one line instead of a crash loop.
"""
import os
from pathlib import Path

from utils.config import ConfigError, load_config

bind = f"0.0.0.0:{os.environ.get('PORT', '5000')}"
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
timeout = 30
graceful_timeout = 20
accesslog = None


def on_starting(server):
    """Refuse to start (one line, exit 1) on bad configuration; start metrics from a clean directory."""
    try:
        load_config()
    except ConfigError as error:
        raise SystemExit(f"tradewarden: configuration error: {error}") from None
    _reset_metrics_directory()


def _reset_metrics_directory() -> None:
    # Samples of workers from a previous run would otherwise be merged into the new totals.
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        for stale in Path(directory).glob("*.db"):
            stale.unlink()


def child_exit(server, worker):
    """A dead worker's live gauges must not be reported any more (prometheus multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid)
