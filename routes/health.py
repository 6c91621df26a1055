"""Health probes (no auth, no secrets): /health/live, /health/ready, /health/startup; and /health/metrics, which
asks for METRICS_TOKEN as a Bearer token when it is set.

Exempt from rate limits and CSRF: orchestrators poll them often and only ever GET.
"""
from flask import Blueprint, Response, jsonify, request

from utils import health, metrics
from utils.extensions import csrf, limiter

bp = Blueprint("health", __name__, url_prefix="/health")
limiter.exempt(bp)
csrf.exempt(bp)


@bp.record_once
def _time_every_request(state) -> None:
    metrics.init_app(state.app)


@bp.get("/live")
def live():
    """The process answers; touches no database, Redis or broker."""
    return _no_store(jsonify(status="ok"))


@bp.get("/ready")
def ready():
    ok, body = health.readiness()
    return _no_store(jsonify(body)), 200 if ok else 503


@bp.get("/startup")
def startup():
    ok, body = health.startup()
    return _no_store(jsonify(body)), 200 if ok else 503


@bp.get("/metrics")
def prometheus_metrics():
    if not metrics.scrape_allowed(request.headers.get("Authorization", "")):
        refused = jsonify(error={"code": "unauthorized", "details": {},
                                 "message": "The metrics need the scrape token (METRICS_TOKEN) as a Bearer token."})
        refused.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return _no_store(refused), 401
    payload, content_type = metrics.exposition()
    return _no_store(Response(payload, mimetype=None, content_type=content_type))


def _no_store(response):
    response.headers["Cache-Control"] = "no-store"
    return response
