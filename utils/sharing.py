"""Share links: a time-limited, use-limited public URL that serves a REDACTED export of the owner's trades.

The token is 32 random bytes (urlsafe base64), shown once; only its SHA-256 is stored. Each access is
ONE conditional UPDATE (not revoked, not expired, uses left) that must change exactly one row, so
concurrent requests on a single-use link give exactly one file. HEAD checks without using an access.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta

from flask import current_app
from prometheus_client import Counter
from sqlalchemy import func, select, update

from models import ExportFormat, ShareLink, Trade, User, utcnow
from utils import audit, exports
from utils.dbtypes import iso_utc
from utils.errors import Forbidden, Gone, NotFound, ValidationFailed
from utils.extensions import db

TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
DEFAULT_HOURS, MAX_HOURS = 24, 168
DEFAULT_ACCESSES, MAX_ACCESSES = 1, 100
DEFAULT_RATE_LIMIT = "30/minute"
PATH = "/api/v1/exports/share/"

ACCESSES = Counter("share_link_accesses_total", "Requests for a share link, by outcome.", ["outcome"])


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def share_url(token: str) -> str:
    """The public URL of a share link (built on PUBLIC_BASE_URL)."""
    return current_app.config["PUBLIC_BASE_URL"].rstrip("/") + PATH + token


def _bounded_int(unsafe_value, name: str, default: int, maximum: int) -> int:
    if unsafe_value is None or unsafe_value == "":
        return default
    if isinstance(unsafe_value, bool) or not isinstance(unsafe_value, int) or not 1 <= unsafe_value <= maximum:
        raise ValidationFailed(f"{name} must be a whole number from 1 to {maximum}.", details={"field": name})
    return unsafe_value


def create_link(user: User, unsafe_format, unsafe_filters, unsafe_hours=None,
                unsafe_max_accesses=None) -> tuple[ShareLink, str]:
    """Create a share link of the user's (filtered) trades as they are now; returns (link, token).

    The token is returned only here. Raises ValidationFailed for a bad format, filter or limit.
    """
    export_format = exports.parse_format(unsafe_format)
    filters = exports.parse_filters(unsafe_filters)
    hours = _bounded_int(unsafe_hours, "expires_in_hours", DEFAULT_HOURS, MAX_HOURS)
    max_accesses = _bounded_int(unsafe_max_accesses, "max_accesses", DEFAULT_ACCESSES, MAX_ACCESSES)
    plan = exports.ExportPlan(user_id=user.id, format=export_format, filters=filters)
    conditions = exports.trade_conditions(plan)
    count, max_id = db.session.execute(select(func.count(), func.max(Trade.id)).where(*conditions)).one()
    token = secrets.token_urlsafe(32)
    link = ShareLink(user_id=user.id, token_hash=hash_token(token), token_prefix=token[:8], format=export_format,
                     filters=filters.as_dict(), max_trade_id=max_id or 0, trade_count=count, created_at=utcnow(),
                     expires_at=utcnow() + timedelta(hours=hours), max_accesses=max_accesses)
    db.session.add(link)
    db.session.flush()
    audit.record("export.share_created", user=user, details={
        "share_link_id": link.id, "format": export_format.value, "expires_in_hours": hours,
        "max_accesses": max_accesses, "trade_count": count})
    return link, token


def _find(unsafe_token) -> ShareLink:
    token = unsafe_token if isinstance(unsafe_token, str) and TOKEN_PATTERN.fullmatch(unsafe_token) else None
    link = db.session.scalar(select(ShareLink).where(ShareLink.token_hash == hash_token(token))) if token else None
    if link is None:
        ACCESSES.labels("unknown").inc()
        raise NotFound("No such share link.")
    return link


def link_state(link: ShareLink, now: datetime | None = None) -> str:
    """active, revoked, expired or used_up."""
    now = now or utcnow()
    if link.revoked_at is not None:
        return "revoked"
    if link.expires_at <= now:
        return "expired"
    return "used_up" if link.accessed_count >= link.max_accesses else "active"


def _gone(link: ShareLink) -> Gone:
    state = link_state(link)
    ACCESSES.labels(state).inc()
    messages = {"revoked": "This share link was revoked.", "expired": "This share link has expired.",
                "used_up": "This share link has been used up."}
    return Gone(messages.get(state, "This share link is no longer available."), code=f"share_link_{state}")


def check_link(unsafe_token) -> ShareLink:
    """The link if it could be used now, without using it (HEAD); raises NotFound or Gone."""
    link = _find(unsafe_token)
    if link_state(link) != "active":
        raise _gone(link)
    ACCESSES.labels("checked").inc()
    return link


def use_link(unsafe_token) -> exports.ExportPlan:
    """Use one access of the link atomically and return the redacted export plan; raises NotFound or Gone.

    Changes accessed_count and last_accessed_at (one conditional UPDATE) and records an audit event.
    """
    link = _find(unsafe_token)
    now = utcnow()
    claimed = db.session.execute(
        update(ShareLink).where(ShareLink.id == link.id, ShareLink.revoked_at.is_(None), ShareLink.expires_at > now,
                                ShareLink.accessed_count < ShareLink.max_accesses)
        .values(accessed_count=ShareLink.accessed_count + 1, last_accessed_at=now),
        execution_options={"synchronize_session": False}).rowcount == 1
    if not claimed:
        db.session.refresh(link)
        raise _gone(link)
    ACCESSES.labels("served").inc()
    exports.GENERATED.labels(link.format.value, "share").inc()
    exports.DOWNLOADED.labels(link.format.value).inc()
    audit.record("export.share_accessed", user=link.user_id,
                 details={"share_link_id": link.id, "accessed_by": "public"})
    return exports.ExportPlan(user_id=link.user_id, format=ExportFormat(link.format),
                              filters=exports.parse_filters(link.filters), redacted=True,
                              max_trade_id=link.max_trade_id, generated_at=now)


def list_links(user: User) -> list[ShareLink]:
    """The user's share links, newest first."""
    return list(db.session.scalars(select(ShareLink).where(ShareLink.user_id == user.id)
                                   .order_by(ShareLink.id.desc()).limit(200)))


def revoke_by_token(user: User, unsafe_token) -> ShareLink:
    """Revoke a link by its token; raises NotFound (unknown) or Forbidden (someone else's link)."""
    link = _find(unsafe_token)
    if link.user_id != user.id:
        raise Forbidden("Only the owner can revoke this share link.")
    return _revoke(user, link)


def revoke_by_id(user: User, link_id: int) -> ShareLink:
    """Revoke one of the user's links by id; raises NotFound for an unknown id or another user's link."""
    link = db.session.scalar(select(ShareLink).where(ShareLink.id == link_id, ShareLink.user_id == user.id))
    if link is None:
        raise NotFound("No such share link.")
    return _revoke(user, link)


def _revoke(user: User, link: ShareLink) -> ShareLink:
    if link.revoked_at is None:
        link.revoked_at = utcnow()
        audit.record("export.share_revoked", user=user, details={"share_link_id": link.id})
    return link


def serialize_link(link: ShareLink) -> dict:
    """The owner's view of a link (never the token: only its first characters)."""
    return {"id": link.id, "token_prefix": link.token_prefix, "format": link.format.value, "filters": link.filters,
            "trade_count": link.trade_count, "state": link_state(link), "created_at": iso_utc(link.created_at),
            "expires_at": iso_utc(link.expires_at), "max_accesses": link.max_accesses,
            "accessed_count": link.accessed_count, "last_accessed_at": iso_utc(link.last_accessed_at),
            "revoked_at": iso_utc(link.revoked_at)}


def rate_limit() -> tuple[int, int]:
    """(requests, seconds) per client IP for the public endpoint (`SHARE_LINK_RATE_LIMIT`, default 30/minute)."""
    from utils.api_auth import parse_rate
    return parse_rate(current_app.config.get("SHARE_LINK_RATE_LIMIT") or DEFAULT_RATE_LIMIT)
