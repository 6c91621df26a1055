"""Linking broker accounts: connect (OAuth 2.0 with PKCE, or E*TRADE OAuth 1.0a), callback, disconnect,
the beat task's token upkeep, and the listing for the /brokers page and API (issue 6)."""
from __future__ import annotations

import logging
from datetime import timedelta

from authlib.integrations.base_client import MismatchingStateError, OAuthError
from sqlalchemy import select

from models import Broker as BrokerName
from models import BrokerAccount, BrokerConnection, ConnectionStatus
from utils import audit
from utils.brokers import get_broker, oauth
from utils.dbtypes import iso_utc, utcnow
from utils.errors import BadRequest, BrokerError, NotFound
from utils.extensions import db

log = logging.getLogger("tradewarden.broker_links")

UPKEEP_WINDOW = timedelta(minutes=10)


class LinkFailed(BadRequest):
    code, message = "broker_link_failed", "The broker link did not complete."


def require_configured(unsafe_broker: str) -> str:
    """The broker name if it is offered here; raises NotFound otherwise."""
    if unsafe_broker not in oauth.configured_brokers():
        raise NotFound("That broker is not available on this server.")
    return unsafe_broker


def start_link(unsafe_broker: str):
    """Begin linking: a redirect response to the broker's consent page (state + PKCE S256 in the session)."""
    broker = require_configured(unsafe_broker)
    if broker == "etrade":
        from utils.brokers import etrade
        return etrade.start_link()
    return oauth.registry().create_client(broker).authorize_redirect(oauth.redirect_uri(broker))


def complete_link_from_callback(user, unsafe_broker: str) -> BrokerConnection:
    """Finish a link from the broker's redirect: OAuth 2.0 code exchange with its PKCE verifier, or
    E*TRADE's `oauth_verifier` when E*TRADE has a callback URL on file. Stores tokens encrypted with the
    accounts; flushes. Raises LinkFailed (after an audit event) on a denied, forged or replayed answer."""
    broker = require_configured(unsafe_broker)
    if broker == "etrade":
        from flask import request
        from utils.brokers import etrade
        return etrade.complete_link(user, request.args.get("oauth_verifier", "")[:32])
    try:
        token = oauth.registry().create_client(broker).authorize_access_token()
    except MismatchingStateError:
        fail_link(user, broker, "state_mismatch",
              "The answer from the broker did not match a link you started (it may be old or forged). Try again.")
    except OAuthError as error:
        fail_link(user, broker, error.error or "oauth_error",
              f"{oauth.DISPLAY_NAMES[broker]} did not link the account: {error.description or error.error}.")
    return store_connection(user, broker, dict(token))


def store_connection(user, broker: str, token: dict) -> BrokerConnection:
    """Create the connection with encrypted tokens and fetch its accounts; flushes; audits `broker.linked`."""
    connection = BrokerConnection(user_id=user.id, broker=BrokerName(broker), status=ConnectionStatus.CONNECTED)
    connection.token_set, connection.token_expires_at = _token_fields(broker, token)
    connection.last_refreshed_at = utcnow()
    db.session.add(connection)
    db.session.flush()
    try:
        accounts = get_broker(connection).linked_accounts()
    except BrokerError as error:
        db.session.rollback()
        fail_link(user, broker, "accounts_unavailable", f"Linked, but the accounts could not be read: {error.message}")
    for found in accounts:
        db.session.add(BrokerAccount(user_id=user.id, connection=connection, account_number=found.number,
                                     account_hash=found.account_hash, last4=found.number[-4:],
                                     name=(found.name or "")[:100] or None,
                                     account_type=(found.account_type or "")[:32] or None))
    audit.record("broker.linked", user=user, details={"broker": broker, "connection_id": connection.id,
                                                      "account_count": len(accounts)})
    db.session.flush()
    return connection


def _token_fields(broker: str, token: dict):
    if broker == "etrade":
        from utils.brokers import etrade
        return etrade.token_fields(token)
    return oauth.token_json(token)


def fail_link(user, broker: str, reason: str, message: str):
    """Audit a failed link in its own transaction, then raise LinkFailed with a message for the user."""
    audit.record_safely("broker.link_failed", user=getattr(user, "id", None),
                        details={"broker": broker, "reason": reason})
    raise LinkFailed(message)


def owned_connection(user, connection_id: int) -> BrokerConnection:
    """The user's connection by id; another user's or a missing one raises NotFound."""
    connection = db.session.scalar(select(BrokerConnection).where(
        BrokerConnection.id == connection_id, BrokerConnection.user_id == user.id))
    if connection is None or connection.broker == BrokerName.PAPER:
        raise NotFound("No such broker connection.")
    return connection


def disconnect(user, connection_id: int) -> BrokerConnection:
    """Revoke at the broker (best effort), delete the tokens, mark `revoked`, audit; flushes."""
    connection = owned_connection(user, connection_id)
    revoked = False
    if connection.token_set and connection.broker == BrokerName.ETRADE:
        from utils.brokers import etrade
        revoked = etrade.revoke(connection)
    elif connection.token_set:
        revoked = oauth.revoke_tokens(connection)
    connection.token_set, connection.token_expires_at = None, None
    connection.status, connection.status_detail = ConnectionStatus.REVOKED, "Disconnected by you."
    audit.record("broker.unlinked", user=user, details={"broker": connection.broker.value,
                                                         "connection_id": connection.id,
                                                         "revoked_at_broker": revoked})
    db.session.flush()
    return connection


def list_connections(user) -> list[BrokerConnection]:
    """The user's linked broker connections (not the paper account), newest first."""
    return list(db.session.scalars(select(BrokerConnection).where(
        BrokerConnection.user_id == user.id, BrokerConnection.broker != BrokerName.PAPER)
        .order_by(BrokerConnection.created_at.desc(), BrokerConnection.id.desc())))


def masked(account: BrokerAccount) -> str:
    return f"••••{account.last4}"


def keep_links_alive() -> dict:
    """Beat: refresh OAuth 2.0 tokens expiring within 10 minutes and expire E*TRADE links past midnight ET.

    Each refresh commits on its own under its lock; a permanent refusal marks that link expired.
    Returns counts for the log."""
    counts = {"refreshed": 0, "expired": 0, "failed": 0}
    for connection_id in oauth.expiring_connection_ids(UPKEEP_WINDOW):
        try:
            oauth.refresh_connection(connection_id, leeway=UPKEEP_WINDOW)
            counts["refreshed"] += 1
        except BrokerError as error:
            counts["expired" if error.code == "broker_auth_expired" else "failed"] += 1
    if "etrade" in oauth.configured_brokers():
        from utils.brokers import etrade
        counts["expired"] += etrade.expire_past_midnight()
    return counts


def connection_to_dict(connection: BrokerConnection) -> dict:
    """The API shape of a connection: never a token, account numbers masked."""
    return {"id": connection.id, "broker": connection.broker.value, "status": connection.status.value,
            "status_detail": connection.status_detail, "token_expires_at": iso_utc(connection.token_expires_at),
            "last_refreshed_at": iso_utc(connection.last_refreshed_at), "created_at": iso_utc(connection.created_at),
            "accounts": [{"id": a.id, "masked_number": masked(a), "last4": a.last4, "name": a.name,
                          "account_type": a.account_type} for a in connection.accounts]}
