"""Encryption at rest: MultiFernet over ENCRYPTION_KEYS (newest first) and an encrypted column type.

The key list comes from configuration only, never from SECRET_KEY. A ciphertext that does not
verify raises `DecryptionFailed`; plaintext is never returned in its place.
"""
from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app
from sqlalchemy import String, literal, select, type_coerce, update
from sqlalchemy.types import TypeDecorator

from utils.errors import DecryptionFailed

EXTENSION_KEY = "tradewarden.fernet"


def init_app(app) -> None:
    app.extensions[EXTENSION_KEY] = build_fernet(app.config["ENCRYPTION_KEYS"])


def build_fernet(keys: list[str]) -> MultiFernet:
    return MultiFernet([Fernet(key.encode()) for key in keys])


def _fernet() -> MultiFernet:
    return current_app.extensions[EXTENSION_KEY]


def encrypt(plaintext: str) -> str:
    """Encrypt text under the newest key."""
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str:
    """Decrypt text under any configured key; raises DecryptionFailed if none verifies it."""
    try:
        return _fernet().decrypt(ciphertext.encode()).decode()
    except (InvalidToken, ValueError, TypeError):
        raise DecryptionFailed() from None


class EncryptedText(TypeDecorator):
    """A text column stored as a Fernet token; reads give the plaintext back."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else encrypt(value)

    def process_result_value(self, value, dialect):
        return None if value is None else decrypt(value)


def encrypted_columns(metadata):
    """Every (table, column) in `metadata` whose type is EncryptedText."""
    for table in metadata.sorted_tables:
        for column in table.columns:
            if isinstance(column.type, EncryptedText):
                yield table, column


def rotate_all(session, metadata) -> int:
    """Re-encrypt every encrypted value under the newest key; returns how many values changed.

    Works on raw ciphertext (MultiFernet.rotate), so plaintext never leaves this function.
    Raises DecryptionFailed naming the row when a value verifies under no configured key.
    """
    fernet, changed = _fernet(), 0
    for table, column in encrypted_columns(metadata):
        pk = list(table.primary_key.columns)[0]
        rows = session.execute(select(pk, type_coerce(column, String)).where(column.isnot(None))).all()
        for row_id, token in rows:
            try:
                rotated = fernet.rotate(token.encode()).decode()
            except InvalidToken:
                raise DecryptionFailed(f"{table.name}.{column.name} row {row_id} does not decrypt") from None
            session.execute(update(table).where(pk == row_id).values({column.name: literal(rotated, String)}))
            changed += 1
    return changed
