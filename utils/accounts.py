"""Accounts: registration, password rules, argon2id hashing, authentication and lockout (issue 2 item 5).

Authentication answers one generic error for an unknown email, a wrong password, a locked or a
deactivated account, so the response never tells which emails exist.
"""
from __future__ import annotations

from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from email_validator import EmailNotValidError, validate_email
from flask import current_app, has_app_context
from sqlalchemy import select

from models import User, UserSettings, utcnow
from utils import audit
from utils.errors import Conflict, DomainError, ValidationFailed
from utils.extensions import db

PASSWORD_MIN, PASSPHRASE_MIN, PASSWORD_MAX = 8, 16, 128
ZXCVBN_MAX = 72
LOCKOUT_THRESHOLD = 20
LOCKOUT_DURATION = timedelta(minutes=15)
GENERIC_LOGIN_ERROR = "Email or password is incorrect."

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
_DUMMY_HASH = _hasher.hash("tradewarden-timing-equaliser")


class InvalidCredentials(DomainError):
    status, code, message = 401, "invalid_credentials", GENERIC_LOGIN_ERROR


def normalise_email(unsafe_email: str) -> str:
    """Lower-cased, validated email address; raises ValidationFailed with a field error."""
    # The special-use ".test" domain is only acceptable while running the test suite.
    testing = has_app_context() and current_app.config.get("ENV_NAME") == "test"
    try:
        result = validate_email((unsafe_email or "").strip(), check_deliverability=False,
                                test_environment=testing)
    except EmailNotValidError:
        raise ValidationFailed("Enter a valid email address.", details={"field": "email"}) from None
    return result.normalized.lower()


def password_problems(password: str, email: str = "") -> list[str]:
    """Every rule the password breaks (empty list when it is acceptable)."""
    problems = []
    if len(password) > PASSWORD_MAX:
        return [f"Use at most {PASSWORD_MAX} characters."]
    if len(password) < PASSPHRASE_MIN:
        if len(password) < PASSWORD_MIN:
            problems.append(f"Use at least {PASSWORD_MIN} characters (or a passphrase of {PASSPHRASE_MIN}+).")
        classes = [any(c.islower() for c in password), any(c.isupper() for c in password),
                   any(c.isdigit() for c in password), any(not c.isalnum() for c in password)]
        if not all(classes):
            problems.append("Mix upper- and lower-case letters, a digit and a special character, "
                            f"or use a passphrase of {PASSPHRASE_MIN}+ characters.")
    if not problems and _is_common(password, email):
        problems.append("This password is too common or too easy to guess.")
    return problems


def _is_common(password: str, email: str) -> bool:
    from zxcvbn import zxcvbn
    local_part = email.split("@")[0]
    user_inputs = [email, local_part, *(part for part in email.replace("@", " ").replace(".", " ").split() if part)]
    # zxcvbn refuses input over 72 characters; the first 72 of a longer password are a fair sample.
    return zxcvbn(password[:ZXCVBN_MAX], user_inputs=user_inputs)["score"] < 3


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(user: User | None, password: str) -> bool:
    """Constant-work check: an unknown user still costs one argon2 verification."""
    try:
        return _hasher.verify(user.password_hash if user else _DUMMY_HASH, password) and user is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def find_by_email(email: str) -> User | None:
    return db.session.scalar(select(User).where(User.email == email))


def register(unsafe_email: str, password: str) -> User:
    """Create an active user with default settings; raises ValidationFailed or Conflict."""
    email = normalise_email(unsafe_email)
    problems = password_problems(password, email)
    if problems:
        raise ValidationFailed(problems[0], details={"field": "password", "problems": problems})
    if find_by_email(email) is not None:
        raise Conflict("An account with this email already exists.", code="email_taken")
    user = User(email=email, password_hash=hash_password(password))
    db.session.add(user)
    db.session.add(UserSettings(user=user))
    db.session.flush()
    audit.record("account.registered", user=user)
    return user


def authenticate(unsafe_email: str, password: str) -> User:
    """The user for these credentials, or InvalidCredentials (always the same message).

    Counts consecutive failures; at LOCKOUT_THRESHOLD the account is soft-locked for LOCKOUT_DURATION.
    Records sign-in success/failure audit events.
    """
    try:
        email = normalise_email(unsafe_email)
    except ValidationFailed:
        email = None
    user = find_by_email(email) if email else None
    now = utcnow()
    password_ok = verify_password(user, password)
    if user is None or not user.is_active or (user.locked_until and user.locked_until > now) or not password_ok:
        _note_failure(user, email, password_ok)
        raise InvalidCredentials()
    user.failed_login_count, user.locked_until, user.last_login_at = 0, None, now
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    audit.record("auth.login_succeeded", user=user)
    return user


def _note_failure(user: User | None, email: str | None, password_ok: bool) -> None:
    reason = "unknown_email" if user is None else "inactive" if not user.is_active else \
        "locked" if password_ok else "bad_password"
    if user is not None and not password_ok:
        user.failed_login_count += 1
        if user.failed_login_count >= LOCKOUT_THRESHOLD:
            user.locked_until = utcnow() + LOCKOUT_DURATION
            user.failed_login_count = 0
            audit.record("auth.account_locked", user=user, details={"minutes": 15})
    audit.record("auth.login_failed", user=user, details={"reason": reason, "email": email or "invalid"})


def change_password(user: User, current_password: str, new_password: str) -> None:
    """Replace the password after checking the current one; bumps session_version (tokens die).

    The caller ends the user's other browser sessions. Raises ValidationFailed.
    """
    if not verify_password(user, current_password):
        raise ValidationFailed("The current password is not correct.", details={"field": "current_password"})
    problems = password_problems(new_password, user.email)
    if problems:
        raise ValidationFailed(problems[0], details={"field": "new_password", "problems": problems})
    user.password_hash = hash_password(new_password)
    user.session_version += 1
    audit.record("auth.password_changed", user=user)


def set_active(user: User, active: bool, actor: User) -> None:
    """Activate or deactivate a user; deactivation ends their sessions and tokens on the next request.

    Raises Conflict when an admin tries to deactivate their own account.
    """
    from utils.sessions import revoke_all_sessions
    if not active and actor is not None and getattr(actor, "id", actor) == user.id:
        raise Conflict("You cannot deactivate your own account.", code="cannot_deactivate_self")
    user.is_active = active
    if not active:
        user.session_version += 1
        revoke_all_sessions(user.id)
        from utils.api_auth import on_user_deactivated  # API keys and refresh tokens die with the account
        on_user_deactivated(user, actor)
    audit.record("admin.user_activated" if active else "admin.user_deactivated", user=user, actor=actor)


def users_page(page: int, per_page: int = 100):
    """One page of all users, oldest first (admin list)."""
    return db.paginate(select(User).order_by(User.created_at, User.id), page=max(page, 1), per_page=per_page,
                       error_out=False)


def ensure_admin(unsafe_email: str, password: str) -> User:
    """Make sure an active admin with this email exists (idempotent; the password is set if new)."""
    email = normalise_email(unsafe_email)
    user = find_by_email(email)
    if user is None:
        user = User(email=email, password_hash=hash_password(password), is_admin=True)
        db.session.add(user)
        db.session.add(UserSettings(user=user))
        db.session.flush()
        audit.record("admin.created", user=user)
    elif not user.is_admin or not user.is_active:
        user.is_admin, user.is_active = True, True
        audit.record("admin.promoted", user=user)
    return user
