"""Server-side browser sessions (issue 2 item 6).

The signed cookie carries only a random session token; the `UserSession` row (found by the token's
SHA-256) decides whether the request is signed in. Revocation, password change, deactivation,
idle timeout and absolute lifetime all take effect on the next request.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta

from flask import current_app, g, request, session
from flask_login import current_user, login_user, logout_user
from sqlalchemy import select, update

from models import User, UserSession, utcnow
from utils import audit
from utils.extensions import db, login_manager

TOUCH_INTERVAL = timedelta(seconds=60)
COOKIELESS_BLUEPRINTS = {"health", "api"}


def init_app(app) -> None:
    login_manager.session_protection = None  # the server-side record is the protection
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please sign in to continue."
    login_manager.login_message_category = "info"
    login_manager.user_loader(load_user)
    app.before_request(_load_user_early)
    app.teardown_request(_forget_request_state)


def _forget_request_state(_error=None) -> None:
    """Drop the signed-in user and CSRF token that Flask-Login and Flask-WTF cache on `g`.

    `g` outlives a request when an app context was already pushed (tests, scripts); the next request,
    maybe from another browser, must resolve its own user and token from its own cookie.
    """
    g.pop("_login_user", None)
    _forget_csrf_token()


def _forget_csrf_token() -> None:
    g.pop(current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token"), None)


def _load_user_early() -> None:
    """Resolve the signed-in user (session or remember cookie) before the view runs, so the loader's
    last-seen commit can never commit half-done view work. Probes, the token API and files are skipped."""
    if request.endpoint != "static" and (request.blueprint or "").split(".")[0] not in COOKIELESS_BLUEPRINTS:
        current_user._get_current_object()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(user: User, remember: bool = False) -> UserSession:
    """Sign `user` in: new server-side session, fresh cookie (the old session id never survives)."""
    session.clear()
    _forget_csrf_token()  # the CSRF secret went with the old session; forms rendered later get a new one
    token, now = secrets.token_urlsafe(32), utcnow()
    lifetime = (timedelta(days=current_app.config["REMEMBER_ME_DAYS"]) if remember
                else timedelta(hours=current_app.config["SESSION_ABSOLUTE_HOURS"]))
    record = UserSession(id=secrets.token_hex(16), user_id=user.id, token_hash=hash_token(token), created_at=now,
                         last_seen_at=now, expires_at=now + lifetime, remember=remember,
                         ip=(request.remote_addr or "")[:64], user_agent=(request.user_agent.string or "")[:512])
    db.session.add(record)
    session.permanent = True
    user.session_token, user.current_session = token, record
    login_user(user, remember=remember, duration=lifetime)
    return record


def load_user(token: str) -> User | None:
    """Flask-Login loader: the user of a live, unexpired session, or None (the cookie is refused)."""
    record = db.session.scalar(select(UserSession).where(UserSession.token_hash == hash_token(token)))
    if record is None or not is_live(record):
        return None
    user = db.session.get(User, record.user_id)
    if user is None or not user.is_active:
        return None
    now = utcnow()
    if now - record.last_seen_at >= TOUCH_INTERVAL:
        record.last_seen_at = now
        db.session.commit()
    user.session_token, user.current_session = token, record
    return user


def is_live(record: UserSession) -> bool:
    """Not revoked, within its absolute lifetime, and (unless remembered) not idle too long.

    The lifetime is re-checked against the current settings, so lowering them takes effect at once.
    """
    now, config = utcnow(), current_app.config
    lifetime = (timedelta(days=config["REMEMBER_ME_DAYS"]) if record.remember
                else timedelta(hours=config["SESSION_ABSOLUTE_HOURS"]))
    if record.revoked_at is not None or now >= min(record.expires_at, record.created_at + lifetime):
        return False
    idle = timedelta(minutes=config["SESSION_IDLE_MINUTES"])
    return record.remember or now - record.last_seen_at < idle


def end_current_session(user: User) -> None:
    """Sign out of this browser: the server-side record is revoked, so a copied cookie is useless."""
    if user.current_session is not None:
        user.current_session.revoked_at = utcnow()
    logout_user()
    session.clear()


def list_sessions(user: User) -> list[UserSession]:
    """The user's live sessions, newest activity first."""
    rows = db.session.scalars(select(UserSession).where(UserSession.user_id == user.id,
                                                        UserSession.revoked_at.is_(None))
                              .order_by(UserSession.last_seen_at.desc())).all()
    return [row for row in rows if is_live(row)]


def revoke_session(user: User, session_id: str) -> bool:
    """Revoke one of the user's own sessions (audited); False when it is not theirs or already ended."""
    result = db.session.execute(update(UserSession)
                                .where(UserSession.id == session_id, UserSession.user_id == user.id,
                                       UserSession.revoked_at.is_(None))
                                .values(revoked_at=utcnow()))
    if result.rowcount != 1:
        return False
    audit.record("auth.session_revoked", user=user, details={"session_id": session_id})
    return True


def sign_out(user: User) -> None:
    """Sign out of this browser only (audited); a copied cookie of this session is refused afterwards."""
    audit.record("auth.logout", user=user)
    end_current_session(user)


def sign_out_everywhere(user: User) -> int:
    """End every session of the user, this browser's included (audited); returns how many ended."""
    ended = revoke_all_sessions(user.id)
    audit.record("auth.signed_out_everywhere", user=user, details={"sessions_count": ended})
    end_current_session(user)
    return ended


def end_other_sessions(user: User) -> int:
    """End every session of the user except this browser's (after a password change)."""
    current_id = user.current_session.id if user.current_session is not None else None
    return revoke_all_sessions(user.id, except_session_id=current_id)


def revoke_all_sessions(user_id: int, except_session_id: str | None = None) -> int:
    """Revoke every live session of a user (optionally keeping one); returns how many ended."""
    query = update(UserSession).where(UserSession.user_id == user_id, UserSession.revoked_at.is_(None))
    if except_session_id is not None:
        query = query.where(UserSession.id != except_session_id)
    return db.session.execute(query.values(revoked_at=utcnow())).rowcount


_BROWSERS = (("Edg", "Edge"), ("OPR", "Opera"), ("Firefox", "Firefox"), ("Chromium", "Chromium"),
             ("Chrome", "Chrome"), ("Version", "Safari"))
_SYSTEMS = (("Android", "Android"), ("iPhone", "iOS"), ("iPad", "iPadOS"), ("Windows", "Windows"),
            ("Mac OS X", "macOS"), ("CrOS", "ChromeOS"), ("Linux", "Linux"))


def describe_agent(user_agent: str | None) -> str:
    """A short human label for a User-Agent header, e.g. "Firefox 128 on Linux" (best effort)."""
    agent = user_agent or ""
    browser = next((f"{label} {match.group(1)}" for token, label in _BROWSERS
                    if (match := re.search(rf"\b{token}/(\d+)", agent))), None)
    if "HeadlessChrome/" in agent:
        browser = "Headless Chrome " + re.search(r"HeadlessChrome/(\d+)", agent).group(1)
    system = next((label for token, label in _SYSTEMS if token in agent), None)
    if browser is None:
        return agent[:40] or "Unknown browser"
    return f"{browser} on {system}" if system else browser


def admin_required(view):
    """Route decorator: signed-in admins only; anyone else gets 403 and an audit event."""
    from functools import wraps

    from flask_login import current_user, login_required

    from utils import audit
    from utils.errors import Forbidden

    @wraps(view)
    @login_required
    def wrapper(*args, **kwargs):
        if not current_user.is_admin:
            audit.record_safely("authz.denied", user=current_user.id, details={"path": request.path})
            raise Forbidden("Administrators only.")
        return view(*args, **kwargs)

    return wrapper
