"""The auth flows leave audit events, and no password ever appears in one (issue 2 items 5 and 10)."""
from __future__ import annotations

import json

from tests.auth.conftest import audit_events, post_form, session_rows
from tests.conftest import TEST_PASSWORD

NEW_PASSWORD = "Fresh-Granite-42-Lantern"
WRONG_PASSWORD = "Wrong-Horse-7-Typo!"


def test_each_auth_flow_records_its_event_without_any_password(app, client, db, login):
    post_form(client, "/auth/register", {"email": "audit@example.com", "password": TEST_PASSWORD,
                                         "confirm": TEST_PASSWORD}, headers={"User-Agent": "AuditBrowser/1"})
    post_form(client, "/auth/sessions", {}, action="/auth/logout")
    post_form(client, "/auth/login", {"email": "audit@example.com", "password": WRONG_PASSWORD})
    post_form(client, "/auth/login", {"email": "audit@example.com", "password": TEST_PASSWORD})
    other = app.test_client()
    post_form(other, "/auth/login", {"email": "audit@example.com", "password": TEST_PASSWORD})
    other_id = session_rows(db, 1)[-1].id
    post_form(client, "/auth/sessions", {}, action=f"/auth/sessions/{other_id}/revoke")
    post_form(client, "/auth/password", {"current_password": TEST_PASSWORD, "new_password": NEW_PASSWORD,
                                         "confirm": NEW_PASSWORD})
    post_form(client, "/auth/sessions", {}, action="/auth/sessions/revoke-all")

    events = audit_events(db)
    types = [event.event_type for event in events]
    for expected in ("account.registered", "auth.logout", "auth.login_failed", "auth.login_succeeded",
                     "auth.session_revoked", "auth.password_changed", "auth.signed_out_everywhere"):
        assert expected in types, expected
    failed = next(event for event in events if event.event_type == "auth.login_failed")
    assert failed.details["reason"] == "bad_password" and failed.ip == "127.0.0.1" and failed.created_at.tzinfo
    everything = json.dumps([[e.event_type, e.details, e.user_agent, e.ip] for e in events])
    for secret in (TEST_PASSWORD, NEW_PASSWORD, WRONG_PASSWORD):
        assert secret not in everything
    assert all(event.user_id == 1 for event in events)


def test_a_failed_sign_in_for_an_unknown_email_is_recorded_without_a_user(client, db):
    post_form(client, "/auth/login", {"email": "ghost@example.com", "password": WRONG_PASSWORD})
    [event] = audit_events(db, "auth.login_failed")
    assert event.user_id is None and event.details["reason"] == "unknown_email"
    assert event.details["email"] == "ghost@example.com" and WRONG_PASSWORD not in json.dumps(event.details)
