"""Fixtures for the baseline tests: a signed-in test client without depending on the sign-in form."""
from __future__ import annotations

import pytest


@pytest.fixture
def sign_in(app, db):
    """sign_in(user, test_client) → the client now carries a real server-side session of `user`.

    Uses the same service the sign-in form uses (utils.sessions.start_session), so the session loader,
    idle/absolute limits and revocation all apply exactly as for a browser.
    """
    from flask import session as flask_session

    from utils import sessions

    def signed_in(user, test_client):
        with app.test_request_context("/auth/login", method="POST"):
            sessions.start_session(user)
            cookie_values = dict(flask_session)
            db.session.commit()
        with test_client.session_transaction() as stored:
            stored.clear()
            stored.update(cookie_values)
        return test_client

    return signed_in


@pytest.fixture
def signed_in_client(app, user, sign_in):
    """A test client signed in as `user`."""
    return sign_in(user, app.test_client())


@pytest.fixture
def user(make_user):
    """A plain user (example.com: the email validator refuses the special-use .test domain)."""
    return make_user(email="owner@example.com")
