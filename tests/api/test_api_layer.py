"""The /api/v1 layer: Bearer only, no query credentials, no cookies, per-credential limits, one error format."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from models import AuditEvent
from tests.api.conftest import bearer
from tests.rate_window import clear_of_a_window_edge


def test_missing_credential_is_401_with_www_authenticate_and_the_error_format(client):
    response = client.get("/api/v1/api-keys")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    error = response.get_json()["error"]
    assert set(error) == {"code", "message", "details"} and error["code"] == "invalid_credential"


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer ", "Bearer not-a-credential", "Token tw_abc"])
def test_other_schemes_and_garbage_are_401(client, header):
    assert client.get("/api/v1/api-keys", headers={"Authorization": header}).status_code == 401


@pytest.mark.parametrize("query", ["api_key={key}", "access_token=x", "token=abc", "foo={key}"])
def test_a_credential_in_the_query_string_is_400(client, user, api_key, query):
    response = client.get("/api/v1/api-keys?" + query.format(key=api_key), headers=bearer(api_key))
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "credential_in_query"


def test_a_signed_in_browser_cookie_does_not_authenticate_the_api(client, user, browser_login):
    browser_login(user)
    assert client.get("/settings/api-keys").status_code == 200  # the cookie works for pages
    assert client.get("/api/v1/api-keys").status_code == 401


def test_the_api_needs_no_csrf_token(client, user, api_key):
    # CSRF is global for forms; the JSON API is exempt (Bearer credentials cannot be sent cross-site)
    response = client.post("/api/v1/api-keys", json={"name": "no csrf"}, headers=bearer(api_key))
    assert response.status_code == 201


def test_responses_carry_rate_limit_headers(client, user, api_key):
    response = client.get("/api/v1/auth/token-info", headers=bearer(api_key))
    assert response.headers["X-RateLimit-Limit"] == "600"
    assert response.headers["X-RateLimit-Remaining"] == "599"
    assert int(response.headers["X-RateLimit-Reset"]) > 0


class TestSmallCredentialLimit:
    @pytest.fixture
    def app_config(self, app_config):
        return {**app_config, "API_RATE_LIMIT": "3/minute"}

    def test_the_per_credential_limit_answers_429_with_retry_after(self, client, user, make_key):
        _, first = make_key(user, "first")
        _, second = make_key(user, "second")
        clear_of_a_window_edge()
        statuses = [client.get("/api/v1/auth/token-info", headers=bearer(first)).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = client.get("/api/v1/auth/token-info", headers=bearer(first))
        assert limited.get_json()["error"]["code"] == "rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1 and limited.headers["X-RateLimit-Remaining"] == "0"
        assert client.get("/api/v1/auth/token-info", headers=bearer(second)).status_code == 200  # its own budget


def test_unknown_api_path_is_a_json_404(client):
    response = client.get("/api/v1/no-such-thing")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


def test_wrong_method_is_a_json_405_with_allow(client):
    response = client.delete("/api/v1/auth/token")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed" and "POST" in response.headers["Allow"]


def test_too_large_body_is_a_json_413(client, user, api_key):
    response = client.post("/api/v1/api-keys", data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                           headers={**bearer(api_key), "Content-Type": "application/json"})
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "payload_too_large"


def test_a_crash_is_a_json_500_that_shows_no_internals(app, client):
    def explode():
        raise RuntimeError("secret internal detail /srv/db password=hunter2")
    app.add_url_rule("/api/v1/_test_explode", "test_explode", explode)
    response = client.get("/api/v1/_test_explode")
    assert response.status_code == 500
    body = response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "internal_error"
    assert "secret internal detail" not in body and "RuntimeError" not in body and "Traceback" not in body


def test_authorization_denial_is_audited_once_per_address_and_reason(client, db):
    for _ in range(3):
        client.get("/api/v1/api-keys", headers={"Authorization": "Bearer tw_wrong"})
    denied = db.session.scalars(select(AuditEvent).where(AuditEvent.event_type == "api.authorization_denied")).all()
    assert len(denied) == 1
    assert denied[0].details["status"] == 401 and denied[0].details["reason"] == "malformed_api_key"


def test_denial_for_a_revoked_key_is_audited_for_its_owner(client, db, user, make_key):
    from utils import api_auth
    key, secret = make_key(user)
    api_auth.revoke_api_key(user, key.id)
    db.session.commit()
    assert client.get("/api/v1/auth/token-info", headers=bearer(secret)).status_code == 401
    denied = db.session.scalars(select(AuditEvent).where(AuditEvent.event_type == "api.authorization_denied")).one()
    assert denied.user_id == user.id


def test_g_api_user_is_a_models_user(app, client, user, api_key):
    from flask import g

    from models import User
    seen = {}

    def whoami():
        seen["user"] = g.api_user
        return {"id": g.api_user.id}
    app.view_functions["api.auth.token_info"] = whoami
    assert client.get("/api/v1/auth/token-info", headers=bearer(api_key)).status_code == 200
    assert isinstance(seen["user"], User) and seen["user"].id == user.id


def test_an_overlong_url_is_a_json_414(client):
    response = client.get("/api/v1/auth/token-info?" + "a=b&" * 1200)
    assert response.status_code == 414 and response.get_json()["error"]["code"] == "uri_too_long"


def test_a_path_no_rule_accepts_is_404_not_405(app, client):
    app.add_url_rule("/api/v1/_test_items/<int(min=1):item_id>", "test_item_get", lambda item_id: "", methods=["GET"])
    app.add_url_rule("/api/v1/_test_items/<int(min=1):item_id>", "test_item_del", lambda item_id: "", methods=["DELETE"])
    assert client.delete("/api/v1/_test_items/0").status_code == 404
    assert client.post("/api/v1/_test_items/5").status_code == 405


def test_a_403_from_an_api_view_is_audited(app, client, db):
    from utils.errors import Forbidden

    def forbidden():
        raise Forbidden("Admins only.")
    app.add_url_rule("/api/v1/_test_forbidden", "test_forbidden", forbidden)
    response = client.get("/api/v1/_test_forbidden")
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "forbidden"
    denied = db.session.scalars(select(AuditEvent).where(AuditEvent.event_type == "api.authorization_denied")).one()
    assert denied.details["status"] == 403


@pytest.mark.parametrize("hours,ok", [("0", True), ("168", True), ("169", False), ("-1", False)])
def test_rotation_grace_is_configurable_from_0_to_168_hours(hours, ok):
    from utils.config import ConfigError, load_config
    env = {"SECRET_KEY": "k" * 40, "ENCRYPTION_KEYS": "Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE=",
           "API_KEY_ROTATION_GRACE_HOURS": hours}
    if ok:
        assert load_config(env)["API_KEY_ROTATION_GRACE_HOURS"] == int(hours)
    else:
        with pytest.raises(ConfigError, match="API_KEY_ROTATION_GRACE_HOURS"):
            load_config(env)
