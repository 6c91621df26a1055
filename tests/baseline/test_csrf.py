"""Every cookie-authenticated state-changing route refuses a request without a CSRF token (item 8).

The list of routes is not written down: the test walks `app.url_map`, so routes added later by any
feature are covered automatically. Only the JSON API blueprint (Bearer auth, no cookies) is exempt.
"""
from __future__ import annotations

import uuid

from werkzeug.routing import IntegerConverter, UUIDConverter

from models import AuditEvent

UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
PLAUSIBLE_STRINGS = {"broker": "paper", "symbol": "AAPL", "token": "t" * 43, "format": "csv"}


def plausible_value(name: str, converter):
    if isinstance(converter, IntegerConverter):
        return 1
    if isinstance(converter, UUIDConverter):
        return str(uuid.uuid4())
    items = getattr(converter, "items", None)  # werkzeug's `any(...)` converter
    if items:
        return sorted(items)[0]
    return PLAUSIBLE_STRINGS.get(name, "1")


def cookie_authenticated_unsafe_requests(app):
    """(endpoint, method, path) for every non-API rule that changes state."""
    adapter = app.url_map.bind("localhost")
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api.") or rule.endpoint == "static":
            continue
        values = {name: plausible_value(name, converter) for name, converter in rule._converters.items()}
        for method in sorted(set(rule.methods) & set(UNSAFE_METHODS)):
            yield rule.endpoint, method, adapter.build(rule.endpoint, values, method=method)


def test_every_unsafe_non_api_route_needs_a_csrf_token(app, signed_in_client):
    assert app.config.get("WTF_CSRF_ENABLED", True) is True
    requests = list(cookie_authenticated_unsafe_requests(app))
    assert ("settings.save_notification_token", "POST", "/settings/notification-token") in requests
    wrong = {}
    for endpoint, method, path in requests:
        response = signed_in_client.open(path, method=method, data={"anything": "1"},
                                         headers={"Accept": "application/json"})
        code = (response.get_json(silent=True) or {}).get("error", {}).get("code")
        if response.status_code != 400 or code != "csrf_failed":
            wrong[f"{method} {path} ({endpoint})"] = (response.status_code, code)
    assert wrong == {}, f"routes that accepted a request without a CSRF token: {wrong}"


def test_a_request_with_the_token_is_not_refused_for_csrf(app, signed_in_client):
    """Control: the same kind of request with a valid token gets past the CSRF check."""
    from tests.conftest import csrf_token_from
    token = csrf_token_from(signed_in_client.get("/settings").get_data(as_text=True))
    response = signed_in_client.post("/settings/notification-token", data={"csrf_token": token, "token": "12345678:abcd"})
    assert response.status_code == 302


def test_a_csrf_failure_is_written_to_the_audit_log(app, db, user, signed_in_client):
    signed_in_client.post("/settings/notification-token/remove", data={})
    events = db.session.query(AuditEvent).filter_by(event_type="security.csrf_failure").all()
    assert len(events) == 1
    assert events[0].user_id == user.id
    assert events[0].ip == "127.0.0.1"
