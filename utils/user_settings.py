"""The user's notification bot token: write-only, encrypted at rest (issue 2 item 11).

The token is shown back only as "set, ending in …1234". A stored value that no longer decrypts
(tampered, or its key was removed from ENCRYPTION_KEYS) reads as "unreadable": the user can set a
new one or remove it, and the plaintext is never returned.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sqlalchemy import select

from models import UserSettings
from utils import audit
from utils.errors import DecryptionFailed, ValidationFailed
from utils.extensions import db

log = logging.getLogger("tradewarden.settings")

MAX_TOKEN_LENGTH = 512
TOKEN_SHAPE = re.compile(r"[\x21-\x7e]{8,512}")  # printable ASCII, no spaces


@dataclass(frozen=True)
class TokenStatus:
    state: str  # "unset", "set" or "unreadable"
    last4: str = ""


def settings_for(user_id: int) -> UserSettings:
    """The user's settings row, created (and flushed) with defaults if missing."""
    settings = db.session.scalar(select(UserSettings).where(UserSettings.user_id == user_id))
    if settings is None:
        settings = UserSettings(user_id=user_id)
        db.session.add(settings)
        db.session.flush()
    return settings


def notification_token_status(user_id: int) -> TokenStatus:
    """Whether a token is stored and its last 4 characters; "unreadable" when it fails to decrypt."""
    settings = settings_for(user_id)
    try:
        token = settings.notification_bot_token
    except DecryptionFailed:
        log.warning("notification bot token of user %s does not decrypt", user_id)
        db.session.expire(settings, ["notification_bot_token"])
        return TokenStatus("unreadable")
    return TokenStatus("unset") if token is None else TokenStatus("set", token[-4:])


def set_notification_token(user_id: int, unsafe_token: str) -> TokenStatus:
    """Store a new token (encrypted), replacing any previous one; raises ValidationFailed."""
    token = (unsafe_token or "").strip()
    if not TOKEN_SHAPE.fullmatch(token):
        raise ValidationFailed("A bot token is 8 to 512 printable characters without spaces.",
                               details={"field": "token"})
    settings_for(user_id).notification_bot_token = token
    audit.record("settings.notification_token_set", user=user_id)
    return TokenStatus("set", token[-4:])


def remove_notification_token(user_id: int) -> None:
    """Forget the stored token (works even when it no longer decrypts)."""
    settings_for(user_id).notification_bot_token = None
    audit.record("settings.notification_token_removed", user=user_id)
