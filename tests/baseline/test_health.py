"""Health probes (DESIGN §7): live touches nothing, ready checks database and Redis, startup checks
configuration and schema, metrics speak Prometheus. Bodies never carry versions, traces or secrets."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import redis as redis_lib
from prometheus_client.parser import text_string_to_metric_families

from main import create_app
from tests.conftest import base_config, raw_sql


def assert_no_secrets(body: str, app) -> None:
    for secret in [app.config["SECRET_KEY"], *app.config["ENCRYPTION_KEYS"]]:
        assert secret not in body
    for leak in ("Traceback", "redis://", "sqlite:", "version", "Werkzeug", "gunicorn"):
        assert leak.lower() not in body.lower(), leak


def test_live_answers_ok_without_touching_dependencies(client, app):
    response = client.get("/health/live")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert_no_secrets(response.get_data(as_text=True), app)


def test_ready_reports_database_and_redis_ok(client, app):
    response = client.get("/health/ready")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok" and body["failing"] == []
    assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"]
    assert body["stoploss_last_sweep"] is None, "no sweep has run in a fresh Redis"
    assert_no_secrets(response.get_data(as_text=True), app)


def test_redis_stopped_mid_test_makes_ready_503_while_live_stays_200(client, app, redis_server):
    assert client.get("/health/ready").status_code == 200
    redis_server.stop()
    try:
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.get_json()["failing"] == ["redis"]
        assert ready.get_json()["checks"]["redis"]["message"].startswith("redis unreachable")
        assert_no_secrets(ready.get_data(as_text=True), app)
        assert client.get("/health/live").status_code == 200
    finally:
        redis_server.start()
    assert client.get("/health/ready").status_code == 200, "ready recovers once Redis is back"


def test_unreachable_database_makes_ready_503_naming_the_database(redis_server, tmp_path):
    broken = create_app(base_config(redis_server.url, f"sqlite:///{tmp_path}/missing-dir/none.db"))
    response = broken.test_client().get("/health/ready")
    assert response.status_code == 503
    body = response.get_json()
    assert body["failing"] == ["database"]
    assert body["checks"]["redis"]["ok"] is True
    assert_no_secrets(response.get_data(as_text=True), broken)


def test_metrics_still_answer_without_the_database_leaving_out_the_delayed_orders(redis_server, tmp_path):
    broken = create_app(base_config(redis_server.url, f"sqlite:///{tmp_path}/missing-dir/none.db"))
    response = broken.test_client().get("/health/metrics")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert "http_requests_total" in text and "stoploss_last_sweep_age_seconds" in text
    assert "orders_delayed{" not in text


def test_ready_reports_the_last_stoploss_sweep_with_its_age(client, app):
    finished = datetime.now(timezone.utc) - timedelta(seconds=90)
    cache = redis_lib.Redis.from_url(app.config["CACHE_REDIS_URL"])
    cache.set("stoploss:last_sweep", json.dumps({"finished_at": finished.isoformat(), "trades_checked": 3}))
    sweep = client.get("/health/ready").get_json()["stoploss_last_sweep"]
    assert set(sweep) == {"finished_at", "age_seconds"}  # the counts (every user's trades) stay out of a public probe
    assert 89 <= sweep["age_seconds"] < 3600
    assert datetime.fromisoformat(sweep["finished_at"]) == finished and sweep["finished_at"].endswith("Z")


def test_with_a_metrics_token_only_a_scrape_presenting_it_reads_the_metrics(redis_server, tmp_path, app):
    token = "scrape-" + "t" * 24
    guarded = create_app(base_config(redis_server.url, app.config["SQLALCHEMY_DATABASE_URI"], METRICS_TOKEN=token))
    client = guarded.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong-token-of-enough-length"}, {"Authorization": token}):
        refused = client.get("/health/metrics", headers=headers)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
        body = refused.get_data(as_text=True)
        assert refused.get_json()["error"]["code"] == "unauthorized"
        assert "http_requests_total" not in body and token not in body
    allowed = client.get("/health/metrics", headers={"Authorization": f"Bearer {token}"})
    assert allowed.status_code == 200 and "http_requests_total" in allowed.get_data(as_text=True)
    assert client.get("/health/ready").status_code == 200  # the probes themselves stay open


def test_an_unreadable_sweep_record_is_reported_not_a_failure(client, app):
    redis_lib.Redis.from_url(app.config["CACHE_REDIS_URL"]).set("stoploss:last_sweep", "{not json")
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.get_json()["stoploss_last_sweep"] == {"status": "unreadable"}


def test_startup_is_ok_with_valid_configuration_and_migrated_schema(client, app):
    response = client.get("/health/startup")
    assert response.status_code == 200
    body = response.get_json()
    assert body["checks"]["configuration"]["ok"] and body["checks"]["schema"]["ok"]
    assert_no_secrets(response.get_data(as_text=True), app)


def test_startup_fails_on_an_unmigrated_database(redis_server, tmp_path):
    fresh = create_app(base_config(redis_server.url, f"sqlite:///{tmp_path / 'empty.db'}"))
    response = fresh.test_client().get("/health/startup")
    assert response.status_code == 503
    assert response.get_json()["failing"] == ["schema"]


def test_startup_fails_when_the_schema_is_not_at_the_migration_head(client, app, database_url):
    raw_sql(database_url, "UPDATE alembic_version SET version_num = 'an_older_revision'")
    response = client.get("/health/startup")
    assert response.status_code == 503
    body = response.get_json()
    assert body["failing"] == ["schema"]
    assert "an_older_revision" not in response.get_data(as_text=True)


def metric_value(text: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_metrics_count_requests_by_endpoint_method_and_status(client):
    before = client.get("/health/metrics").get_data(as_text=True)
    for _ in range(3):
        client.get("/health/live")
    client.get("/no/such/page")
    response = client.get("/health/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    after = response.get_data(as_text=True)
    live = {"endpoint": "health.live", "method": "GET", "status": "200"}
    assert metric_value(after, "http_requests_total", **live) - metric_value(before, "http_requests_total", **live) == 3
    missing = {"endpoint": "unmatched", "method": "GET", "status": "404"}
    assert metric_value(after, "http_requests_total", **missing) - \
        metric_value(before, "http_requests_total", **missing) == 1
    assert metric_value(after, "http_request_duration_seconds_count", endpoint="health.live", method="GET") >= 3
    assert "process_cpu_seconds_total" in after and "process_resident_memory_bytes" in after


def test_health_probes_are_exempt_from_rate_limits(redis_server, database_url):
    limited = create_app(base_config(redis_server.url, database_url, RATELIMIT_DEFAULT="2 per minute"))
    client = limited.test_client()
    assert [client.get("/health/live").status_code for _ in range(5)] == [200] * 5
    assert [client.get("/health/ready").status_code for _ in range(5)] == [200] * 5
    statuses = [client.get("/settings").status_code for _ in range(3)]
    assert statuses[-1] == 429, f"control: the default limit is active elsewhere ({statuses})"


def test_metrics_report_the_age_of_the_last_stoploss_sweep(client, app):
    assert metric_value(client.get("/health/metrics").get_data(as_text=True),
                        "stoploss_last_sweep_age_seconds") == 0.0, "absent before any sweep"
    finished = datetime.now(timezone.utc) - timedelta(seconds=120)
    redis_lib.Redis.from_url(app.config["CACHE_REDIS_URL"]).set(
        "stoploss:last_sweep", json.dumps({"finished_at": finished.isoformat()}))
    text = client.get("/health/metrics").get_data(as_text=True)
    assert 119 <= metric_value(text, "stoploss_last_sweep_age_seconds") < 3600
