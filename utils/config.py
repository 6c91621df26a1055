"""All configuration is read here, once, from the environment (DESIGN §2).

`load_config()` returns a plain dict for `app.config`. It raises `ConfigError` naming the variable
when a required value is missing or malformed; the process entry points turn that into a one-line
message and a non-zero exit. There is never a default secret or a plaintext fallback.
"""
from __future__ import annotations

import os
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

from cryptography.fernet import Fernet

MIN_SECRET_KEY_LENGTH = 32


class ConfigError(Exception):
    """A required setting is missing or malformed; the message names the variable."""


def _require_secret_key(env) -> str:
    value = env.get("SECRET_KEY", "").strip()
    if not value:
        raise ConfigError("SECRET_KEY is not set")
    if len(value) < MIN_SECRET_KEY_LENGTH:
        raise ConfigError(f"SECRET_KEY must be at least {MIN_SECRET_KEY_LENGTH} characters")
    return value


def _require_encryption_keys(env) -> list[str]:
    raw = env.get("ENCRYPTION_KEYS", "").strip()
    if not raw:
        raise ConfigError("ENCRYPTION_KEYS is not set")
    keys = [part.strip() for part in raw.split(",") if part.strip()]
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key.encode())
        except (ValueError, TypeError):
            raise ConfigError(f"ENCRYPTION_KEYS entry {position} is not a valid Fernet key") from None
    if not keys:
        raise ConfigError("ENCRYPTION_KEYS is not set")
    return keys


def _int(env, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise ConfigError(f"{name} must be between {minimum} and {maximum if maximum is not None else 'any'}")
    return value


def _choice(env, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, default).strip() or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}")
    return value


def _bool(env, name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    if raw.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false")


def redis_db_url(url: str, db: int) -> str:
    """The same Redis server as `url`, database number `db`."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def _redis_url(env) -> str:
    url = env.get("REDIS_URL", "redis://127.0.0.1:6379/0").strip()
    if urlsplit(url).scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError("REDIS_URL must be a redis:// URL")
    return url


def _broker_settings(env) -> dict:
    """Client ids, secrets and endpoints of the linkable brokers (offered only when the id is set)."""
    defaults = {
        "SCHWAB_AUTHORIZE_URL": "https://api.schwabapi.com/v1/oauth/authorize",
        "SCHWAB_TOKEN_URL": "https://api.schwabapi.com/v1/oauth/token",
        "SCHWAB_API_BASE_URL": "https://api.schwabapi.com",
        "COINBASE_AUTHORIZE_URL": "https://login.coinbase.com/oauth2/auth",
        "COINBASE_TOKEN_URL": "https://login.coinbase.com/oauth2/token",
        "COINBASE_API_BASE_URL": "https://api.coinbase.com/api/v3/brokerage",
        "ETRADE_API_BASE_URL": "https://api.etrade.com",
        "ETRADE_AUTHORIZE_URL": "https://us.etrade.com/e/t/etws/authorize",
    }
    names = ["SCHWAB_CLIENT_ID", "SCHWAB_CLIENT_SECRET", "COINBASE_CLIENT_ID", "COINBASE_CLIENT_SECRET",
             "ETRADE_CONSUMER_KEY", "ETRADE_CONSUMER_SECRET", *defaults]
    return {name: env.get(name, defaults.get(name, "")).strip() for name in names}


def load_config(env=None, overrides: dict | None = None) -> dict:
    """Read, validate and return the whole configuration; raises ConfigError naming the bad variable."""
    env = dict(os.environ if env is None else env)
    env.update({key: str(value) for key, value in (overrides or {}).items() if isinstance(value, (str, int))})
    redis_url = _redis_url(env)
    environment = _choice(env, "TRADEWARDEN_ENV", "production", ("production", "development", "test"))
    local = environment != "production"
    config = {
        "ENV_NAME": environment,
        "SECRET_KEY": _require_secret_key(env),
        "ENCRYPTION_KEYS": _require_encryption_keys(env),
        "SQLALCHEMY_DATABASE_URI": env.get("DATABASE_URL", "").strip() or "sqlite:///instance/tradewarden.db",
        "REDIS_URL": redis_url,
        "CACHE_REDIS_URL": env.get("CACHE_REDIS_URL", "").strip() or redis_db_url(redis_url, 1),
        "RATELIMIT_STORAGE_URI": env.get("RATELIMIT_STORAGE_URI", "").strip() or redis_db_url(redis_url, 2),
        "PUBLIC_BASE_URL": env.get("PUBLIC_BASE_URL", "http://127.0.0.1:5000").strip().rstrip("/"),
        "STOPLOSS_INTERVAL_SECONDS": _int(env, "STOPLOSS_INTERVAL_SECONDS", 60, minimum=1),
        "MARKET_DATA_SOURCE": _choice(env, "MARKET_DATA_SOURCE", "simulated", ("simulated", "manual", "schwab")),
        "QUOTE_CACHE_TTL_SECONDS": _int(env, "QUOTE_CACHE_TTL_SECONDS", 5, minimum=1),
        "STORAGE_BACKEND": _choice(env, "STORAGE_BACKEND", "local", ("local", "s3")),
        "STORAGE_DIR": env.get("STORAGE_DIR", "instance/files").strip(),
        "S3_BUCKET": env.get("S3_BUCKET", "").strip(),
        "S3_ENDPOINT_URL": env.get("S3_ENDPOINT_URL", "").strip(),
        "SUPERADMIN_EMAIL": env.get("SUPERADMIN_EMAIL", "").strip(),
        "SUPERADMIN_PASSWORD": env.get("SUPERADMIN_PASSWORD", ""),
        "SESSION_IDLE_MINUTES": _int(env, "SESSION_IDLE_MINUTES", 30, minimum=1),
        "SESSION_ABSOLUTE_HOURS": _int(env, "SESSION_ABSOLUTE_HOURS", 12, minimum=1),
        "REMEMBER_ME_DAYS": _int(env, "REMEMBER_ME_DAYS", 30, minimum=1, maximum=30),
        "PAPER_STARTING_CASH": env.get("PAPER_STARTING_CASH", "100000").strip(),
        "API_KEY_ROTATION_GRACE_HOURS": _int(env, "API_KEY_ROTATION_GRACE_HOURS", 24, minimum=0, maximum=168),
        "API_RATE_LIMIT": env.get("API_RATE_LIMIT", "600/minute").strip(),
        "LOCAL_DEVELOPMENT": local,
        **_broker_settings(env),
    }
    config.update(_flask_settings(config, local))
    return config


def _flask_settings(config: dict, local: bool) -> dict:
    """Settings for Flask and its extensions, derived from the validated values."""
    return {
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": not local,
        "SESSION_COOKIE_NAME": "tw_session",
        "REMEMBER_COOKIE_NAME": "tw_remember",
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SECURE": not local,
        "REMEMBER_COOKIE_DURATION": timedelta(days=config["REMEMBER_ME_DAYS"]),
        "PERMANENT_SESSION_LIFETIME": timedelta(hours=config["SESSION_ABSOLUTE_HOURS"]),
        "WTF_CSRF_TIME_LIMIT": None,
        "MAX_CONTENT_LENGTH": 1024 * 1024,
        "RATELIMIT_HEADERS_ENABLED": True,
        "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
        "RATELIMIT_STORAGE_OPTIONS": {"socket_timeout": 1, "socket_connect_timeout": 1},
        "PREFERRED_URL_SCHEME": "http" if local else "https",
    }
