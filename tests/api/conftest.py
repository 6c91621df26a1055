"""Fixtures for the API tests: API keys and token pairs made through the real services."""
from __future__ import annotations

import itertools

import pytest

_emails = itertools.count(1)


@pytest.fixture
def make_key(db):
    """make_key(user, name="script", days=None) → (ApiKey row, secret), committed."""
    from utils import api_auth

    def factory(user, name: str = "script", days: int | None = None):
        key, secret = api_auth.create_api_key(user, name, days)
        db.session.commit()
        return key, secret

    return factory


def bearer(credential: str) -> dict:
    return {"Authorization": f"Bearer {credential}"}


@pytest.fixture
def api_key(user, make_key):
    return make_key(user)[1]


@pytest.fixture
def tokens(client, user):
    """A fresh token pair for `user` from POST /api/v1/auth/token."""
    from tests.conftest import TEST_PASSWORD
    response = client.post("/api/v1/auth/token", json={"email": user.email, "password": TEST_PASSWORD})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.fixture
def api_user(make_user):
    """A committed user for the API tests (example.com: valid for every email validator setting)."""
    return make_user(email=f"api-user{next(_emails)}@example.com")


@pytest.fixture
def user(api_user):
    return api_user


@pytest.fixture
def browser_login(app, client):
    """browser_login(user): a real server-side session (utils.sessions) whose token the test client's cookie holds."""
    from utils import sessions
    from utils.extensions import db

    def sign_in(user, test_client=None):
        with app.test_request_context("/"):
            sessions.start_session(user)
            token = user.session_token
            db.session.commit()
        with (test_client or client).session_transaction() as browser_session:
            browser_session["_user_id"], browser_session["_fresh"] = token, True
        return token

    return sign_in
