"""Security headers on every kind of response: HTML, JSON, 404, 405, 429 and 500 (issue 2 item 9)."""
from __future__ import annotations

import pytest

from main import create_app
from tests.conftest import base_config
from utils.extensions import limiter

REQUIRED_CSP = {"default-src": "'self'", "object-src": "'none'", "base-uri": "'none'", "frame-ancestors": "'none'"}


def csp_directives(header: str) -> dict[str, str]:
    parts = [part.strip().split(None, 1) for part in header.split(";") if part.strip()]
    return {part[0]: part[1] if len(part) > 1 else "" for part in parts}


def assert_security_headers(response, hsts: bool = False) -> None:
    directives = csp_directives(response.headers["Content-Security-Policy"])
    for name, value in REQUIRED_CSP.items():
        assert directives.get(name) == value, (name, response.headers["Content-Security-Policy"])
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] in {"no-referrer", "strict-origin-when-cross-origin", "same-origin"}
    assert "camera=()" in response.headers["Permissions-Policy"]
    if hsts:
        assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    else:
        assert "Strict-Transport-Security" not in response.headers


def add_throwaway_routes(app) -> None:
    """A route that crashes (500) and one limited to once a minute (429); test-only, on this instance."""
    def boom():
        raise RuntimeError("deliberate failure for the header test")

    def limited():
        return "ok"

    app.add_url_rule("/_test/boom", "test_boom", boom)
    app.add_url_rule("/_test/limited", "test_limited", limiter.limit("1 per minute")(limited))


@pytest.fixture
def probe_app(app):
    add_throwaway_routes(app)
    return app


def responses_of_every_kind(client) -> dict:
    client.get("/_test/limited")
    return {
        "html 404": client.get("/no/such/page", headers={"Accept": "text/html"}),
        "json": client.get("/health/live"),
        "json 404": client.get("/api/v1/no-such-thing"),
        "405": client.get("/settings/notification-token"),
        "429": client.get("/_test/limited"),
        "500": client.get("/_test/boom"),
        "static": client.get("/static/app.css"),
    }


def test_every_kind_of_response_carries_the_security_headers(probe_app):
    responses = responses_of_every_kind(probe_app.test_client())
    expected = {"html 404": 404, "json": 200, "json 404": 404, "405": 405, "429": 429, "500": 500, "static": 200}
    assert {kind: response.status_code for kind, response in responses.items()} == expected
    for kind, response in responses.items():
        assert_security_headers(response), kind
    assert "deliberate failure" not in responses["500"].get_data(as_text=True)
    assert "Retry-After" in responses["429"].headers


def test_signed_in_html_page_has_headers_and_no_store(probe_app, signed_in_client):
    response = signed_in_client.get("/settings")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert_security_headers(response)
    assert "no-store" in response.headers["Cache-Control"]


def test_signed_in_error_pages_are_not_cached_either(probe_app, signed_in_client):
    for path in ("/no/such/page", "/_test/boom"):
        assert "no-store" in signed_in_client.get(path).headers["Cache-Control"]


def test_anonymous_static_files_may_be_cached(probe_app):
    response = probe_app.test_client().get("/static/app.css")
    assert "no-store" not in response.headers.get("Cache-Control", "")


def test_hsts_is_sent_only_in_production(redis_server, database_url):
    production = create_app(base_config(redis_server.url, database_url, TRADEWARDEN_ENV="production"))
    add_throwaway_routes(production)
    for kind, response in responses_of_every_kind(production.test_client()).items():
        assert_security_headers(response, hsts=True), kind


def test_forms_may_post_only_to_us_and_to_the_configured_broker_authorize_pages(redis_server, database_url):
    """A broker "connect" form redirects to the broker's OAuth page; CSP form-action must allow exactly that."""
    configured = create_app(base_config(redis_server.url, database_url,
                                        SCHWAB_AUTHORIZE_URL="http://127.0.0.1:8123/v1/oauth/authorize"))
    directives = csp_directives(configured.test_client().get("/health/live").headers["Content-Security-Policy"])
    sources = directives["form-action"].split()
    assert sources[0] == "'self'"
    assert "http://127.0.0.1:8123" in sources
    assert "https://login.coinbase.com" in sources
    assert not any("/oauth" in source for source in sources), "origins only, never paths"
