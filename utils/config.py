"""All configuration is read here, once, from the environment (DESIGN §2).

`load_config()` returns a plain dict for `app.config`. It raises `ConfigError` naming the variable
when a required value is missing or malformed; the process entry points turn that into a one-line
message and a non-zero exit. There is never a default secret or a plaintext fallback.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from cryptography.fernet import Fernet

from utils.sqlite_writers import TurnTakingConnection

MIN_SECRET_KEY_LENGTH = 32
MIN_METRICS_TOKEN_LENGTH = 16
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "sqlite:///instance/tradewarden.db"


class ConfigError(Exception):
    """A required setting is missing or malformed; the message names the variable."""


def _metrics_token(env) -> str:
    """METRICS_TOKEN: when set, /health/metrics answers only a scrape that presents it as a Bearer token."""
    value = env.get("METRICS_TOKEN", "").strip()
    if value and len(value) < MIN_METRICS_TOKEN_LENGTH:
        raise ConfigError(f"METRICS_TOKEN must be at least {MIN_METRICS_TOKEN_LENGTH} characters")
    return value


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
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(f"{name} must be {bound}")
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


def _database_url(env) -> str:
    """DATABASE_URL; a relative SQLite path is taken from the project root, whatever the working directory.
    A PostgreSQL URL without a driver (Heroku's postgres://) uses psycopg 3, the driver we install."""
    url = env.get("DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            url = "postgresql+psycopg://" + url[len(scheme):]
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        url = f"{prefix}{ROOT / url[len(prefix):]}"
    return url


def _public_base_url(env) -> str:
    url = env.get("PUBLIC_BASE_URL", "http://127.0.0.1:5000").strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError("PUBLIC_BASE_URL must be an absolute http(s) URL")
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


def _decimal_text(env, name: str, default: str) -> str:
    """A non-negative decimal setting, kept as text (the services turn it into a Decimal)."""
    from decimal import Decimal, InvalidOperation
    value = env.get(name, "").strip() or default
    try:
        parsed = Decimal(value)
    except InvalidOperation:
        raise ConfigError(f"{name} must be a decimal number") from None
    if not parsed.is_finite() or parsed < 0:
        raise ConfigError(f"{name} must be a non-negative decimal number")
    return value


def _market_settings(env) -> dict:
    """Market data and paper broker settings (section owner: market data / paper broker)."""
    return {
        "SIMULATED_SEED": _int(env, "SIMULATED_SEED", 42, minimum=0),
        "SIMULATED_SYMBOLS": env.get("SIMULATED_SYMBOLS", "").strip(),
        "SIMULATED_VOLATILITY_BPS": _int(env, "SIMULATED_VOLATILITY_BPS", 20, minimum=0, maximum=5000),
        "QUOTE_SPREAD_BPS": _int(env, "QUOTE_SPREAD_BPS", 4, minimum=0, maximum=1000),
        "QUOTE_MAX_AGE_SECONDS": _int(env, "QUOTE_MAX_AGE_SECONDS", 300, minimum=1),
        "MARKET_TICK_SECONDS": _int(env, "MARKET_TICK_SECONDS", 5, minimum=1),
        "PAPER_SLIPPAGE_BPS": _int(env, "PAPER_SLIPPAGE_BPS", 0, minimum=0, maximum=1000),
        "PAPER_FEE_PER_ORDER": _decimal_text(env, "PAPER_FEE_PER_ORDER", "0"),
        "PAPER_FEE_PER_UNIT": _decimal_text(env, "PAPER_FEE_PER_UNIT", "0"),
        "PAPER_LIQUIDITY_PER_TICK": _decimal_text(env, "PAPER_LIQUIDITY_PER_TICK", "1000000"),
    }


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
        "SQLALCHEMY_DATABASE_URI": _database_url(env),
        "REDIS_URL": redis_url,
        "CACHE_REDIS_URL": env.get("CACHE_REDIS_URL", "").strip() or redis_db_url(redis_url, 1),
        "RATELIMIT_STORAGE_URI": env.get("RATELIMIT_STORAGE_URI", "").strip() or redis_db_url(redis_url, 2),
        "PUBLIC_BASE_URL": _public_base_url(env),
        "STOPLOSS_INTERVAL_SECONDS": _int(env, "STOPLOSS_INTERVAL_SECONDS", 60, minimum=1),
        "POSITION_CHECK_SECONDS": _int(env, "POSITION_CHECK_SECONDS", 300, minimum=30),
        "STOPLOSS_BROKER_STOPS": _bool(env, "STOPLOSS_BROKER_STOPS", True),
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
        "METRICS_TOKEN": _metrics_token(env),
        "SHARE_LINK_RATE_LIMIT": env.get("SHARE_LINK_RATE_LIMIT", "30/minute").strip(),  # exports: per client IP
        # orders (issue 4): when a pending/submitting order counts as stuck for the recovery sweep, and a
        # test-only fault injection that pauses between the broker call and the commit (0 = off).
        "ORDERS_STUCK_AFTER_SECONDS": _int(env, "ORDERS_STUCK_AFTER_SECONDS", 30, minimum=1),
        # orders: an entry still unsent this long after it was placed is failed, not sent late (0 = no limit).
        "ORDERS_SEND_DEADLINE_SECONDS": _int(env, "ORDERS_SEND_DEADLINE_SECONDS", 300, minimum=0),
        "ORDERS_EXECUTE_FAULT_DELAY_SECONDS": _int(env, "ORDERS_EXECUTE_FAULT_DELAY_SECONDS", 0, minimum=0,
                                                   maximum=600),
        # orders: base of the BrokerUnavailable backoff (attempt n waits base * 2**(n-1) seconds).
        "ORDERS_RETRY_BASE_SECONDS": _decimal_text(env, "ORDERS_RETRY_BASE_SECONDS", "1"),
        "TRUSTED_PROXY_COUNT": _int(env, "TRUSTED_PROXY_COUNT", 0, minimum=0, maximum=5),
        "LOCAL_DEVELOPMENT": local,
        **_broker_settings(env),
        **_market_settings(env),
    }
    config.update(_flask_settings(config, local))
    return config


def _engine_options(database_url: str) -> dict:
    """A pre-ping (one round trip per checkout) finds server connections dropped while idle; a SQLite file
    has none to drop, and its writers take turns on a file lock (utils/sqlite_writers.py)."""
    if not database_url.startswith("sqlite"):
        return {"pool_pre_ping": True}
    if not database_url.startswith("sqlite:///") or ":memory:" in database_url:
        return {"pool_pre_ping": False}
    return {"pool_pre_ping": False, "connect_args": {"factory": TurnTakingConnection}}


def _flask_settings(config: dict, local: bool) -> dict:
    """Settings for Flask and its extensions, derived from the validated values."""
    return {
        "SQLALCHEMY_ENGINE_OPTIONS": _engine_options(config["SQLALCHEMY_DATABASE_URI"]),
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
