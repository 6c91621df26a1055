"""Access and refresh tokens: issue, refresh rotation, reuse detection, revoke, password change, deactivation."""
from __future__ import annotations

import base64
import json

import pytest
from sqlalchemy import select

from models import AuditEvent, RefreshToken
from tests.api.conftest import bearer
from tests.conftest import TEST_PASSWORD
from tests.rate_window import clear_of_a_window_edge
from utils import accounts, api_auth


def events(db, event_type):
    return db.session.scalars(select(AuditEvent).where(AuditEvent.event_type == event_type)).all()


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_token_endpoint_returns_a_15_minute_jwt_and_an_opaque_refresh_token(client, db, user, tokens):
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 900
    claims = claims_of(tokens["access_token"])
    assert claims["sub"] == str(user.id) and claims["sv"] == user.session_version
    assert claims["exp"] - claims["iat"] == 900 and len(claims["jti"]) == 32 and claims["fid"]
    assert tokens["refresh_token"].startswith("twr_") and "." not in tokens["refresh_token"]
    stored = db.session.scalars(select(RefreshToken)).one()
    assert stored.family_id == claims["fid"] and tokens["refresh_token"] not in stored.token_hash
    assert (stored.expires_at - stored.created_at).days == 7
    assert len(events(db, "api_token.issued")) == 1


def test_access_token_authenticates_and_token_info_describes_it(client, user, tokens):
    response = client.get("/api/v1/auth/token-info", headers=bearer(tokens["access_token"]))
    assert response.status_code == 200
    info = response.get_json()
    assert info["credential_type"] == "access_token" and info["user_id"] == user.id
    assert info["family_id"] == claims_of(tokens["access_token"])["fid"]


def test_signing_key_is_derived_from_but_not_equal_to_secret_key(app, user, tokens):
    from authlib.jose import JsonWebToken
    from authlib.jose.errors import BadSignatureError
    key = api_auth._signing_key().get_op_key("sign")
    assert key != app.config["SECRET_KEY"].encode() and len(key) == 32
    with pytest.raises(BadSignatureError):
        JsonWebToken(["HS256"]).decode(tokens["access_token"], app.config["SECRET_KEY"].encode())


def test_a_token_signed_with_secret_key_itself_is_rejected(app, client, user, tokens):
    from authlib.jose import JsonWebToken
    claims = claims_of(tokens["access_token"])
    forged = JsonWebToken(["HS256"]).encode({"alg": "HS256"}, claims, app.config["SECRET_KEY"].encode()).decode()
    assert client.get("/api/v1/auth/token-info", headers=bearer(forged)).status_code == 401


def test_wrong_password_and_unknown_email_get_the_same_generic_401(client, user):
    wrong = client.post("/api/v1/auth/token", json={"email": user.email, "password": "nope-Nope-1234"})
    unknown = client.post("/api/v1/auth/token", json={"email": "ghost@example.com", "password": "nope-Nope-1234"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.get_json() == unknown.get_json()
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")


def test_token_endpoint_is_limited_to_five_per_account_a_minute(client, user):
    clear_of_a_window_edge()
    statuses = [client.post("/api/v1/auth/token", json={"email": user.email, "password": "bad-Password-1"}).status_code
                for _ in range(6)]
    assert statuses == [401] * 5 + [429]


def test_token_endpoint_is_limited_to_ten_per_address_a_minute(client, user):
    clear_of_a_window_edge()
    statuses = [client.post("/api/v1/auth/token", json={"email": f"n{i}@example.com", "password": "x"}).status_code
                for i in range(11)]
    assert statuses == [401] * 10 + [429]


def test_refresh_rotates_and_the_old_refresh_token_dies(client, user, tokens):
    first = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert first.status_code == 200
    pair = first.get_json()
    assert pair["refresh_token"] != tokens["refresh_token"]
    assert claims_of(pair["access_token"])["fid"] == claims_of(tokens["access_token"])["fid"]
    assert client.get("/api/v1/auth/token-info", headers=bearer(pair["access_token"])).status_code == 200
    second = client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert second.status_code == 200


def test_reusing_a_refresh_token_revokes_the_family_and_its_access_tokens(client, db, redis_server, user, tokens):
    pair = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).get_json()
    reuse = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert reuse.status_code == 401
    for access in (tokens["access_token"], pair["access_token"]):
        assert client.get("/api/v1/auth/token-info", headers=bearer(access)).status_code == 401
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}).status_code == 401
    family = claims_of(pair["access_token"])["fid"]
    assert all(row.revoked_at is not None for row in db.session.scalars(select(RefreshToken)))
    import redis
    assert redis.Redis(port=redis_server.port, db=1).ttl(f"tw:auth:revoked-family:{family}") >= 900
    assert len(events(db, "api_token.reuse_detected")) == 1


def test_revoked_family_stays_dead_from_the_database_if_redis_forgot(client, db, redis_server, user, tokens):
    assert client.post("/api/v1/auth/revoke", json={"token": tokens["refresh_token"]}).get_json() == {"revoked": True}
    redis_server.flush()  # Redis lost its state
    assert api_auth.family_revoked_in_db(claims_of(tokens["access_token"])["fid"])
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401


def test_revoke_with_an_access_token_ends_the_family(client, db, user, tokens):
    response = client.post("/api/v1/auth/revoke", json={"token": tokens["access_token"]})
    assert response.status_code == 200 and response.get_json() == {"revoked": True}
    assert client.get("/api/v1/auth/token-info", headers=bearer(tokens["access_token"])).status_code == 401
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401
    assert len(events(db, "api_token.revoked")) == 1


def test_revoking_an_unknown_token_is_a_quiet_200(client, user):
    response = client.post("/api/v1/auth/revoke", json={"token": "twr_" + "a" * 43})
    assert response.status_code == 200 and response.get_json() == {"revoked": False}


def test_password_change_kills_every_access_and_refresh_token(client, db, user, tokens, api_key):
    assert client.get("/api/v1/auth/token-info", headers=bearer(tokens["access_token"])).status_code == 200
    accounts.change_password(user, TEST_PASSWORD, "A-brand-new-Passphrase-42")
    db.session.commit()
    assert client.get("/api/v1/auth/token-info", headers=bearer(tokens["access_token"])).status_code == 401
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401


def test_deactivation_kills_tokens_and_api_keys(client, db, user, make_user, tokens, api_key):
    admin = make_user(email="boss@example.com", is_admin=True)
    assert client.get("/api/v1/auth/token-info", headers=bearer(api_key)).status_code == 200  # cached now
    accounts.set_active(user, False, actor=admin)
    db.session.commit()
    assert client.get("/api/v1/auth/token-info", headers=bearer(api_key)).status_code == 401
    assert client.get("/api/v1/auth/token-info", headers=bearer(tokens["access_token"])).status_code == 401
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401
    from models import ApiKey, ApiKeyStatus
    assert {key.status for key in db.session.scalars(select(ApiKey))} == {ApiKeyStatus.REVOKED}
    accounts.set_active(user, True, actor=admin)  # reactivation does not resurrect the keys
    db.session.commit()
    assert client.get("/api/v1/auth/token-info", headers=bearer(api_key)).status_code == 401


def test_expired_access_token_is_401(app, client, user):
    import time

    from authlib.jose import JsonWebToken
    now = int(time.time())
    claims = {"iss": "tradewarden", "sub": str(user.id), "iat": now - 1000, "nbf": now - 1000, "exp": now - 100,
              "jti": "a" * 32, "sv": user.session_version, "fid": "b" * 32, "typ": "access"}
    token = JsonWebToken(["HS256"]).encode({"alg": "HS256"}, claims, api_auth._signing_key()).decode()
    assert client.get("/api/v1/auth/token-info", headers=bearer(token)).status_code == 401


@pytest.mark.parametrize("body", [{"refresh_token": 5}, {"refresh_token": "garbage"}, {"refresh_token": "twr_" + "b" * 43}])
def test_bad_refresh_tokens_are_401(client, user, body):
    response = client.post("/api/v1/auth/refresh", json=body)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_credential"
