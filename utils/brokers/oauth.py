"""OAuth 2.0 for linked brokers (Schwab, Coinbase): the authlib client registry, encrypted token storage,
refresh before expiry under a Redis lock per connection, and revocation.

Token writes happen in their own short transaction (`_write_connection`) while the lock is held, so a
rotated single-use refresh token (Coinbase) is durable before any other worker can read the old one.
"""
from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import redis
import requests
from authlib.integrations.base_client import OAuthError
from authlib.integrations.flask_client import OAuth
from authlib.integrations.requests_client import OAuth2Session
from flask import current_app
from sqlalchemy.orm import Session

from models import AuditEvent, BrokerConnection, ConnectionStatus
from utils import locks
from utils.dbtypes import utcnow
from utils.errors import BrokerAuthExpired, BrokerUnavailable
from utils.extensions import db

log = logging.getLogger("tradewarden.brokers.oauth")

OAUTH2_BROKERS = ("schwab", "coinbase")
ALL_BROKERS = ("schwab", "coinbase", "etrade")
DISPLAY_NAMES = {"schwab": "Charles Schwab", "coinbase": "Coinbase", "etrade": "E*TRADE"}
AUTH_METHODS = {"schwab": "client_secret_basic", "coinbase": "client_secret_post"}
SCOPES = {"schwab": None, "coinbase": "wallet:accounts:read wallet:buys:create wallet:transactions:read offline_access"}
REFRESH_LEEWAY = timedelta(minutes=5)
LOCK_TIMEOUT_SECONDS = 30
LOCK_WAIT_SECONDS = 25
# A refresh answered with one of these can never succeed: the user must log in again.
PERMANENT_ERRORS = {"invalid_grant", "invalid_client", "unauthorized_client", "unsupported_token_type",
                    "invalid_request", "access_denied"}
_redis_clients: dict[str, redis.Redis] = {}


# --- configuration ------------------------------------------------------------------------------

def client_id_setting(broker: str) -> str:
    return "ETRADE_CONSUMER_KEY" if broker == "etrade" else f"{broker.upper()}_CLIENT_ID"


def configured_brokers() -> list[str]:
    """The brokers offered for linking: those whose client id (consumer key) is set."""
    return [broker for broker in ALL_BROKERS if current_app.config.get(client_id_setting(broker))]


def redirect_uri(broker: str) -> str:
    """The exact callback URL registered with the broker: PUBLIC_BASE_URL + /brokers/<broker>/callback."""
    return f"{current_app.config['PUBLIC_BASE_URL']}/brokers/{broker}/callback"


def _allow_loopback_http() -> None:
    """authlib refuses plain http; allow it only when every configured endpoint is on this machine."""
    config = current_app.config
    urls = [config.get(f"{b.upper()}_{part}", "") for b in OAUTH2_BROKERS for part in ("AUTHORIZE_URL", "TOKEN_URL")]
    loopback = [urlsplit(u).hostname in ("127.0.0.1", "localhost", "::1") for u in urls if u]
    secure = [urlsplit(u).scheme == "https" for u in urls if u]
    if any(loopback) and all(a or b for a, b in zip(loopback, secure)):
        os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")


def registry() -> OAuth:
    """The authlib Flask client registry for this app, with every configured OAuth 2.0 broker."""
    app = current_app._get_current_object()
    oauth = app.extensions.get("tradewarden.oauth")
    if oauth is None:
        _allow_loopback_http()
        oauth = OAuth(app)
        for broker in OAUTH2_BROKERS:
            if app.config.get(client_id_setting(broker)):
                oauth.register(broker, **_client_settings(broker))
        app.extensions["tradewarden.oauth"] = oauth
    return oauth


def _client_settings(broker: str) -> dict:
    config, prefix = current_app.config, broker.upper()
    kwargs = {"code_challenge_method": "S256", "token_endpoint_auth_method": AUTH_METHODS[broker]}
    if SCOPES[broker]:
        kwargs["scope"] = SCOPES[broker]
    return {"client_id": config[f"{prefix}_CLIENT_ID"], "client_secret": config[f"{prefix}_CLIENT_SECRET"],
            "authorize_url": config[f"{prefix}_AUTHORIZE_URL"], "access_token_url": config[f"{prefix}_TOKEN_URL"],
            "api_base_url": config[f"{prefix}_API_BASE_URL"], "client_kwargs": kwargs}


def _session(broker: str, token: dict | None = None) -> OAuth2Session:
    """An authlib requests session for token refresh/revocation outside the browser flow (workers too)."""
    _allow_loopback_http()
    config, prefix = current_app.config, broker.upper()
    session = OAuth2Session(config[f"{prefix}_CLIENT_ID"], config[f"{prefix}_CLIENT_SECRET"], token=token,
                            token_endpoint_auth_method=AUTH_METHODS[broker])
    session.timeout = 15
    return session


def revocation_url(broker: str) -> str:
    """RFC 7009 endpoint next to the token endpoint (…/oauth2/token → …/oauth2/revoke)."""
    token_url = current_app.config[f"{broker.upper()}_TOKEN_URL"]
    return token_url.rsplit("/", 1)[0] + "/revoke"


# --- token storage ------------------------------------------------------------------------------

def token_json(token: dict) -> tuple[str, datetime | None]:
    """The JSON to encrypt into `token_set` and the access token's expiry (UTC)."""
    kept = {key: token[key] for key in ("access_token", "refresh_token", "token_type", "expires_at", "scope")
            if key in token}
    if "expires_at" not in kept and token.get("expires_in"):
        kept["expires_at"] = int(utcnow().timestamp()) + int(token["expires_in"])
    expires = datetime.fromtimestamp(kept["expires_at"], timezone.utc) if kept.get("expires_at") else None
    return json.dumps(kept), expires


def load_token(connection: BrokerConnection) -> dict:
    """The decrypted token dict of a connection; raises BrokerAuthExpired when it is not usable."""
    if connection.status != ConnectionStatus.CONNECTED or not connection.token_set:
        raise BrokerAuthExpired(f"The {DISPLAY_NAMES.get(connection.broker.value, 'broker')} link is "
                                f"{connection.status.value}; link the account again on the Brokers page.")
    return json.loads(connection.token_set)


def needs_refresh(expires_at: datetime | None, leeway: timedelta = REFRESH_LEEWAY) -> bool:
    return expires_at is not None and expires_at - utcnow() <= leeway


def redis_client() -> redis.Redis:
    url = current_app.config["CACHE_REDIS_URL"]
    if url not in _redis_clients:
        _redis_clients[url] = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    return _redis_clients[url]


# --- refresh ------------------------------------------------------------------------------------

def fresh_access_token(connection: BrokerConnection) -> str:
    """An access token valid for at least 5 more minutes, refreshing first if needed.

    Raises BrokerAuthExpired when the link is gone for good, BrokerUnavailable when the broker is down.
    """
    token = load_token(connection)
    if needs_refresh(connection.token_expires_at):
        refreshed = refresh_connection(connection.id)
        if refreshed is not None:
            token = refreshed
            db.session.expire(connection)
    return token["access_token"]


def refresh_connection(connection_id: int, leeway: timedelta = REFRESH_LEEWAY) -> dict | None:
    """Refresh one connection's tokens under a Redis lock; only the first of many racing callers calls
    the broker, the others read what it saved. Returns the current token dict, or None for a
    connection not committed yet (being linked right now, so its token is brand new).

    Raises BrokerAuthExpired (and marks the connection expired) on a permanent refusal.
    """
    lock = redis_client().lock(f"tradewarden:broker-refresh:{connection_id}", timeout=LOCK_TIMEOUT_SECONDS,
                               blocking_timeout=LOCK_WAIT_SECONDS)
    with locks.holding(lock,
                       unavailable=BrokerUnavailable("Token refresh is paused: the lock service is unreachable."),
                       busy=BrokerUnavailable("Another worker is still refreshing this broker link; try again "
                                              "shortly.")):
        return _refresh_locked(connection_id, leeway)


def _refresh_locked(connection_id: int, leeway: timedelta) -> dict:
    with Session(db.engine, expire_on_commit=False) as session:
        connection = session.get(BrokerConnection, connection_id)
        if connection is None:
            return None
        token = load_token(connection)
        if not needs_refresh(connection.token_expires_at, leeway):
            return token  # someone refreshed while we waited for the lock
        broker = connection.broker.value
        try:
            new_token = _session(broker, token).refresh_token(current_app.config[f"{broker.upper()}_TOKEN_URL"],
                                                               refresh_token=token.get("refresh_token"))
        except OAuthError as error:
            return _refresh_refused(session, connection, error)
        except (requests.RequestException, ValueError) as error:
            raise BrokerUnavailable(f"{DISPLAY_NAMES[broker]} could not refresh the link right now.") from error
        merged = {**token, **dict(new_token)}  # no refresh_token in the answer (Schwab): keep the old one
        connection.token_set, connection.token_expires_at = token_json(merged)
        connection.last_refreshed_at = utcnow()
        session.commit()
        return json.loads(connection.token_set)


def _refresh_refused(session: Session, connection: BrokerConnection, error: OAuthError) -> dict:
    if error.error not in PERMANENT_ERRORS:
        raise BrokerUnavailable("The broker refused to refresh the link for now.") from error
    mark_expired(session, connection, f"The broker ended the link ({error.error}). Link the account again.")
    session.commit()
    raise BrokerAuthExpired(connection.status_detail)


def mark_expired(session: Session, connection: BrokerConnection, detail: str) -> None:
    """Turn a connection `expired`, forget its tokens and leave an audit event (in `session`)."""
    connection.status, connection.status_detail = ConnectionStatus.EXPIRED, detail[:255]
    connection.token_set = None
    session.add(AuditEvent(event_type="broker.link_expired", user_id=connection.user_id, actor_id=None,
                           details={"broker": connection.broker.value, "connection_id": connection.id},
                           created_at=utcnow()))


def revoke_tokens(connection: BrokerConnection) -> bool:
    """Ask the broker to revoke the refresh token (RFC 7009). Best effort: returns False if it failed."""
    if not connection.token_set:
        return False
    token, broker = json.loads(connection.token_set), connection.broker.value
    try:
        response = _session(broker).revoke_token(revocation_url(broker), token.get("refresh_token")
                                                 or token.get("access_token"), token_type_hint="refresh_token")
    except (requests.RequestException, OAuthError, ValueError):
        log.warning("revocation at %s failed for connection %s", broker, connection.id)
        return False
    return response.status_code == 200


def expiring_connection_ids(within: timedelta) -> list[int]:
    """Ids of connected OAuth 2.0 links whose access token expires within `within`."""
    from sqlalchemy import select
    query = select(BrokerConnection.id).where(
        BrokerConnection.status == ConnectionStatus.CONNECTED,
        BrokerConnection.broker.in_(OAUTH2_BROKERS),
        BrokerConnection.token_expires_at <= utcnow() + within)
    return list(db.session.scalars(query))


# --- what linking learns about accounts ---------------------------------------------------------

class LinkedAccount:
    """One account found at the broker while linking (stored encrypted as BrokerAccount)."""

    def __init__(self, number: str, account_hash: str | None, name: str | None, account_type: str | None):
        self.number, self.account_hash, self.name, self.account_type = number, account_hash, name, account_type
