"""Server-side browser sessions (issue 2 item 6).

The signed cookie carries only a random session token; the `UserSession` row (found by the token's
SHA-256) decides whether the request is signed in. Revocation, password change, deactivation,
idle timeout and absolute lifetime all take effect on the next request.
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from flask import current_app, request, session
from flask_login import login_user, logout_user
from sqlalchemy import select, update

from models import User, UserSession, utcnow
from utils.extensions import db, login_manager

TOUCH_INTERVAL = timedelta(seconds=60)


def init_app(app) -> None:
    login_manager.session_protection = None  # the server-side record is the protection
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please sign in to continue."
    login_manager.login_message_category = "info"
    login_manager.user_loader(load_user)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(user: User, remember: bool = False) -> UserSession:
    """Sign `user` in: new server-side session, fresh cookie (the old session id never survives)."""
    session.clear()
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
    """Not revoked, not past its absolute expiry, and (unless remembered) not idle too long."""
    now = utcnow()
    if record.revoked_at is not None or now >= record.expires_at:
        return False
    idle = timedelta(minutes=current_app.config["SESSION_IDLE_MINUTES"])
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
    """Revoke one of the user's own sessions; False when it is not theirs or already ended."""
    result = db.session.execute(update(UserSession)
                                .where(UserSession.id == session_id, UserSession.user_id == user.id,
                                       UserSession.revoked_at.is_(None))
                                .values(revoked_at=utcnow()))
    return result.rowcount == 1


def revoke_all_sessions(user_id: int, except_session_id: str | None = None) -> int:
    """Revoke every live session of a user (optionally keeping one); returns how many ended."""
    query = update(UserSession).where(UserSession.user_id == user_id, UserSession.revoked_at.is_(None))
    if except_session_id is not None:
        query = query.where(UserSession.id != except_session_id)
    return db.session.execute(query.values(revoked_at=utcnow())).rowcount


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
