"""Settings → API keys page: create (shown once, with a copy button), list, rotate, revoke, revoke all."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from models import ApiKey, ApiKeyStatus
from tests.api.conftest import bearer
from tests.conftest import csrf_token_from


@pytest.fixture
def signed_in(client, user, browser_login):
    browser_login(user)
    return client


def shown_key(html: str) -> str:
    match = re.search(r'id="new-api-key"[^>]*value="(tw_[0-9A-Za-z]+)"', html)
    assert match, "no key shown"
    return match.group(1)


def test_page_requires_sign_in(client):
    response = client.get("/settings/api-keys")
    assert response.status_code in (302, 401)


def test_create_shows_the_key_once_with_a_copy_button_and_it_works(signed_in, db):
    page = signed_in.get("/settings/api-keys").get_data(as_text=True)
    response = signed_in.post("/settings/api-keys", data={"name": "laptop", "expires_in_days": "30",
                                                          "csrf_token": csrf_token_from(page)})
    assert response.status_code == 201 and response.headers["Cache-Control"] == "no-store"
    html = response.get_data(as_text=True)
    secret = shown_key(html)
    assert 'data-copy-target="new-api-key"' in html and "copy_button.js" in html
    assert signed_in.get("/api/v1/auth/token-info", headers=bearer(secret)).status_code == 200
    listing = signed_in.get("/settings/api-keys").get_data(as_text=True)
    assert secret not in listing and secret[:11] in listing and "laptop" in listing


def test_create_without_csrf_is_refused(signed_in, db):
    response = signed_in.post("/settings/api-keys", data={"name": "laptop"})
    assert response.status_code == 400
    assert db.session.scalars(select(ApiKey)).first() is None


def test_create_with_a_bad_expiry_shows_the_field_error(signed_in, db):
    page = signed_in.get("/settings/api-keys").get_data(as_text=True)
    response = signed_in.post("/settings/api-keys", data={"name": "x", "expires_in_days": "400",
                                                          "csrf_token": csrf_token_from(page)})
    assert response.status_code == 422 and 'class="error"' in response.get_data(as_text=True)
    assert db.session.scalars(select(ApiKey)).first() is None


def test_rotate_revoke_and_revoke_all_from_the_page(signed_in, db, user, make_key):
    key, secret = make_key(user, "cron")
    page = signed_in.get("/settings/api-keys").get_data(as_text=True)
    token = csrf_token_from(page)
    rotated = signed_in.post(f"/settings/api-keys/{key.id}/rotate", data={"csrf_token": token})
    assert rotated.status_code == 201
    new_secret = shown_key(rotated.get_data(as_text=True))
    db.session.expire_all()
    assert db.session.get(ApiKey, key.id).status == ApiKeyStatus.ROTATED
    revoked = signed_in.post(f"/settings/api-keys/{key.id}/revoke", data={"csrf_token": token})
    assert revoked.status_code == 302
    assert signed_in.get("/api/v1/auth/token-info", headers=bearer(secret)).status_code == 401
    assert signed_in.get("/api/v1/auth/token-info", headers=bearer(new_secret)).status_code == 200
    assert signed_in.post("/settings/api-keys/revoke-all", data={"csrf_token": token}).status_code == 302
    assert signed_in.get("/api/v1/auth/token-info", headers=bearer(new_secret)).status_code == 401


def test_another_users_key_cannot_be_revoked_from_the_page(signed_in, db, make_user, make_key):
    other = make_user(email="someone-else@example.com")
    key, secret = make_key(other)
    token = csrf_token_from(signed_in.get("/settings/api-keys").get_data(as_text=True))
    response = signed_in.post(f"/settings/api-keys/{key.id}/revoke", data={"csrf_token": token})
    assert response.status_code == 404
    assert signed_in.get("/api/v1/auth/token-info", headers=bearer(secret)).status_code == 200
