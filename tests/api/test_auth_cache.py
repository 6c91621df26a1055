"""The per-process credential cache: used while subscribed, emptied by every published change."""
from __future__ import annotations

import time

import pytest
import redis
from sqlalchemy import text

from tests.api.conftest import bearer
from tests.conftest import TEST_PASSWORD, statements_sent
from utils import accounts, api_auth


@pytest.fixture
def live_cache(app):
    deadline = time.monotonic() + 10
    while api_auth.auth_cache() is None:
        assert time.monotonic() < deadline, "the invalidation subscription never came up"
        time.sleep(0.02)
    return api_auth.auth_cache()


def statements_during(db, action) -> list[str]:
    return [statement for statement, _, _ in statements_sent(db, action)]


def wait_until_cached(client, secret: str) -> None:
    """Our own commits are also echoed back by Redis a moment later (emptying the cache once more)."""
    deadline = time.monotonic() + 5
    while True:
        assert client.get("/api/v1/auth/token-info", headers=bearer(secret)).status_code == 200
        time.sleep(0.05)
        cache = api_auth.auth_cache()
        if cache is not None and api_auth.hash_secret(secret) in cache.keys:
            return
        assert time.monotonic() < deadline, "the key never stayed cached"


def test_a_cached_key_is_verified_without_touching_the_database(client, db, user, api_key, live_cache):
    wait_until_cached(client, api_key)
    db.session.remove()
    seen = statements_during(db, lambda: api_auth.verify_api_key(api_key))
    assert not any("api_keys" in statement or "FROM users" in statement for statement in seen)


def test_a_change_published_by_another_process_empties_the_cache(app, client, db, redis_server, user, make_key,
                                                                 live_cache):
    key, secret = make_key(user)
    wait_until_cached(client, secret)
    with db.engine.begin() as connection:  # another process revokes: no ORM event fires here
        connection.execute(text("UPDATE api_keys SET status = 'revoked' WHERE id = :id"), {"id": key.id})
    assert client.get("/api/v1/auth/token-info", headers=bearer(secret)).status_code == 200  # still cached
    redis.Redis(port=redis_server.port).publish(api_auth.INVALIDATION_CHANNEL, str(user.id))
    deadline = time.monotonic() + 5
    while client.get("/api/v1/auth/token-info", headers=bearer(secret)).status_code != 401:
        assert time.monotonic() < deadline, "the published change never reached the cache"
        time.sleep(0.01)


def test_revocation_through_the_service_is_seen_by_the_next_request(client, db, user, make_key, api_key, live_cache):
    key, secret = make_key(user)
    assert client.get("/api/v1/auth/token-info", headers=bearer(secret)).status_code == 200
    assert client.post(f"/api/v1/api-keys/{key.id}/revoke", headers=bearer(api_key)).status_code == 200
    assert client.get("/api/v1/auth/token-info", headers=bearer(secret)).status_code == 401


def test_password_change_is_seen_by_the_next_request_even_when_cached(client, db, user, tokens, live_cache):
    assert client.get("/api/v1/auth/token-info", headers=bearer(tokens["access_token"])).status_code == 200
    accounts.change_password(user, TEST_PASSWORD, "Another-Fresh-Passphrase-77")
    db.session.commit()
    assert client.get("/api/v1/auth/token-info", headers=bearer(tokens["access_token"])).status_code == 401


def test_family_revocation_is_seen_by_the_next_request_even_when_cached(client, user, tokens, live_cache):
    access = bearer(tokens["access_token"])
    assert client.get("/api/v1/auth/token-info", headers=access).status_code == 200
    assert client.post("/api/v1/auth/revoke", json={"token": tokens["refresh_token"]}).status_code == 200
    assert client.get("/api/v1/auth/token-info", headers=access).status_code == 401


def test_without_a_live_subscription_nothing_is_cached(app, client, db, user, make_key, redis_server, live_cache):
    key, secret = make_key(user)
    assert client.get("/api/v1/auth/token-info", headers=bearer(secret)).status_code == 200
    redis_server.stop()
    try:
        deadline = time.monotonic() + 10
        while api_auth.auth_cache() is not None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with db.engine.begin() as connection:
            connection.execute(text("UPDATE api_keys SET status = 'revoked' WHERE id = :id"), {"id": key.id})
        assert client.get("/api/v1/auth/token-info", headers=bearer(secret)).status_code == 401
    finally:
        redis_server.start()
