"""The built-in paper broker, modelled on Alpaca paper trading (reference/brokers.md §4).

State lives in the database (models section "paper broker state"), so it survives restarts:
`PaperAccount` (cash), `PaperOrder` (client_order_id unique per account), `PaperFill`, `PaperPosition`.

- Market orders fill at the ask (buy) / bid (sell), moved against the taker by `PAPER_SLIPPAGE_BPS`.
- Limit orders fill at the better of their limit and the market; stops trigger when the market
  reaches the stop and fill at the worse of stop and market (gap-aware); stop-limits become limits.
- At most `PAPER_LIQUIDITY_PER_TICK` units fill per order per matching pass (partial fills over ticks).
- Fees: `PAPER_FEE_PER_ORDER` on an order's first fill plus `PAPER_FEE_PER_UNIT` per unit filled.
- Options are priced per share and settle ×100; crypto allows fractions.
- `day` orders expire at the first matching pass after midnight UTC; `gtc` orders rest until done.

Concurrency: every state change first bumps the account's `version` with an UPDATE. That statement
is a portable row lock (PostgreSQL locks the row, SQLite the database) held until the caller
commits, and each fill is also a conditional UPDATE on the order's `version`: two matchers running
at once can never fill the same order twice.
"""
from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm.attributes import set_committed_value

from models import (Broker as BrokerName, BrokerAccount, BrokerConnection, ConnectionStatus, PaperAccount,
                    PaperFill, PaperOrder, PaperPosition)
from utils import market_data
from utils.brokers.base import AccountSnapshot, Broker, BrokerFill, BrokerOrder, OrderRequest, Position
from utils.database import columns_of, guarded_update, insert_object, insert_row, objects_from_row, read_rows
from utils.dbtypes import utcnow
from utils.errors import (BrokerRejected, InsufficientFunds, InvalidSymbol, OrderNotCancelable, OrderNotFound)
from utils.extensions import db
from utils.market_data import Quote, setting

log = logging.getLogger("tradewarden.paper")

OPEN_STATUSES = ("submitted", "partially_filled")
ORDER_TYPES = ("market", "limit", "stop", "stop_limit")
TIME_IN_FORCE = ("day", "gtc")
BUY_INSTRUCTIONS = {"BUY", "BUY_TO_OPEN", "BUY_TO_CLOSE", "BUY_TO_COVER"}
SELL_INSTRUCTIONS = {"SELL", "SELL_SHORT", "SELL_TO_OPEN", "SELL_TO_CLOSE"}
# Schwab's instructions that close a position (shorts open with SELL_SHORT / SELL_TO_OPEN). A closing order
# never takes the position past zero: one that finds less held than it still asks for when it fills (a stop
# for the whole position after part was sold, a second exit racing the first) fills what is held and the
# rest is cancelled, instead of opening a position the other way.
CLOSING_INSTRUCTIONS = {"SELL", "SELL_TO_CLOSE", "BUY_TO_COVER", "BUY_TO_CLOSE"}
NOTHING_LEFT_TO_CLOSE = "Cancelled: the position it closes is already closed."
QUANTITY_PLACES = 9
AVERAGE_PLACES = Decimal("0.0000000001")


# --- connection and account ----------------------------------------------------------------------

def starting_cash() -> Decimal:
    return setting("PAPER_STARTING_CASH", Decimal("100000"))


# Lookups of every placement, built once (constructing a statement cost about as much as running it).
PAPER_CONNECTION_OF = select(*columns_of(BrokerConnection)).where(
    BrokerConnection.user_id == bindparam("user_id"), BrokerConnection.broker == BrokerName.PAPER) \
    .order_by(BrokerConnection.id).limit(1)
ACCOUNT_OF_CONNECTION = select(PaperAccount).where(PaperAccount.connection_id == bindparam("connection_id")) \
    .execution_options(populate_existing=True)

ACCOUNT_VALUES_OF_CONNECTION = select(PaperAccount.__table__.c.id, PaperAccount.__table__.c.cash,
                                      PaperAccount.__table__.c.currency) \
    .where(PaperAccount.__table__.c.connection_id == bindparam("connection_id"))
ORDER_BY_CLIENT_ID = select(PaperOrder).where(PaperOrder.account_id == bindparam("account_id"),
                                              PaperOrder.client_order_id == bindparam("client_order_id")) \
    .execution_options(populate_existing=True)


def ensure_paper_connection(user) -> BrokerConnection:
    """The user's paper BrokerConnection, creating it with a BrokerAccount ("PAPER-…") and a
    PaperAccount holding PAPER_STARTING_CASH when missing (idempotent; flushes, never commits)."""
    found = read_rows(PAPER_CONNECTION_OF, {"user_id": user.id})
    connection = objects_from_row(found[0], BrokerConnection)[0] if found else None
    if connection is None:
        connection = BrokerConnection(user_id=user.id, broker=BrokerName.PAPER, status=ConnectionStatus.CONNECTED)
        db.session.add(connection)
        db.session.flush()
        number = f"PAPER-{secrets.randbelow(10**10):010d}"
        db.session.add(BrokerAccount(user_id=user.id, connection_id=connection.id, account_number=number,
                                     last4=number[-4:], name="Paper account", account_type="paper"))
        _account_for(connection)  # made with its connection (the broker adapter also makes a missing one)
        db.session.flush()
    return connection


def _account_for(connection: BrokerConnection) -> PaperAccount:
    """The connection's account as the database has it now (created when missing; flushes)."""
    account = db.session.execute(ACCOUNT_OF_CONNECTION, {"connection_id": connection.id}).scalar_one_or_none()
    if account is None:
        account = PaperAccount(user_id=connection.user_id, connection_id=connection.id, cash=starting_cash())
        db.session.add(account)
        db.session.flush()
    return account


@dataclass
class LockedAccount:
    """A paper account whose write lock this transaction holds: its id, its cash as written so far, and its
    positions once read under the lock (None: not read, or changed since)."""

    id: int
    cash: Decimal
    positions: list | None = None

    def read_positions(self) -> list:
        if self.positions is None:
            self.positions = _positions(self.id)
        return self.positions


def _lock_account(account_id: int) -> LockedAccount:
    """Take the account's write lock (held until commit) and return its fresh values (one UPDATE … RETURNING)."""
    return _locked_where(LOCK_ACCOUNT, {"lock_account_id": account_id})


def _lock_connection_account(connection: BrokerConnection) -> LockedAccount:
    """Lock the connection's account (creating it when missing) and return its fresh values."""
    account = _locked_where(LOCK_ACCOUNT_OF_CONNECTION, {"lock_connection_id": connection.id})
    return account if account is not None else _lock_account(_account_for(connection).id)


def _locked_where(statement, parameters: dict) -> LockedAccount | None:
    rows = read_rows(statement, parameters)
    return LockedAccount(rows[0].id, rows[0].cash) if rows else None


def _lock_statement(condition):
    """Bump the version of the account matching `condition` (its write lock) and return its id and cash."""
    accounts = PaperAccount.__table__
    return update(accounts).where(condition).values(version=accounts.c.version + 1) \
        .returning(accounts.c.id, accounts.c.cash)


LOCK_ACCOUNT = _lock_statement(PaperAccount.__table__.c.id == bindparam("lock_account_id"))
LOCK_ACCOUNT_OF_CONNECTION = _lock_statement(
    PaperAccount.__table__.c.connection_id == bindparam("lock_connection_id"))


# --- pricing rules -------------------------------------------------------------------------------

def _slipped(quote: Quote, side: str) -> Decimal:
    """The taker's market price: ask (buy) or bid (sell), moved against the taker by PAPER_SLIPPAGE_BPS."""
    slip = Decimal(setting("PAPER_SLIPPAGE_BPS", 0)) / Decimal(10000)
    if side == "buy":
        return market_data.round_price(quote.ask * (1 + slip), ROUND_CEILING)
    return market_data.round_price(quote.bid * (1 - slip), ROUND_FLOOR)


def _stop_reached(order: PaperOrder, quote: Quote) -> bool:
    return quote.ask >= order.stop_price if order.side == "buy" else quote.bid <= order.stop_price


def _limit_price_now(order: PaperOrder, quote: Quote) -> Decimal | None:
    """A limit's fill price, the better of limit and market, or None while the market is away."""
    if order.side == "buy":
        return min(order.limit_price, _slipped(quote, "buy")) if quote.ask <= order.limit_price else None
    return max(order.limit_price, _slipped(quote, "sell")) if quote.bid >= order.limit_price else None


def execution_price(order: PaperOrder, quote: Quote) -> tuple[Decimal | None, bool]:
    """(fill price or None, whether the stop triggers now) for an open order at this quote. An expired
    option fills only a market order, at its settlement value (`market_data.settlement_quote`), unslipped."""
    if market_data.expired_on(order.symbol) is not None:
        return (quote.last if order.order_type == "market" else None), False
    triggers = order.order_type in ("stop", "stop_limit") and order.stop_triggered_at is None \
        and _stop_reached(order, quote)
    if order.order_type in ("stop", "stop_limit") and order.stop_triggered_at is None and not triggers:
        return None, False
    if order.order_type in ("limit", "stop_limit"):
        return _limit_price_now(order, quote), triggers
    market = _slipped(quote, order.side)
    if triggers:  # gap-aware: the worse of the stop and the market
        market = max(order.stop_price, market) if order.side == "buy" else min(order.stop_price, market)
    return market, triggers


def _reference_price(request: OrderRequest, quote: Quote) -> Decimal:
    """The unit price reserved against buying power while the order is open."""
    market = _slipped(quote, request.side)
    if request.order_type in ("limit", "stop_limit"):
        return request.limit_price
    if request.order_type == "stop":
        return max(request.stop_price, market) if request.side == "buy" else request.stop_price
    return market


def _fee(order: PaperOrder, quantity: Decimal) -> Decimal:
    if market_data.expired_on(order.symbol) is not None:  # settling an expired option costs nothing
        return Decimal(0)
    per_order = setting("PAPER_FEE_PER_ORDER", Decimal("0")) if order.filled_quantity == 0 else Decimal(0)
    return per_order + setting("PAPER_FEE_PER_UNIT", Decimal("0")) * quantity


# --- validation ----------------------------------------------------------------------------------

def _reject(message: str, **details) -> BrokerRejected:
    return BrokerRejected(message, details=details)


def current_quote(symbol: str, quote: Quote | None) -> Quote:
    """The quote an order may be accepted on: InvalidSymbol without one, BrokerRejected (`stale_quote`) when
    it is older than QUOTE_MAX_AGE_SECONDS. A real market never fills at an old price, so neither does
    the paper broker (the price feed stopped, or a manual price was left standing): the order is refused
    with the quote's age, and nothing is placed."""
    if quote is None:
        raise InvalidSymbol(f"No price is available for {symbol}.", details={"symbol": symbol})
    if market_data.is_stale(quote):
        age = int((utcnow() - quote.as_of).total_seconds())
        raise BrokerRejected(f"No current price for {symbol}: its last quote is {age} s old, so the paper broker "
                             "cannot fill against it.", code="stale_quote",
                             details={"symbol": symbol, "quote_as_of": quote.as_of.isoformat(),
                                      "max_age_seconds": int(market_data.default_max_age().total_seconds())})
    return quote


def validate_request(request: OrderRequest) -> str:
    """The canonical symbol of a well-formed request; raises BrokerRejected / InvalidSymbol."""
    symbol = market_data.canonical_symbol(request.symbol)
    asset_type = market_data.asset_type_of(symbol)
    if request.asset_type and request.asset_type != asset_type:
        raise InvalidSymbol(f"{symbol} is not a {request.asset_type} symbol.", details={"symbol": symbol})
    _validate_quantity(request.quantity, asset_type)
    _validate_kind(request)
    _validate_prices(request)
    _check_not_expired(request, symbol)
    return symbol


def _check_not_expired(request: OrderRequest, symbol: str) -> None:
    """An expired option trades no more: a held contract can only be closed, by a market order, at its
    settlement value."""
    expiry = market_data.expired_on(symbol)
    if expiry is None or (_instruction_of(request) in CLOSING_INSTRUCTIONS and request.order_type == "market"):
        return
    raise BrokerRejected(f"{symbol} expired on {expiry.isoformat()}: a held contract closes only with a market "
                         "order, at its settlement value.", code="option_expired",
                         details={"symbol": symbol, "expired_on": expiry.isoformat()})


def _validate_quantity(quantity, asset_type: str) -> None:
    if not isinstance(quantity, Decimal) or not quantity.is_finite() or quantity <= 0:
        raise _reject("Quantity must be positive.", field="quantity")
    if quantity.normalize().as_tuple().exponent < -QUANTITY_PLACES:  # 1.0000000000 (PostgreSQL's NUMERIC) is 1
        raise _reject(f"Quantity has more than {QUANTITY_PLACES} decimal places.", field="quantity")
    if asset_type == market_data.OPTION and quantity != quantity.to_integral_value():
        raise _reject("Options trade in whole contracts.", field="quantity")


def _validate_kind(request: OrderRequest) -> None:
    if request.side not in ("buy", "sell"):
        raise _reject("side must be buy or sell.", field="side")
    instructions = BUY_INSTRUCTIONS if request.side == "buy" else SELL_INSTRUCTIONS
    if request.instruction and request.instruction.upper() not in instructions:
        raise _reject(f"Instruction {request.instruction} does not match side {request.side}.", field="instruction")
    if request.order_type not in ORDER_TYPES:
        raise _reject("Unknown order type.", field="order_type")
    if request.time_in_force not in TIME_IN_FORCE:
        raise _reject("time_in_force must be day or gtc.", field="time_in_force")


def _validate_prices(request: OrderRequest) -> None:
    needs = {"limit": ("limit_price",), "stop": ("stop_price",), "stop_limit": ("limit_price", "stop_price")}
    for name in needs.get(request.order_type, ()):
        price = getattr(request, name)
        if not isinstance(price, Decimal) or not price.is_finite() or price <= 0:
            raise _reject(f"A {request.order_type} order needs a positive {name}.", field=name)


# --- the broker ----------------------------------------------------------------------------------

class PaperBroker(Broker):
    """The simulated broker account behind one paper BrokerConnection."""

    supports_stop_orders = True
    in_our_database = True

    def __init__(self, connection: BrokerConnection):
        self.connection = connection
        self._account_id: int | None = None

    @property
    def account_id(self) -> int:
        """The PaperAccount's id, read (or the account created) when first needed."""
        if self._account_id is None:
            self._account_id = _account_for(self.connection).id
        return self._account_id

    # orders -------------------------------------------------------------------------------------

    def place_order(self, request: OrderRequest) -> BrokerOrder:
        """Accept an order (filling it at once when marketable); the same client_order_id returns the
        existing order. Raises BrokerRejected, InvalidSymbol, InsufficientFunds."""
        symbol = validate_request(request)
        quote = market_data.get_quotes([symbol]).get(symbol)  # read before the lock, judged after the lookup
        account = self._lock()
        existing = self._by_client_id(request.client_order_id)  # looked up under the lock: no twin can race it
        if existing is not None:
            return to_broker_order(existing)
        quote = current_quote(symbol, quote)
        order = self._accept(account, request, symbol, quote)
        fill = _match_order(account, order, quote)  # before the order is stored: a marketable one is written filled
        _stored(order)
        return to_broker_order(order, fills=[fill] if fill else [])  # a new order has no other fills

    def get_order(self, broker_order_id: str) -> BrokerOrder:
        """The order with its fills; raises OrderNotFound."""
        return to_broker_order(self._order(broker_order_id))

    def find_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        """The order sent with this client_order_id, or None."""
        order = self._by_client_id(client_order_id)
        return to_broker_order(order) if order else None

    def cancel_order(self, broker_order_id: str) -> BrokerOrder:
        """Cancel the open remainder at once (idempotent for a cancelled order); raises
        OrderNotFound, OrderNotCancelable when it is filled, replaced, rejected or expired."""
        self._lock()
        order = self._order(broker_order_id)
        if order.status in OPEN_STATUSES:
            order.status, order.canceled_at, order.version = "cancelled", utcnow(), order.version + 1
            db.session.flush()
        elif order.status != "cancelled":
            raise OrderNotCancelable(details={"status": order.status})
        return to_broker_order(order)

    def replace_order(self, broker_order_id: str, request: OrderRequest) -> BrokerOrder:
        """Alpaca-style replace: a new order (new id, `replaces` = old) and the old one `replaced`
        with `replaced_by` set. Idempotent for the same new client_order_id. Raises OrderNotFound,
        OrderNotCancelable (old order no longer open), BrokerRejected, InsufficientFunds."""
        existing = self._by_client_id(request.client_order_id)
        if existing is not None and existing.replaces == broker_order_id:
            return to_broker_order(existing)
        if existing is not None:
            raise _reject("client_order_id is already used by another order.", field="client_order_id")
        symbol = validate_request(request)
        quote = current_quote(symbol, market_data.get_quotes([symbol]).get(symbol))
        account = self._lock()
        old = self._order(broker_order_id)
        self._check_replaceable(old, request, symbol)
        order = self._accept(account, request, symbol, quote, replacing=old)
        old.status, old.replaced_by, old.version = "replaced", order.public_id, old.version + 1
        db.session.flush()
        _match_order(account, order, quote)
        return to_broker_order(_stored(order))

    # market data and account --------------------------------------------------------------------

    @classmethod
    def check_tradable_now(cls, symbol: str) -> Quote:
        """The paper broker fills only against a current quote (`current_quote`): without one, any order in
        `symbol` would be refused by place_order, so it is refused before it is stored."""
        symbol = market_data.canonical_symbol(symbol)
        return current_quote(symbol, market_data.get_quotes([symbol]).get(symbol))

    def get_quotes(self, symbols: list[str]) -> dict[str, Quote]:
        """Quotes from utils.market_data (cached, one batched read)."""
        return market_data.get_quotes(symbols)

    def get_account(self) -> AccountSnapshot:
        """Cash, buying power (cash − open holds − 2× short value) and equity (cash + positions at market)."""
        found = read_rows(ACCOUNT_VALUES_OF_CONNECTION, {"connection_id": self.connection.id})
        account = found[0] if found else _account_for(self.connection)
        self._account_id = account.id
        positions = _positions(self.account_id)
        quotes = market_data.get_quotes([position.symbol for position in positions])
        equity = account.cash + sum((_market_value(p, quotes.get(p.symbol)) for p in positions), Decimal(0))
        return AccountSnapshot(cash=account.cash, buying_power=_buying_power(account, positions, quotes),
                               equity=equity, currency=account.currency)

    def get_positions(self) -> list[Position]:
        """Open positions (signed quantity) priced at the last quote."""
        positions = _positions(self.account_id)
        quotes = market_data.get_quotes([position.symbol for position in positions])
        return [_to_position(position, quotes.get(position.symbol)) for position in positions]

    # internals ----------------------------------------------------------------------------------

    def _lock(self) -> LockedAccount:
        account = _lock_connection_account(self.connection)
        self._account_id = account.id
        return account

    def _by_client_id(self, client_order_id: str) -> PaperOrder | None:
        parameters = {"account_id": self.account_id, "client_order_id": client_order_id}
        if not read_rows(ORDER_ID_BY_CLIENT_ID, parameters):  # almost always: probed without loading an object
            return None
        return db.session.execute(ORDER_BY_CLIENT_ID, parameters).scalar_one_or_none()

    def _order(self, broker_order_id: str) -> PaperOrder:
        statement = select(PaperOrder).where(PaperOrder.account_id == self.account_id,
                                             PaperOrder.public_id == str(broker_order_id)[:36])
        order = db.session.execute(statement.execution_options(populate_existing=True)).scalar_one_or_none()
        if order is None:
            raise OrderNotFound(details={"broker_order_id": str(broker_order_id)[:64]})
        return order

    def _check_replaceable(self, old: PaperOrder, request: OrderRequest, symbol: str) -> None:
        if old.status not in OPEN_STATUSES:
            raise OrderNotCancelable("Only an open order can be replaced.", details={"status": old.status})
        if old.symbol != symbol or old.side != request.side:
            raise _reject("A replacement must keep the symbol and side.", field="symbol")

    def _accept(self, account: LockedAccount, request: OrderRequest, symbol: str, quote: Quote,
                replacing: PaperOrder | None = None) -> PaperOrder:
        """A validated order, after the position and buying-power checks (`replacing`'s own hold and open
        quantity count as free), not stored yet: it is matched first (see _stored). Raises BrokerRejected,
        InsufficientFunds."""
        asset_type = market_data.asset_type_of(symbol)
        positions = account.read_positions()
        hold_quantity = _hold_quantity(account.id, request, symbol, asset_type, positions, replacing)
        now = utcnow()
        values = dict(
            public_id=str(uuid.uuid4()), account_id=account.id, client_order_id=request.client_order_id,
            symbol=symbol, asset_type=asset_type, side=request.side,
            instruction=_instruction_of(request), order_type=request.order_type,
            time_in_force=request.time_in_force, quantity=request.quantity, limit_price=request.limit_price,
            stop_price=request.stop_price, hold_quantity=hold_quantity,
            hold_price=_reference_price(request, quote), status="submitted", version=0,
            filled_quantity=Decimal(0), filled_notional=Decimal(0), fees=Decimal(0),
            replaces=replacing.public_id if replacing else None, replaced_by=None, stop_triggered_at=None,
            filled_at=None, canceled_at=None, reject_reason=None, created_at=now, updated_at=now)
        order = PaperOrder(**values)
        _check_buying_power(account, order, positions, replacing)
        return order


def _stored(order: PaperOrder) -> PaperOrder:
    """Insert a new order, as matching left it (a marketable order is written once, already filled, instead of
    inserted and then updated); an order already stored is left as it is."""
    return insert_object(order) if order.id is None else order


def _hold_quantity(account_id: int, request: OrderRequest, symbol: str, asset_type: str,
                   positions: list, replacing: PaperOrder | None) -> Decimal:
    """Units that need buying power: all of a buy; none of a closing sell (it never goes short); the part of
    an opening sell beyond the long position not already being sold (a short). A closing order with nothing
    held to close is refused."""
    held = next((p.quantity for p in positions if p.symbol == symbol), Decimal(0))
    closing = _instruction_of(request) in CLOSING_INSTRUCTIONS
    if closing and _closing_room(held, request.side) <= 0:
        raise _reject(f"Nothing to close: no {'long' if request.side == 'sell' else 'short'} {symbol} position "
                      "is held.", field="instruction")
    if request.side == "buy":
        return request.quantity
    if closing:
        return Decimal(0)
    freed = replacing.quantity - replacing.filled_quantity if replacing is not None else Decimal(0)
    available = held - _open_sell_quantity(account_id, symbol) + freed
    excess = request.quantity - max(available, Decimal(0))
    if excess > 0 and asset_type == market_data.CRYPTO:
        raise _reject("Crypto cannot be sold short: the position is too small.", available=str(max(available, 0)))
    return max(excess, Decimal(0))


def _instruction_of(request: OrderRequest) -> str:
    return (request.instruction or request.side).upper()


def _closing_room(held: Decimal, side: str) -> Decimal:
    """How much a closing order on `side` may fill against the signed position `held` before passing zero."""
    return max(held if side == "sell" else -held, Decimal(0))


def _open_sell_quantity(account_id: int, symbol: str) -> Decimal:
    orders = read_rows(OPEN_ORDERS_IN_SYMBOL, {"account_id": account_id, "symbol": symbol})
    return sum((o.quantity - o.filled_quantity for o in orders if o.side == "sell"), Decimal(0))


def _check_buying_power(account: LockedAccount, order: PaperOrder, positions: list,
                        replacing: PaperOrder | None) -> None:
    if order.hold_quantity <= 0:
        return
    quotes = market_data.get_quotes([p.symbol for p in positions if p.quantity < 0])
    available = _buying_power(account, positions, quotes) + (_hold_of(replacing) if replacing else 0)
    needed = _hold_of(order) + _fee(order, order.quantity)
    if needed > available:
        raise InsufficientFunds(details={"buying_power": str(available), "cost": str(needed)})


def _hold_of(order) -> Decimal:
    """The buying power an open order (a PaperOrder or its row) holds for what is still unfilled."""
    remaining = order.quantity - order.filled_quantity
    units = min(order.hold_quantity, remaining)
    return units * order.hold_price * market_data.multiplier_for(order.asset_type)


def _buying_power(account, positions: list, quotes: dict[str, Quote]) -> Decimal:
    holds = sum((_hold_of(order) for order in read_rows(OPEN_ORDERS, {"account_id": account.id})), Decimal(0))
    shorts = sum((-_market_value(p, quotes.get(p.symbol)) for p in positions if p.quantity < 0), Decimal(0))
    return account.cash - holds - 2 * shorts


def _open_orders(account_id: int | None = None, symbols: list[str] | None = None) -> list[PaperOrder]:
    """Open orders (of one account, in some symbols) as ORM objects, fresh from the database, for matching."""
    statement = select(PaperOrder).where(PaperOrder.status.in_(OPEN_STATUSES))
    if account_id is not None:
        statement = statement.where(PaperOrder.account_id == account_id)
    if symbols is not None:
        statement = statement.where(PaperOrder.symbol.in_(symbols))
    return list(db.session.execute(statement.order_by(PaperOrder.id)
                                   .execution_options(populate_existing=True)).scalars())


# Reads of values only (buying power, equity, positions), as plain rows: a placement makes them in the API and
# again in the worker, and loading ORM objects for them cost more than the queries.
_ORDER_ROWS, _POSITION_ROWS = PaperOrder.__table__, PaperPosition.__table__
OPEN_ORDERS = select(_ORDER_ROWS).where(_ORDER_ROWS.c.account_id == bindparam("account_id"),
                                        _ORDER_ROWS.c.status.in_(OPEN_STATUSES)).order_by(_ORDER_ROWS.c.id)
ORDER_ID_BY_CLIENT_ID = select(_ORDER_ROWS.c.id).where(_ORDER_ROWS.c.account_id == bindparam("account_id"),
                                                      _ORDER_ROWS.c.client_order_id == bindparam("client_order_id"))
OPEN_ORDERS_IN_SYMBOL = OPEN_ORDERS.where(_ORDER_ROWS.c.symbol == bindparam("symbol"))
POSITIONS = select(_POSITION_ROWS).where(_POSITION_ROWS.c.account_id == bindparam("account_id")) \
    .order_by(_POSITION_ROWS.c.symbol)
DELETE_POSITION = delete(_POSITION_ROWS).where(_POSITION_ROWS.c.id == bindparam("position_id"))


def _positions(account_id: int) -> list:
    """The account's positions as plain rows (symbol, asset_type, quantity, average_price, …)."""
    return read_rows(POSITIONS, {"account_id": account_id})


def _market_value(position, quote: Quote | None) -> Decimal:
    price = quote.last if quote else position.average_price
    return position.quantity * price * market_data.multiplier_for(position.asset_type)


def _to_position(position, quote: Quote | None) -> Position:
    multiplier = market_data.multiplier_for(position.asset_type)
    market_price = quote.last if quote else None
    extra = {"multiplier": str(multiplier)}
    if market_price is not None:
        extra["market_value"] = str(position.quantity * market_price * multiplier)
        extra["unrealized_pl"] = str(position.quantity * (market_price - position.average_price) * multiplier)
    return Position(symbol=position.symbol, asset_type=position.asset_type, quantity=position.quantity,
                    average_price=position.average_price, market_price=market_price, extra=extra)


# --- matching ------------------------------------------------------------------------------------

def _liquidity() -> Decimal:
    return setting("PAPER_LIQUIDITY_PER_TICK", Decimal("1000000"))


def _match_order(account: LockedAccount, order: PaperOrder, quote: Quote | None) -> PaperFill | None:
    """Fill what the market allows of one open order now (the account lock is held). Returns the fill."""
    if order.status not in OPEN_STATUSES:
        return None
    if _day_is_over(order) or _opens_expired_contract(order):
        _claim(order, status="expired")
        return None
    if quote is None:
        return None
    price, triggers = execution_price(order, quote)
    if price is None:
        if triggers:  # a stop-limit whose stop was reached becomes a resting limit
            _claim(order, stop_triggered_at=utcnow())
        return None
    closable = _closable(account.id, order)
    quantity = min(order.quantity - order.filled_quantity, _liquidity(), closable)
    if quantity <= 0:
        _claim(order, status="cancelled", canceled_at=utcnow(), reject_reason=NOTHING_LEFT_TO_CLOSE)
        return None
    fill = _fill(account, order, quantity, price, triggered=triggers)
    if fill is not None and order.status in OPEN_STATUSES and closable - quantity <= 0:
        _claim(order, status="cancelled", canceled_at=utcnow(), reject_reason=NOTHING_LEFT_TO_CLOSE)
    return fill


def _closable(account_id: int, order: PaperOrder) -> Decimal:
    """How much of the order may fill without passing zero: what is held in the closing direction for a
    closing instruction, all of its remainder for an opening one."""
    remaining = order.quantity - order.filled_quantity
    if order.instruction not in CLOSING_INSTRUCTIONS:
        return remaining
    held = db.session.execute(select(PaperPosition.quantity).where(
        PaperPosition.account_id == account_id, PaperPosition.symbol == order.symbol)).scalar_one_or_none()
    return _closing_room(held or Decimal(0), order.side)


def _opens_expired_contract(order: PaperOrder) -> bool:
    """A resting order to open an option that has since expired expires with it (a closing one stays, for
    the holder's settlement to cancel)."""
    return order.instruction not in CLOSING_INSTRUCTIONS and market_data.expired_on(order.symbol) is not None


def _day_is_over(order: PaperOrder) -> bool:
    """A `day` order expires at the first matching pass after midnight UTC following its placement."""
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    return order.time_in_force == "day" and order.created_at < today


def _claim(order: PaperOrder, **values) -> bool:
    """Write `values` only if nobody changed the order since we read it (version check). A new order, not
    stored yet, takes them in memory: it is inserted with them."""
    values = {"version": order.version + 1, "updated_at": utcnow(), **values}
    if order.id is None:
        for name, value in values.items():
            setattr(order, name, value)
        return True
    if guarded_update(PaperOrder, order.id, {"version": order.version, "status": OPEN_STATUSES}, values) != 1:
        db.session.expire(order)
        return False
    for name, value in values.items():  # the row now holds exactly this: no need to read it back
        set_committed_value(order, name, value)
    return True


def _fill(account: LockedAccount, order: PaperOrder, quantity: Decimal, price: Decimal,
          triggered: bool) -> PaperFill | None:
    now, fee = utcnow(), _fee(order, quantity)
    filled = order.filled_quantity + quantity
    values = {"filled_quantity": filled, "filled_notional": order.filled_notional + quantity * price,
              "fees": order.fees + fee, "status": "filled" if filled >= order.quantity else "partially_filled"}
    if filled >= order.quantity:
        values["filled_at"] = now
    if triggered:
        values["stop_triggered_at"] = now
    known_id = order.id  # read before a failed claim expires the order (None for one not stored yet)
    if not _claim(order, **values):
        log.info("paper order %s changed under us; not filling", known_id)
        return None
    order_id, side, symbol, asset_type = _stored(order).id, order.side, order.symbol, order.asset_type
    execution = {"order_id": order_id, "execution_id": str(uuid.uuid4()), "quantity": quantity, "price": price,
                 "fee": fee, "executed_at": now}
    fill = PaperFill(id=insert_row(PaperFill, execution), **execution)  # what was written; not in the session
    notional = quantity * price * market_data.multiplier_for(asset_type)
    _set_cash(account, account.cash - notional - fee if side == "buy" else account.cash + notional - fee)
    _apply_to_position(account, symbol, asset_type, quantity if side == "buy" else -quantity, price)
    db.session.flush()
    return fill


def _set_cash(account: LockedAccount, cash: Decimal) -> None:
    """Write the account's new cash (its row is locked by the caller)."""
    guarded_update(PaperAccount, account.id, {}, {"cash": cash})
    account.cash = cash


def _apply_to_position(account: LockedAccount, symbol: str, asset_type: str, signed: Decimal,
                       price: Decimal) -> None:
    """Add `signed` units bought (+) or sold (−) at `price` to the account's position in `symbol` (the account
    lock is held): a new position, a weighted average price while it grows, none once it is back at zero."""
    found = [position for position in account.read_positions() if position.symbol == symbol]
    account.positions = None  # changed below
    if not found:
        insert_row(PaperPosition, {"account_id": account.id, "symbol": symbol, "asset_type": asset_type,
                                   "quantity": signed, "average_price": price})
        return
    position = found[0]
    old, new = position.quantity, position.quantity + signed
    if new == 0:
        db.session.connection().execute(DELETE_POSITION, {"position_id": position.id})
        return
    average = position.average_price
    if old == 0 or (old > 0) == (signed > 0):  # growing: weighted average
        average = ((abs(old) * average + abs(signed) * price) / abs(new)).quantize(AVERAGE_PLACES)
    elif (old > 0) != (new > 0):  # flipped through zero: the rest opens at this price
        average = price
    guarded_update(PaperPosition, position.id, {}, {"quantity": new, "average_price": average})


def match_resting_orders(symbols: list[str] | None = None) -> int:
    """Fill what the current (uncached) prices allow of every open paper order, optionally only for
    `symbols`; locks each account in id order; flushes. Returns the number of fills."""
    wanted = None if symbols is None else [market_data.canonical_symbol(s) for s in symbols]
    candidates = _open_orders(symbols=wanted)
    if not candidates:
        return 0
    quotes = market_data.get_quotes(sorted({order.symbol for order in candidates}), fresh=True)
    fills = 0
    for account_id in sorted({order.account_id for order in candidates}):
        account = _lock_account(account_id)
        for order in _open_orders(account_id, symbols=wanted):
            fills += _match_order(account, order, quotes.get(order.symbol)) is not None
    return fills


# --- the wire shape ------------------------------------------------------------------------------

def to_broker_order(order: PaperOrder, fills: list[PaperFill] | None = None) -> BrokerOrder:
    """The interface's view of a paper order, with every fill so far (`fills` when the caller knows them)."""
    if fills is None:
        fills = db.session.execute(select(PaperFill).where(PaperFill.order_id == order.id)
                                   .order_by(PaperFill.id)).scalars()
    average = (order.filled_notional / order.filled_quantity).quantize(AVERAGE_PLACES) \
        if order.filled_quantity else None
    return BrokerOrder(
        broker_order_id=order.public_id, client_order_id=order.client_order_id, status=order.status,
        symbol=order.symbol, quantity=order.quantity, filled_quantity=order.filled_quantity,
        average_fill_price=average, reject_reason=order.reject_reason, replaced_by=order.replaced_by,
        fills=tuple(BrokerFill(execution_id=f.execution_id, quantity=f.quantity, price=f.price, fee=f.fee,
                               executed_at=f.executed_at) for f in fills))
