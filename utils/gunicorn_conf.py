"""gunicorn settings for the web process (`gunicorn --config python:utils.gunicorn_conf "main:create_app()"`).

gthread workers; the configuration is validated in the master before any worker starts, so a
missing secret stops the process with one line instead of a crash loop.
"""
import os

from utils.config import ConfigError, load_config

bind = f"0.0.0.0:{os.environ.get('PORT', '5000')}"
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
timeout = 30
graceful_timeout = 20
accesslog = None


def on_starting(server):
    try:
        load_config()
    except ConfigError as error:
        raise SystemExit(f"tradewarden: configuration error: {error}") from None


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid)
