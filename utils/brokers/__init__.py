"""Broker adapters behind one interface (base.py): paper (default), Schwab, Coinbase, E*TRADE.

`get_broker(connection)` builds the adapter for a `models.BrokerConnection`. Adapters are listed in
`BROKER_CLASSES` as "module:Class" and imported on first use, so a missing or half-written adapter
never breaks the others; add one with a line there or with `register_broker`.
"""
from __future__ import annotations

import logging
from importlib import import_module

from utils.brokers.base import Broker
from utils.errors import BrokerAuthExpired, BrokerUnavailable

BROKER_CLASSES: dict[str, str | type] = {
    "paper": "utils.brokers.paper:PaperBroker",
    "schwab": "utils.brokers.schwab:SchwabBroker",
    "coinbase": "utils.brokers.coinbase:CoinbaseBroker",
    "etrade": "utils.brokers.etrade:ETradeBroker",
}

UNUSABLE_STATUSES = {"expired", "revoked"}

log = logging.getLogger("tradewarden.brokers")


def register_broker(name: str, adapter: str | type) -> None:
    """Make `get_broker` build `adapter` (a Broker subclass or "module:Class") for connections of `name`."""
    BROKER_CLASSES[name] = adapter


def get_broker(connection) -> Broker:
    """The adapter for this connection; raises BrokerAuthExpired for an expired/revoked link,
    BrokerUnavailable when no adapter is installed for its broker."""
    name = str(getattr(connection.broker, "value", connection.broker))
    if str(getattr(connection.status, "value", connection.status)) in UNUSABLE_STATUSES and name != "paper":
        raise BrokerAuthExpired(details={"broker_connection_id": connection.id})
    return _adapter_class(name)(connection)


def adapter_class(connection) -> type:
    """The adapter class for this connection's broker, for its traits (`keeps_client_order_id`, …) without
    building it; raises BrokerUnavailable when none is installed."""
    return _adapter_class(str(getattr(connection.broker, "value", connection.broker)))


def _adapter_class(name: str) -> type:
    adapter = BROKER_CLASSES.get(name)
    if adapter is None:
        raise BrokerUnavailable(f"No adapter is installed for broker {name!r}.", details={"broker": name})
    if isinstance(adapter, str):
        module, attribute = adapter.split(":")
        try:
            adapter = BROKER_CLASSES[name] = getattr(import_module(module), attribute)
        except (ImportError, AttributeError):
            log.exception("broker adapter %s (%s) cannot be loaded", name, module)
            raise BrokerUnavailable(f"The {name} adapter is not installed.", details={"broker": name}) from None
    return adapter


def default_connection(user):
    """The user's paper BrokerConnection, created (with its account and starting cash) if missing; flushes."""
    from utils.brokers.paper import ensure_paper_connection
    return ensure_paper_connection(user)


def ensure_paper_connection(user):
    """Same as utils.brokers.paper.ensure_paper_connection (re-exported for callers of the factory)."""
    from utils.brokers.paper import ensure_paper_connection as ensure
    return ensure(user)
