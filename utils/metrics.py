"""Prometheus metrics for the web process: requests by endpoint/method/status, latency, process.

With several gunicorn workers set PROMETHEUS_MULTIPROC_DIR (an empty, writable directory) before
start: every worker writes its samples there and `/health/metrics` merges them
(gunicorn_conf.child_exit marks dead workers). Without it, each process reports only itself.
"""
from __future__ import annotations

import hmac
import os
import time

from flask import current_app, g, has_app_context, request
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram,
                               ProcessCollector, generate_latest)
from prometheus_client.core import GaugeMetricFamily

REQUESTS = Counter("http_requests_total", "HTTP requests handled, by endpoint, method and status.",
                   ["endpoint", "method", "status"])
LATENCY = Histogram("http_request_duration_seconds", "Time spent handling an HTTP request.",
                    ["endpoint", "method"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))

_HOOKED = "tradewarden.metrics"


def init_app(app) -> None:
    """Time every request of `app` (idempotent)."""
    if app.extensions.get(_HOOKED):
        return
    app.extensions[_HOOKED] = True
    app.before_request(_start_timer)
    app.after_request(_observe)


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _observe(response):
    # The endpoint name (not the URL) keeps label cardinality bounded; unmatched URLs share one label.
    endpoint = request.endpoint or "unmatched"
    method = request.method if request.method in _KNOWN_METHODS else "other"
    REQUESTS.labels(endpoint, method, str(response.status_code)).inc()
    started = g.get("metrics_started")
    if started is not None:
        LATENCY.labels(endpoint, method).observe(time.perf_counter() - started)
    return response


_KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def scrape_allowed(authorization: str) -> bool:
    """Whether a scrape may read the metrics: any when METRICS_TOKEN is unset, else only one sending
    `Authorization: Bearer <METRICS_TOKEN>` (compared in constant time)."""
    from utils.api_auth import bearer_value
    token = current_app.config.get("METRICS_TOKEN") or ""
    if not token:
        return True
    presented = bearer_value(authorization)
    return presented is not None and hmac.compare_digest(presented.encode(), token.encode())


def exposition() -> tuple[bytes, str]:
    """The metrics text (merged over all workers in multiprocess mode) and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        ProcessCollector(registry=registry)  # this worker's process metrics
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    return text + _sweep_metrics(), CONTENT_TYPE_LATEST


class _SweepCollector:
    """The stop-loss sweep's last run as seen in Redis at scrape time (shared by every process)."""

    def collect(self):
        from utils.health import last_stoploss_sweep
        sweep = last_stoploss_sweep() or {}
        age = GaugeMetricFamily("stoploss_last_sweep_age_seconds",
                                "Seconds since the stop-loss sweep last finished (absent: never ran).")
        if "age_seconds" in sweep:
            age.add_metric([], sweep["age_seconds"])
        yield age


class _DelayedOrdersCollector:
    """Orders not at their broker yet beyond the normal time, counted in the database at scrape time."""

    def collect(self):
        from sqlalchemy.exc import SQLAlchemyError

        from utils import orders
        from utils.extensions import db
        if not has_app_context():
            return
        try:
            counts = orders.delayed_counts()
        except SQLAlchemyError:  # the database is down: /health/ready says so; the other metrics still show
            db.session.rollback()
            return
        family = GaugeMetricFamily("orders_delayed", "Orders delayed on their way to the broker, by reason: "
                                   "waiting_for_worker, unconfirmed_by_broker, cancel_unconfirmed.",
                                   labels=["reason"])
        for reason, count in counts.items():
            family.add_metric([reason], count)
        yield family


def _sweep_metrics() -> bytes:
    registry = CollectorRegistry()
    registry.register(_SweepCollector())
    registry.register(_DelayedOrdersCollector())
    from utils.stoploss import SweepCollector  # stop-loss engineer (issue 5): the stoploss_* metrics
    registry.register(SweepCollector())
    return generate_latest(registry)
