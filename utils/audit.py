"""The audit log: who did what, from where, when (UTC). Never a secret; CR/LF cannot forge a line.

`record()` adds an AuditEvent to the session (the route or task commits). Each event is also
written as one JSON line to the `tradewarden.audit` logger, where newlines are escaped by JSON.
"""
from __future__ import annotations

import json
import logging
import re

from flask import has_request_context, request
from sqlalchemy import select

from models import AuditEvent, User, utcnow
from utils.extensions import db

log = logging.getLogger("tradewarden.audit")

SECRET_KEYS = re.compile(r"pass|secret|token|key|authorization|cookie|verifier|code", re.IGNORECASE)
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_TEXT = 256


def clean_text(value: str, limit: int = MAX_TEXT) -> str:
    """Make untrusted text safe for a log line: control characters (CR/LF…) become escapes."""
    return CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))[:limit]


def _clean_details(details: dict | None) -> dict:
    cleaned = {}
    for key, value in (details or {}).items():
        key = clean_text(key, 64)
        if SECRET_KEYS.search(key) and not key.endswith(("_id", "_prefix", "_count", "_type", "_name")):
            cleaned[key] = "[redacted]"
        elif isinstance(value, (int, float, bool)) or value is None:
            cleaned[key] = value
        else:
            cleaned[key] = clean_text(value)
    return cleaned


def record(event_type: str, user=None, actor=None, details: dict | None = None) -> AuditEvent:
    """Add one audit event for `user` (the subject) done by `actor` (default: the user)."""
    user_id = getattr(user, "id", user)
    actor_id = getattr(actor, "id", actor) if actor is not None else user_id
    event = AuditEvent(event_type=event_type, user_id=user_id, actor_id=actor_id, details=_clean_details(details),
                       created_at=utcnow(), ip=_request_ip(), user_agent=_request_agent())
    db.session.add(event)
    log.info(json.dumps({"event": event_type, "user_id": user_id, "actor_id": actor_id, "ip": event.ip,
                         "details": event.details}, sort_keys=True))
    return event


def record_safely(event_type: str, user=None, details: dict | None = None) -> None:
    """Record and commit an event from an error path, in its own transaction; never raises."""
    from flask_login import current_user
    try:
        if user is None and current_user and current_user.is_authenticated:
            user = current_user.id
        db.session.rollback()
        record(event_type, user=user, details=details)
        db.session.commit()
    except Exception:  # the audit write must not turn a 4xx into a 500 (e.g. database down)
        db.session.rollback()
        log.warning("could not store audit event %s", event_type)


def _request_ip() -> str | None:
    return clean_text(request.remote_addr or "", 64) if has_request_context() else None


def _request_agent() -> str | None:
    return clean_text(request.user_agent.string or "", 512) if has_request_context() else None


# --- reading the log (pages /audit and /admin/audit) ----------------------------------------------

PAGE_SIZE = 50


def page_number(unsafe_page) -> int:
    """A page number from the query string: a whole number ≥ 1, anything else means page 1."""
    try:
        return max(1, min(int(unsafe_page), 100_000))
    except (TypeError, ValueError):
        return 1


def events_for_user(user_id: int, page: int = 1):
    """One page of the events about `user_id`, newest first (a Flask-SQLAlchemy Pagination)."""
    query = select(AuditEvent).where(AuditEvent.user_id == user_id) \
        .order_by(AuditEvent.created_at.desc(), AuditEvent.id.desc())
    return db.paginate(query, page=page, per_page=PAGE_SIZE, error_out=False, count=True)


def search_events(unsafe_event_type: str = "", unsafe_email: str = "", page: int = 1):
    """One page of all events, newest first, optionally filtered by event type and the user's email."""
    query = select(AuditEvent).outerjoin(User, User.id == AuditEvent.user_id) \
        .order_by(AuditEvent.created_at.desc(), AuditEvent.id.desc())
    event_type = (unsafe_event_type or "").strip()[:64]
    if event_type:
        query = query.where(AuditEvent.event_type == event_type)
    email = (unsafe_email or "").strip().lower()[:254]
    if email:
        query = query.where(User.email == email)
    return db.paginate(query, page=page, per_page=PAGE_SIZE, error_out=False, count=True)


def event_types() -> list[str]:
    """Every event type present in the log, for the admin filter."""
    return list(db.session.scalars(select(AuditEvent.event_type).distinct().order_by(AuditEvent.event_type)))


def emails_by_user_id(events) -> dict[int, str]:
    """The email of every user (subject or actor) mentioned in `events`, for display."""
    ids = {event.user_id for event in events} | {event.actor_id for event in events}
    ids.discard(None)
    if not ids:
        return {}
    return dict(db.session.execute(select(User.id, User.email).where(User.id.in_(ids))).all())
