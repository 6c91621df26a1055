"""The audit log (item 10): security events land in the database, input cannot forge a line, secrets
are redacted, /audit shows only the user's own events and /admin/audit everything, for admins only."""
from __future__ import annotations

import json
import logging
import re
from datetime import timedelta

import pytest

from models import AuditEvent, utcnow
from tests.baseline.test_security_headers import add_throwaway_routes
from utils import audit


def stored(db, event_type: str) -> list[AuditEvent]:
    return db.session.query(AuditEvent).filter_by(event_type=event_type).order_by(AuditEvent.id).all()


def test_crlf_in_user_input_cannot_forge_a_log_line_or_a_stored_value(app, db, user, caplog):
    caplog.set_level(logging.INFO, logger="tradewarden.audit")
    forged = "harmless\r\n2026-01-01 INFO tradewarden.audit {\"event\": \"auth.login_succeeded\"}"
    with app.test_request_context("/", headers={"User-Agent": "agent\tx"}):
        audit.record("test.event", user=user, details={"note": forged, "fiel\nd": "v"})
    db.session.commit()
    lines = [record.getMessage() for record in caplog.records if record.name == "tradewarden.audit"]
    assert len(lines) == 1
    assert "\n" not in lines[0] and "\r" not in lines[0]
    logged = json.loads(lines[0])
    assert logged["event"] == "test.event" and logged["user_id"] == user.id
    event = stored(db, "test.event")[0]
    values = [*event.details.keys(), *event.details.values(), event.user_agent]
    assert not any(re.search(r"[\r\n\t]", value) for value in values)
    assert event.details["note"].startswith("harmless\\x0d\\x0a")


def test_secrets_in_details_are_redacted(app, db, user, caplog):
    caplog.set_level(logging.INFO, logger="tradewarden.audit")
    details = {"password": "Hunter2-Hunter2", "new_password": "S3cret!pass", "refresh_token": "rt-abc",
               "client_secret": "cs-xyz", "api_key_id": 7, "email": "owner@example.com"}
    with app.test_request_context("/"):
        audit.record("test.secrets", user=user, details=details)
    db.session.commit()
    event = stored(db, "test.secrets")[0]
    for name in ("password", "new_password", "refresh_token", "client_secret"):
        assert event.details[name] == "[redacted]"
    assert event.details["api_key_id"] == 7 and event.details["email"] == "owner@example.com"
    text = json.dumps(event.details) + caplog.text
    for secret in ("Hunter2-Hunter2", "S3cret!pass", "rt-abc", "cs-xyz"):
        assert secret not in text


def test_a_rate_limit_hit_is_written_to_the_audit_log(app, db, user, sign_in):
    add_throwaway_routes(app)
    client = sign_in(user, app.test_client())
    assert client.get("/_test/limited").status_code == 200
    assert client.get("/_test/limited").status_code == 429
    events = stored(db, "security.rate_limited")
    assert len(events) == 1 and events[0].user_id == user.id and events[0].ip == "127.0.0.1"


def test_an_authorization_denial_is_written_to_the_audit_log(app, db, user, signed_in_client):
    assert signed_in_client.get("/admin/audit").status_code == 403
    events = stored(db, "authz.denied")
    assert len(events) == 1 and events[0].user_id == user.id
    assert events[0].details["path"] == "/admin/audit"


def add_events(db, user, count: int, event_type: str = "test.numbered") -> None:
    start = utcnow() - timedelta(hours=1)
    for number in range(count):
        db.session.add(AuditEvent(event_type=event_type, user_id=user.id, actor_id=user.id,
                                  details={"n": number}, created_at=start + timedelta(seconds=number)))
    db.session.commit()


def numbers_on(page_html: str) -> list[int]:
    return [int(n) for n in re.findall(r"<div>n: (\d+)</div>", page_html)]


def test_own_audit_page_lists_own_events_newest_first_paginated(db, user, make_user, signed_in_client):
    add_events(db, user, 60)  # plus the newest: account.registered, written when the user was made
    first = signed_in_client.get("/audit")
    assert first.status_code == 200
    assert "account.registered" in first.get_data(as_text=True)
    assert numbers_on(first.get_data(as_text=True)) == list(range(59, 10, -1))
    assert "page=2" in first.get_data(as_text=True)
    second = signed_in_client.get("/audit?page=2")
    assert numbers_on(second.get_data(as_text=True)) == list(range(10, -1, -1))
    assert signed_in_client.get("/audit?page=abc").status_code == 200, "a bad page number is page 1"


def test_another_users_events_never_appear_on_audit(db, user, make_user, signed_in_client):
    stranger = make_user(email="stranger@example.com")
    add_events(db, stranger, 3, event_type="test.strangers_event")
    add_events(db, user, 1, event_type="test.my_event")
    html = signed_in_client.get("/audit").get_data(as_text=True)
    assert "test.my_event" in html
    assert "test.strangers_event" not in html and "stranger@example.com" not in html


def test_audit_page_requires_sign_in(client):
    response = client.get("/audit")
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]


@pytest.fixture
def admin_client(app, make_user, sign_in):
    admin = make_user(email="admin@example.com", is_admin=True)
    return sign_in(admin, app.test_client())


def listed_types(page_html: str) -> set[str]:
    return set(re.findall(r'<span class="badge[^"]*">([^<]+)</span>', page_html))


def test_admin_audit_shows_everyone_and_filters_by_type_and_email(db, user, make_user, admin_client):
    other = make_user(email="other@example.com")
    add_events(db, user, 2, event_type="test.alpha")
    add_events(db, other, 2, event_type="test.beta")
    everything = admin_client.get("/admin/audit").get_data(as_text=True)
    assert {"test.alpha", "test.beta", "admin.created"} <= listed_types(everything)
    assert "owner@example.com" in everything and "other@example.com" in everything
    by_type = admin_client.get("/admin/audit?event_type=test.beta").get_data(as_text=True)
    assert listed_types(by_type) == {"test.beta"}
    by_email = admin_client.get("/admin/audit?email=OWNER@example.com").get_data(as_text=True)
    assert listed_types(by_email) == {"test.alpha", "account.registered"}


def test_admin_audit_is_refused_to_non_admins(signed_in_client):
    assert signed_in_client.get("/admin/audit").status_code == 403


def test_admin_audit_requires_sign_in(client):
    response = client.get("/admin/audit")
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]
