"""Shared pieces of the fake broker apps: scripted failures and the /_fake control endpoints."""
from __future__ import annotations

import threading
from collections import deque

from flask import Response, jsonify, request


class FailureScript:
    """Statuses the next trading calls answer with (e.g. [429, 503]; 0 answers that call normally)."""

    def __init__(self):
        self.queue: deque = deque()
        self.lock = threading.Lock()

    def push(self, statuses) -> None:
        with self.lock:
            self.queue.extend(int(status) for status in statuses)

    def take(self) -> int | None:
        with self.lock:
            return (self.queue.popleft() or None) if self.queue else None


def mount_control(app, provider, state) -> None:
    """GET /_fake/stats and POST /_fake/control for tests and the demo."""

    @app.get("/_fake/stats")
    def fake_stats():
        return jsonify({**provider.stats(), "api_calls": dict(state.api_calls)})

    @app.post("/_fake/control")
    def fake_control():
        body = request.get_json(force=True) or {}
        state.failures.push(body.get("fail_next", []))
        if body.get("reset"):
            state.reset()
        return jsonify(provider.control(body))


def html_rate_limit() -> Response:
    return Response("<html><body><h1>Number of requests exceeded the rate limit set</h1></body></html>",
                    status=400, mimetype="text/html")
