"""Helpers for the auth tests: posting forms with their CSRF token, copying cookies between clients."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.conftest import csrf_token_from

SESSION_COOKIE = "tw_session"


def post_form(client, page_url: str, data: dict, action: str | None = None, **kwargs):
    """GET `page_url`, take its CSRF token, POST `data` to `action` (default: the same URL)."""
    page = client.get(page_url)
    assert page.status_code == 200, page.status_code
    payload = {"csrf_token": csrf_token_from(page.get_data(as_text=True)), **data}
    return client.post(action or page_url, data=payload, **kwargs)


def cookie_value(client, name: str = SESSION_COOKIE) -> str | None:
    cookie = client.get_cookie(name)
    return cookie.value if cookie else None


def clone_client(app, client):
    """A second client carrying a copy of `client`'s cookies (an attacker who copied them)."""
    copy = app.test_client()
    for name in (SESSION_COOKIE, "tw_remember"):
        value = cookie_value(client, name)
        if value:
            copy.set_cookie(name, value)
    return copy


def is_signed_in(client) -> bool:
    """True when the client reaches a signed-in page (the sessions page) instead of the sign-in redirect."""
    response = client.get("/auth/sessions")
    if response.status_code == 200:
        return True
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]
    return False


def session_rows(db, user_id: int):
    from models import UserSession
    db.session.expire_all()
    return db.session.scalars(select(UserSession).where(UserSession.user_id == user_id)
                              .order_by(UserSession.created_at)).all()


def audit_events(db, event_type: str | None = None):
    from models import AuditEvent
    db.session.expire_all()
    query = select(AuditEvent).order_by(AuditEvent.id)
    if event_type:
        query = query.where(AuditEvent.event_type == event_type)
    return db.session.scalars(query).all()


@pytest.fixture
def signed_in(client, user, login):
    """The default client, signed in as `user` through the form."""
    login(user)
    return client
