"""The broker interface: plain data classes in and out, vendor failures as domain errors (issue 4 item 2).

Every adapter implements `Broker`. Adapters raise only the errors in utils/errors.py:
`InsufficientFunds`, `InvalidSymbol`, `BrokerRejected`, `BrokerUnavailable` (the only retryable one),
`BrokerAuthExpired`, `OrderNotFound`, `OrderNotCancelable`. Money and quantities are Decimal.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Callable

from utils.errors import BrokerAuthExpired, BrokerRejected, BrokerUnavailable, OrderNotFound
from utils.market_data import Quote


@dataclass(frozen=True)
class OrderRequest:
    """What we ask a broker to do. `client_order_id` is our idempotency key, sent to the broker."""

    client_order_id: str
    symbol: str
    asset_type: str          # equity | option | crypto
    side: str                # buy | sell
    instruction: str         # BUY, SELL, BUY_TO_OPEN, SELL_TO_CLOSE, SELL_SHORT, BUY_TO_COVER, ...
    order_type: str          # market | limit | stop | stop_limit
    quantity: Decimal
    time_in_force: str = "day"   # day | gtc
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None


@dataclass(frozen=True)
class BrokerFill:
    execution_id: str        # unique per order at the broker
    quantity: Decimal
    price: Decimal
    fee: Decimal
    executed_at: datetime


@dataclass(frozen=True)
class BrokerOrder:
    """The broker's view of one order. `status` uses our OrderStatus values (adapters map theirs)."""

    broker_order_id: str
    client_order_id: str | None
    status: str              # submitted | partially_filled | filled | pending_cancel | cancelled | rejected | replaced | expired
    symbol: str
    quantity: Decimal
    filled_quantity: Decimal
    average_fill_price: Decimal | None
    fills: tuple[BrokerFill, ...] = ()
    reject_reason: str | None = None
    replaced_by: str | None = None
    total_fees: Decimal | None = None  # all fees so far, from brokers that report totals instead of executions
    executions_listed: bool = True     # False: the broker reports only running totals (E*TRADE), no executions


@dataclass(frozen=True)
class AccountSnapshot:
    cash: Decimal
    buying_power: Decimal
    equity: Decimal
    currency: str = "USD"


@dataclass(frozen=True)
class Position:
    symbol: str
    asset_type: str
    quantity: Decimal        # negative for short
    average_price: Decimal
    market_price: Decimal | None = None
    extra: dict = field(default_factory=dict)


class Broker(abc.ABC):
    """One linked broker account. `supports_stop_orders` tells whether stops can rest at the broker;
    `keeps_client_order_id` whether it stores our client_order_id (one that does not, Schwab, can only be
    asked for a lost order by its details, so our sends to it go one at a time per account);
    `in_our_database` whether its orders live in our own database (the paper broker), so that claiming,
    sending and recording an order can commit as one transaction."""

    supports_stop_orders: bool = True
    keeps_client_order_id: bool = True
    in_our_database: bool = False

    @abc.abstractmethod
    def place_order(self, request: OrderRequest) -> BrokerOrder:
        """Send a new order. Must be safe to call again with the same client_order_id (no double)."""

    @abc.abstractmethod
    def get_order(self, broker_order_id: str) -> BrokerOrder:
        """Current state of one order, with all its fills so far."""

    @abc.abstractmethod
    def find_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        """The order we sent with this client_order_id, or None if the broker never received it."""

    @staticmethod
    def read_back(lookup: Callable[[], BrokerOrder | None], accepted: bool = True) -> BrokerOrder | None:
        """Read back an order the broker has just `accepted` (or, with accepted=False, look for one it may
        have). A failure now must not look like a rejection (the order may exist at the broker): it becomes
        BrokerUnavailable, so the send is retried and the retry finds the order by `find_sent_order` instead
        of recording it as rejected. After an acceptance that error says the order reached the broker."""
        try:
            return lookup()
        except BrokerUnavailable as error:
            error.may_have_arrived = error.may_have_arrived or accepted
            raise
        except (BrokerRejected, BrokerAuthExpired, OrderNotFound) as error:
            unavailable = BrokerUnavailable(f"The broker took the order but did not show it yet: {error.message}"
                                            if accepted else f"The broker did not answer the lookup: {error.message}")
            unavailable.may_have_arrived = accepted
            raise unavailable from None

    def find_sent_order(self, request: OrderRequest, sent_since: datetime,
                        known_broker_ids: frozenset[str]) -> BrokerOrder | None:
        """Before a resend (a crash or a lost answer): the broker's copy of `request` if it already has one.

        Brokers that keep our client_order_id are asked by it. A broker that does not (Schwab) matches
        the order's details among orders entered since `sent_since`, skipping `known_broker_ids` (orders
        already recorded as ours)."""
        return self.find_order_by_client_id(request.client_order_id)

    @abc.abstractmethod
    def cancel_order(self, broker_order_id: str) -> BrokerOrder:
        """Request cancellation; raises OrderNotCancelable when it already completed."""

    @abc.abstractmethod
    def replace_order(self, broker_order_id: str, request: OrderRequest) -> BrokerOrder:
        """Replace an open order; returns the new order (the old one becomes `replaced`)."""

    @classmethod
    def check_tradable_now(cls, symbol: str) -> Quote | None:
        """Raise the refusal this broker would give any order in `symbol` right now for want of a price
        (BrokerRejected / InvalidSymbol), so the order is refused when it is placed instead of rejected by
        the worker; else return the quote it would fill against. A class method: it needs no link (nor its
        tokens). Most brokers judge that at their end: nothing to check here, and None."""
        return None

    @abc.abstractmethod
    def get_quotes(self, symbols: list[str]) -> dict[str, Quote]:
        """Quotes for many symbols in as few calls as the broker allows; unknown symbols are absent."""

    @abc.abstractmethod
    def get_account(self) -> AccountSnapshot:
        """Cash, buying power and equity."""

    @abc.abstractmethod
    def get_positions(self) -> list[Position]:
        """Open positions at the broker."""
