"""Configuration is read in one place and fails closed: no default secret, no plaintext fallback."""
from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from utils.config import ConfigError, load_config, redis_db_url

GOOD_SECRET = "s" * 48


def env(**overrides) -> dict:
    values = {"SECRET_KEY": GOOD_SECRET, "ENCRYPTION_KEYS": Fernet.generate_key().decode()}
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


def error_for(**overrides) -> str:
    with pytest.raises(ConfigError) as raised:
        load_config(env=env(**overrides))
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_a_complete_environment_loads_with_the_documented_defaults():
    config = load_config(env=env())
    assert config["REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert config["CACHE_REDIS_URL"] == "redis://127.0.0.1:6379/1"
    assert config["RATELIMIT_STORAGE_URI"] == "redis://127.0.0.1:6379/2"
    assert config["STOPLOSS_INTERVAL_SECONDS"] == 60
    assert config["MARKET_DATA_SOURCE"] == "simulated"
    assert config["QUOTE_CACHE_TTL_SECONDS"] == 5
    assert config["STORAGE_BACKEND"] == "local"
    assert config["PUBLIC_BASE_URL"] == "http://127.0.0.1:5000"
    assert config["SQLALCHEMY_DATABASE_URI"].endswith("/instance/tradewarden.db")
    assert config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:////"), "the default database path is absolute"


def test_production_is_the_default_environment_with_secure_cookies():
    config = load_config(env=env())
    assert config["LOCAL_DEVELOPMENT"] is False
    assert config["SESSION_COOKIE_SECURE"] is True and config["REMEMBER_COOKIE_SECURE"] is True


def test_development_environment_allows_plain_http_cookies():
    config = load_config(env=env(TRADEWARDEN_ENV="development"))
    assert config["LOCAL_DEVELOPMENT"] is True
    assert config["SESSION_COOKIE_SECURE"] is False


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_secret_key_is_refused(value):
    assert "SECRET_KEY" in error_for(SECRET_KEY=value)


def test_short_secret_key_is_refused():
    assert "SECRET_KEY" in error_for(SECRET_KEY="too-short")


@pytest.mark.parametrize("value", [None, "", " , ,"])
def test_missing_encryption_keys_are_refused(value):
    assert "ENCRYPTION_KEYS" in error_for(ENCRYPTION_KEYS=value)


def test_malformed_encryption_key_is_refused_naming_its_position():
    good = Fernet.generate_key().decode()
    message = error_for(ENCRYPTION_KEYS=f"{good},not-a-fernet-key")
    assert "ENCRYPTION_KEYS" in message and "2" in message
    assert "not-a-fernet-key" not in message, "the bad value itself is never echoed"


def test_encryption_keys_are_never_derived_from_the_secret_key():
    """With only SECRET_KEY set there is no encryption key: the app refuses to start."""
    with pytest.raises(ConfigError, match="ENCRYPTION_KEYS"):
        load_config(env={"SECRET_KEY": GOOD_SECRET})


def test_several_encryption_keys_keep_their_order_newest_first():
    new, old = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    assert load_config(env=env(ENCRYPTION_KEYS=f" {new} , {old} "))["ENCRYPTION_KEYS"] == [new, old]


@pytest.mark.parametrize("name", ["STOPLOSS_INTERVAL_SECONDS", "QUOTE_CACHE_TTL_SECONDS", "SESSION_IDLE_MINUTES",
                                  "SESSION_ABSOLUTE_HOURS", "REMEMBER_ME_DAYS", "API_KEY_ROTATION_GRACE_HOURS"])
@pytest.mark.parametrize("value", ["abc", "-1", "1.5"])
def test_malformed_numbers_are_refused(name, value):
    assert name in error_for(**{name: value})


def test_remember_me_cannot_exceed_thirty_days():
    assert "REMEMBER_ME_DAYS" in error_for(REMEMBER_ME_DAYS="31")


@pytest.mark.parametrize("name,value", [("MARKET_DATA_SOURCE", "yahoo"), ("STORAGE_BACKEND", "ftp"),
                                        ("TRADEWARDEN_ENV", "staging")])
def test_unknown_choices_are_refused(name, value):
    assert name in error_for(**{name: value})


@pytest.mark.parametrize("value", ["http://127.0.0.1:6379/0", "127.0.0.1:6379"])
def test_a_non_redis_url_is_refused(value):
    assert "REDIS_URL" in error_for(REDIS_URL=value)


def test_a_non_absolute_public_base_url_is_refused():
    assert "PUBLIC_BASE_URL" in error_for(PUBLIC_BASE_URL="tradewarden.example")


def test_cache_and_rate_limit_databases_follow_redis_url_unless_overridden():
    config = load_config(env=env(REDIS_URL="redis://cache.internal:6380/0",
                                 RATELIMIT_STORAGE_URI="redis://limits.internal:6379/5"))
    assert config["CACHE_REDIS_URL"] == "redis://cache.internal:6380/1"
    assert config["RATELIMIT_STORAGE_URI"] == "redis://limits.internal:6379/5"


def test_redis_db_url_keeps_credentials_and_replaces_the_database():
    assert redis_db_url("redis://:pw@host:1/0", 2) == "redis://:pw@host:1/2"


def test_broker_side_stops_are_on_by_default_and_can_be_switched_off():
    assert load_config(env=env())["STOPLOSS_BROKER_STOPS"] is True
    assert load_config(env=env(STOPLOSS_BROKER_STOPS="false"))["STOPLOSS_BROKER_STOPS"] is False
    assert "STOPLOSS_BROKER_STOPS" in error_for(STOPLOSS_BROKER_STOPS="sometimes")


def test_the_order_retry_backoff_base_is_a_decimal_number_of_seconds():
    assert load_config(env=env())["ORDERS_RETRY_BASE_SECONDS"] == "1"
    assert load_config(env=env(ORDERS_RETRY_BASE_SECONDS="0.25"))["ORDERS_RETRY_BASE_SECONDS"] == "0.25"
    assert "ORDERS_RETRY_BASE_SECONDS" in error_for(ORDERS_RETRY_BASE_SECONDS="soon")


def test_only_server_databases_pay_for_a_connection_pre_ping():
    """A pre-ping is a round trip on every checkout: worth it for a server that drops idle connections,
    pure cost for a SQLite file (the order path checks out a connection several times per order)."""
    sqlite = load_config(env=env(DATABASE_URL="sqlite:////tmp/tradewarden-config-test.db"))
    postgres = load_config(env=env(DATABASE_URL="postgresql://tw@db.internal/tradewarden"))
    assert sqlite["SQLALCHEMY_ENGINE_OPTIONS"]["pool_pre_ping"] is False
    assert postgres["SQLALCHEMY_ENGINE_OPTIONS"]["pool_pre_ping"] is True


@pytest.mark.parametrize("given", ["postgres://tw:pw@db.internal:5432/tradewarden",
                                   "postgresql://tw:pw@db.internal:5432/tradewarden"])
def test_a_postgresql_url_without_a_driver_uses_the_installed_psycopg(given):
    """Heroku hands out postgres://, which SQLAlchemy no longer knows; plain postgresql:// would look for
    psycopg2, which is not installed."""
    config = load_config(env=env(DATABASE_URL=given))
    assert config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://tw:pw@db.internal:5432/tradewarden"
    import sqlalchemy
    assert sqlalchemy.make_url(config["SQLALCHEMY_DATABASE_URI"]).get_dialect().driver == "psycopg"


def test_a_metrics_token_is_optional_but_not_short():
    assert load_config(env=env())["METRICS_TOKEN"] == ""
    assert load_config(env=env(METRICS_TOKEN="m" * 16))["METRICS_TOKEN"] == "m" * 16
    assert "METRICS_TOKEN" in error_for(METRICS_TOKEN="short")
