"""API keys: format, storage, lifecycle (create/list/rotate/revoke/revoke-all), grace period, usage, limits."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from models import ApiKey, ApiKeyStatus, AuditEvent, utcnow
from tests.api.conftest import bearer
from tests.conftest import statements_sent
from tests.rate_window import clear_of_a_window_edge
from utils import api_auth


def events(db, event_type):
    return db.session.scalars(select(AuditEvent).where(AuditEvent.event_type == event_type)).all()


def test_generated_key_has_prefix_256_random_bits_and_a_valid_checksum(app):
    key = api_auth.generate_key_secret()
    assert key.startswith("tw_") and len(key) == api_auth.KEY_LENGTH
    assert 62 ** api_auth.KEY_BODY_LENGTH >= 2 ** 256
    assert api_auth.key_is_well_formed(key)
    assert key != api_auth.generate_key_secret()


@pytest.mark.parametrize("position", [3, 20, 45, -1])
def test_a_single_typo_fails_the_checksum(app, position):
    key = api_auth.generate_key_secret()
    wrong = "A" if key[position] != "A" else "B"
    typo = key[:position] + wrong + (key[position + 1:] if position != -1 else "")
    assert not api_auth.key_is_well_formed(typo)


def test_a_mistyped_key_is_refused_without_a_database_lookup(app, client, db, user, api_key):
    typo = api_key[:10] + ("x" if api_key[10] != "x" else "y") + api_key[11:]
    responses = []
    statements = [statement for statement, _, _ in statements_sent(
        db, lambda: responses.append(client.get("/api/v1/auth/token-info", headers=bearer(typo))))]
    response = responses[0]
    assert response.status_code == 401
    assert response.get_json()["error"]["details"]["reason"] == "malformed_api_key"
    assert not any("api_keys" in statement for statement in statements)


def test_only_the_sha256_and_a_display_prefix_are_stored(db, user, make_key):
    key, secret = make_key(user)
    import hashlib
    assert key.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret.startswith(key.prefix) and len(key.prefix) < 16
    row = db.session.execute(select(ApiKey.__table__)).mappings().one()
    assert secret not in [str(value) for value in row.values()]


def test_create_returns_the_secret_once_and_list_never_shows_it(client, db, user, api_key):
    response = client.post("/api/v1/api-keys", json={"name": "backtest"}, headers=bearer(api_key))
    assert response.status_code == 201
    created = response.get_json()
    assert created["key"].startswith("tw_") and created["status"] == "active"
    days = (api_auth_time(created["expires_at"]) - api_auth_time(created["created_at"])).days
    assert days == 90
    listing = client.get("/api/v1/api-keys", headers=bearer(api_key)).get_json()
    assert {item["name"] for item in listing["items"]} == {"backtest", "script"}
    assert "key" not in listing["items"][0] and created["key"] not in str(listing)
    assert listing["next_cursor"] is None
    assert len(events(db, "api_key.created")) == 2


def api_auth_time(text):
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("body", [{"name": "x", "expires_in_days": 366}, {"name": "x", "expires_in_days": 0},
                                  {"name": "x", "expires_in_days": "30"}, {"name": ""}, {"name": "x" * 101},
                                  {"name": "x", "extra": 1}])
def test_invalid_create_bodies_are_422(client, user, api_key, body):
    response = client.post("/api/v1/api-keys", json=body, headers=bearer(api_key))
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "validation_failed"


def test_a_non_object_body_is_400(client, user, api_key):
    response = client.post("/api/v1/api-keys", data="[1,", headers={**bearer(api_key), "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"


def test_expiry_may_be_365_days_and_an_expired_key_is_401_and_listed_as_expired(client, db, user, make_key, api_key):
    created = client.post("/api/v1/api-keys", json={"name": "year", "expires_in_days": 365}, headers=bearer(api_key))
    assert created.status_code == 201
    key, secret = make_key(user, "old")
    key.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert client.get("/api/v1/auth/token-info", headers=bearer(secret)).status_code == 401
    statuses = {item["name"]: item["status"] for item in client.get("/api/v1/api-keys", headers=bearer(api_key)).get_json()["items"]}
    assert statuses["old"] == "expired"


def test_rotation_gives_a_new_key_and_the_old_one_works_during_the_grace_period(client, db, user, make_key):
    key, old_secret = make_key(user)
    response = client.post(f"/api/v1/api-keys/{key.id}/rotate", headers=bearer(old_secret))
    assert response.status_code == 201
    body = response.get_json()
    assert body["previous"]["status"] == "rotated" and body["status"] == "active"
    assert body["rotated_from_id"] == key.id and body["key"] != old_secret
    grace = api_auth_time(body["previous"]["grace_until"]) - utcnow()
    assert timedelta(hours=23, minutes=59) < grace <= timedelta(hours=24)
    assert client.get("/api/v1/auth/token-info", headers=bearer(old_secret)).status_code == 200
    assert client.get("/api/v1/auth/token-info", headers=bearer(body["key"])).status_code == 200
    db.session.get(ApiKey, key.id).grace_until = utcnow() - timedelta(seconds=1)  # the grace period ends
    db.session.commit()
    assert client.get("/api/v1/auth/token-info", headers=bearer(old_secret)).status_code == 401
    assert client.get("/api/v1/auth/token-info", headers=bearer(body["key"])).status_code == 200
    assert len(events(db, "api_key.rotated")) == 1


def test_rotating_a_rotated_key_is_409(client, user, make_key):
    key, secret = make_key(user)
    assert client.post(f"/api/v1/api-keys/{key.id}/rotate", headers=bearer(secret)).status_code == 201
    response = client.post(f"/api/v1/api-keys/{key.id}/rotate", headers=bearer(secret))
    assert response.status_code == 409


class TestZeroGrace:
    @pytest.fixture
    def app_config(self, app_config):
        return {**app_config, "API_KEY_ROTATION_GRACE_HOURS": "0"}

    def test_with_zero_grace_hours_the_rotated_key_fails_at_once(self, client, user, make_key):
        key, secret = make_key(user)
        new = client.post(f"/api/v1/api-keys/{key.id}/rotate", headers=bearer(secret)).get_json()["key"]
        assert client.get("/api/v1/auth/token-info", headers=bearer(secret)).status_code == 401
        assert client.get("/api/v1/auth/token-info", headers=bearer(new)).status_code == 200


def test_revoke_makes_the_key_fail_on_the_next_request(client, db, user, make_key, api_key):
    key, secret = make_key(user, "victim")
    assert client.get("/api/v1/auth/token-info", headers=bearer(secret)).status_code == 200  # now cached
    response = client.post(f"/api/v1/api-keys/{key.id}/revoke", headers=bearer(api_key))
    assert response.status_code == 200 and response.get_json()["status"] == "revoked"
    assert client.get("/api/v1/auth/token-info", headers=bearer(secret)).status_code == 401
    assert len(events(db, "api_key.revoked")) == 1


def test_another_users_key_is_404_and_untouched(client, db, user, make_user, make_key, api_key):
    other = make_user(email="other-owner@example.com")
    key, secret = make_key(other)
    for action in ("rotate", "revoke"):
        assert client.post(f"/api/v1/api-keys/{key.id}/{action}", headers=bearer(api_key)).status_code == 404
    assert client.post("/api/v1/api-keys/999999999999999999999/revoke", headers=bearer(api_key)).status_code == 404
    assert client.get("/api/v1/auth/token-info", headers=bearer(secret)).status_code == 200


def test_revoke_all_kills_every_key_of_the_user_only(client, db, user, make_user, make_key, api_key):
    _, second = make_key(user, "second")
    other = make_user(email="bystander@example.com")
    _, others = make_key(other)
    response = client.post("/api/v1/api-keys/revoke-all", headers=bearer(api_key))
    assert response.status_code == 200 and response.get_json() == {"revoked_count": 2}
    assert client.get("/api/v1/auth/token-info", headers=bearer(api_key)).status_code == 401
    assert client.get("/api/v1/auth/token-info", headers=bearer(second)).status_code == 401
    assert client.get("/api/v1/auth/token-info", headers=bearer(others)).status_code == 200
    assert len(events(db, "api_key.revoked_all")) == 1


class TestUsage:
    @pytest.fixture
    def app_config(self, app_config):
        return {**app_config, "API_KEY_USAGE_PUSH_SECONDS": 0}  # push every use to Redis (default: every 5 s)

    def test_usage_is_counted_but_written_at_most_once_a_minute(self, app, client, db, user, make_key, redis_server):
        usage_is_counted_but_written_at_most_once_a_minute(app, client, db, user, make_key, redis_server)


def usage_is_counted_but_written_at_most_once_a_minute(app, client, db, user, make_key, redis_server):
    key, secret = make_key(user)

    def five_requests() -> None:
        for _ in range(5):
            assert client.get("/api/v1/auth/token-info", headers=bearer(secret)).status_code == 200

    writes = [statement for statement, _, _ in statements_sent(db, five_requests)
              if statement.startswith("UPDATE api_keys")]
    assert len(writes) == 1
    db.session.expire_all()
    row = db.session.get(ApiKey, key.id)
    assert row.usage_count == 1 and row.last_used_at is not None
    import redis
    redis.Redis(port=redis_server.port, db=1).delete(f"tw:api:key-touch:{key.id}")  # the minute has passed
    assert client.get("/api/v1/auth/token-info", headers=bearer(secret)).status_code == 200
    db.session.expire_all()
    assert db.session.get(ApiKey, key.id).usage_count == 6


def test_create_is_limited_to_five_a_minute_with_retry_after(client, user, api_key):
    clear_of_a_window_edge()
    statuses = [client.post("/api/v1/api-keys", json={"name": f"k{i}"}, headers=bearer(api_key)) for i in range(6)]
    assert [r.status_code for r in statuses] == [201] * 5 + [429]
    limited = statuses[-1]
    assert limited.get_json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert statuses[0].headers["X-RateLimit-Limit"] == "5" and statuses[4].headers["X-RateLimit-Remaining"] == "0"


def test_revoke_all_is_limited_to_two_a_minute(client, user, tokens):
    clear_of_a_window_edge()
    headers = bearer(tokens["access_token"])  # an access token survives revoke-all (it revokes keys only)
    statuses = [client.post("/api/v1/api-keys/revoke-all", headers=headers).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_list_is_limited_to_thirty_a_minute(client, user, api_key):
    clear_of_a_window_edge()
    statuses = [client.get("/api/v1/api-keys", headers=bearer(api_key)).status_code for _ in range(31)]
    assert statuses == [200] * 30 + [429]


def test_rotate_and_revoke_are_limited_to_ten_a_minute(client, user, tokens):
    clear_of_a_window_edge()
    headers = bearer(tokens["access_token"])
    rotates = [client.post("/api/v1/api-keys/999/rotate", headers=headers).status_code for _ in range(11)]
    revokes = [client.post("/api/v1/api-keys/999/revoke", headers=headers).status_code for _ in range(11)]
    assert rotates == [404] * 10 + [429] and revokes == [404] * 10 + [429]


def test_status_values_cover_active_rotated_revoked_expired(app, db, user, make_key):
    keys = [make_key(user, name)[0] for name in ("a", "b", "c", "d")]
    api_auth.rotate_api_key(user, keys[1].id)
    api_auth.revoke_api_key(user, keys[2].id)
    keys[3].expires_at = utcnow() - timedelta(days=1)
    db.session.commit()
    assert [api_auth.key_status(k) for k in keys] == [ApiKeyStatus.ACTIVE, ApiKeyStatus.ROTATED,
                                                      ApiKeyStatus.REVOKED, ApiKeyStatus.EXPIRED]
