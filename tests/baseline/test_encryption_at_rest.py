"""Encryption at rest (item 11): the bot token is stored only as a Fernet token, tampering is handled,
and `flask rotate-encryption-key` moves every encrypted value to the newest key."""
from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from main import create_app
from models import UserSettings
from tests.conftest import base_config, csrf_token_from, raw_sql
from utils import crypto, user_settings
from utils.errors import DecryptionFailed

TOKEN = "7391827364:AAH-plaintext-bot-token-9f3k"


def raw_tokens(database_url: str) -> list[str | None]:
    return [row[0] for row in raw_sql(database_url, "SELECT notification_bot_token FROM user_settings ORDER BY id")]


def write_raw_token(database_url: str, user_id: int, value: str) -> None:
    raw_sql(database_url, "UPDATE user_settings SET notification_bot_token = :value WHERE user_id = :user_id",
            value=value, user_id=user_id)


def save_token(client, token: str = TOKEN):
    csrf = csrf_token_from(client.get("/settings").get_data(as_text=True))
    return client.post("/settings/notification-token", data={"csrf_token": csrf, "token": token})


def test_saved_token_is_stored_encrypted_and_shown_only_by_its_last_four(signed_in_client, database_url):
    assert save_token(signed_in_client).status_code == 302
    [stored] = raw_tokens(database_url)
    assert stored and TOKEN not in stored and "plaintext" not in stored
    assert stored.startswith("gAAAA"), "a Fernet token"
    page = signed_in_client.get("/settings").get_data(as_text=True)
    assert "…9f3k" in page and TOKEN not in page and "AAH-plaintext" not in page


def test_an_invalid_token_is_refused_inline(signed_in_client, database_url):
    response = save_token(signed_in_client, "has spaces in it")
    assert response.status_code == 422
    assert "without spaces" in response.get_data(as_text=True)
    assert raw_tokens(database_url) == [None]


def test_remove_forgets_the_token(signed_in_client, database_url):
    save_token(signed_in_client)
    csrf = csrf_token_from(signed_in_client.get("/settings").get_data(as_text=True))
    assert signed_in_client.post("/settings/notification-token/remove", data={"csrf_token": csrf}).status_code == 302
    assert raw_tokens(database_url) == [None]
    assert "Not set" in signed_in_client.get("/settings").get_data(as_text=True)


def tamper(ciphertext: str) -> str:
    middle = len(ciphertext) // 2
    return ciphertext[:middle] + ("A" if ciphertext[middle] != "A" else "B") + ciphertext[middle + 1:]


def test_a_tampered_token_shows_a_clear_message_and_can_be_replaced(db, user, signed_in_client, database_url):
    save_token(signed_in_client)
    write_raw_token(database_url, user.id, tamper(raw_tokens(database_url)[0]))
    db.session.expire_all()
    page = signed_in_client.get("/settings")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "can no longer be decrypted" in html and TOKEN not in html and "Traceback" not in html
    assert db.session.query(UserSettings).filter_by(user_id=user.id).one().daily_trade_limit == 100, \
        "the rest of the settings row still loads"
    assert save_token(signed_in_client, "fresh-token-1234").status_code == 302
    assert "…1234" in signed_in_client.get("/settings").get_data(as_text=True)


def test_decrypting_a_tampered_value_raises_never_returns_text(app):
    ciphertext = crypto.encrypt("secret value")
    with pytest.raises(DecryptionFailed):
        crypto.decrypt(tamper(ciphertext))
    with pytest.raises(DecryptionFailed):
        crypto.decrypt("not even a token")


def test_a_value_under_an_unknown_key_reads_as_unreadable(app, db, user, database_url):
    foreign = Fernet(Fernet.generate_key()).encrypt(TOKEN.encode()).decode()
    write_raw_token(database_url, user.id, foreign)
    assert user_settings.notification_token_status(user.id).state == "unreadable"


def app_with_keys(redis_url: str, database_url: str, *keys: bytes):
    return create_app(base_config(redis_url, database_url, ENCRYPTION_KEYS=",".join(k.decode() for k in keys)))


def make_owners(application, count: int) -> list[int]:
    from utils import accounts
    from utils.extensions import db
    with application.app_context():
        users = [accounts.register(f"owner{n}@example.com", "Correct-Horse-9-Battery") for n in range(count)]
        db.session.commit()
        return [user.id for user in users]


def store_tokens(application, tokens: dict[int, str]) -> None:
    with application.app_context():
        for user_id, token in tokens.items():
            user_settings.set_notification_token(user_id, token)
        from utils.extensions import db
        db.session.commit()


def read_tokens(application, user_ids) -> dict[int, str]:
    with application.app_context():
        return {user_id: user_settings.settings_for(user_id).notification_bot_token for user_id in user_ids}


# These tests build their own apps: no other app context may be active, or the CLI would run in it.

def test_rotate_encryption_key_re_encrypts_everything_under_the_newest_key(redis_server, database_url):
    old, new = Fernet.generate_key(), Fernet.generate_key()
    owners = make_owners(app_with_keys(redis_server.url, database_url, old), 3)
    tokens = {user_id: f"token-for-user-{user_id}" for user_id in owners}
    store_tokens(app_with_keys(redis_server.url, database_url, old), tokens)
    before = raw_tokens(database_url)

    rotating = app_with_keys(redis_server.url, database_url, new, old)
    result = rotating.test_cli_runner().invoke(args=["rotate-encryption-key"])
    assert result.exit_code == 0, result.output
    assert "re-encrypted 3 values" in result.output

    after = raw_tokens(database_url)
    assert all(a != b for a, b in zip(after, before) if b is not None)
    assert read_tokens(app_with_keys(redis_server.url, database_url, new), owners) == tokens
    with pytest.raises(DecryptionFailed):
        read_tokens(app_with_keys(redis_server.url, database_url, old), owners[:1])


def test_rotation_stops_without_changes_when_a_value_does_not_decrypt(redis_server, database_url):
    old, new = Fernet.generate_key(), Fernet.generate_key()
    owners = make_owners(app_with_keys(redis_server.url, database_url, old), 2)
    store_tokens(app_with_keys(redis_server.url, database_url, old), {owners[0]: "good-token", owners[1]: "other-token"})
    write_raw_token(database_url, owners[1], tamper(raw_tokens(database_url)[-1]))
    before = raw_tokens(database_url)
    result = app_with_keys(redis_server.url, database_url, new, old).test_cli_runner() \
        .invoke(args=["rotate-encryption-key"])
    assert result.exit_code != 0
    assert "does not decrypt" in result.output
    assert raw_tokens(database_url) == before, "nothing is half-rotated"
