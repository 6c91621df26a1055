"""Risk limits (issue 4 item 7): per-user limits in `UserSettings`, checked before an entry order leaves.

`check_order` runs inside `user_lock(user_id)` (a Redis lock on the cache Redis) together with the
insert and the commit of the order, so two racing orders cannot both pass a limit. A denial raises
`RiskLimitExceeded` with a machine-readable code (`risk.buying_power`, `risk.max_risk_per_trade`,
`risk.daily_trade_limit`, `risk.daily_notional_limit`, `risk.concentration`, `risk.daily_loss_limit`)
and the numbers that broke it, as strings. Exits are never checked.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from datetime import datetime, time, timezone
from decimal import Decimal, InvalidOperation
from time import monotonic

import redis as redis_lib
from flask import current_app
from sqlalchemy import and_, bindparam, case, false, func, literal, null, or_, select, type_coerce, union_all
from sqlalchemy.types import NullType

from models import Order, OrderPurpose, OrderStatus, Trade, TradeStatus, UserSettings
from utils import locks
from utils.database import exact_sum, read_rows
from utils.dbtypes import ExactDecimal, utcnow
from utils.errors import Conflict, DependencyUnavailable, RiskLimitExceeded, ValidationFailed
from utils.extensions import db

log = logging.getLogger("tradewarden.risk")

HUNDRED = Decimal("100")
LOCK_TIMEOUT_SECONDS = 15
LOCK_WAIT_SECONDS = 10
# How often a waiting placement asks for the lock again. A hold lasts milliseconds, so redis-py's default of
# 100 ms made orders a script sends at once wait in 100 ms steps (10 at once: ~0.9 s before, ~0.2 s now; see
# benchmarks/orders.py, same_user_burst_ms).
LOCK_POLL_SECONDS = 0.005
# Orders that hold buying power and exposure before the broker has them (not yet reflected in its account).
UNSENT_STATUSES = (OrderStatus.PENDING, OrderStatus.SUBMITTING)
WORKING_STATUSES = (OrderStatus.PENDING, OrderStatus.SUBMITTING, OrderStatus.SUBMITTED,
                    OrderStatus.PARTIALLY_FILLED, OrderStatus.PENDING_CANCEL)
# Orders that count toward today's order count and notional (everything that was not refused).
REFUSED_STATUSES = (OrderStatus.REJECTED, OrderStatus.FAILED)
OPEN_TRADE_STATUSES = (TradeStatus.PENDING, TradeStatus.OPEN, TradeStatus.CLOSING)

# field → (kind, minimum, maximum); percentages are of equity.
LIMIT_FIELDS = {
    "max_risk_per_trade_pct": ("decimal", Decimal("0.01"), HUNDRED),
    "default_stop_pct": ("decimal", Decimal("0.01"), Decimal("99")),
    "daily_trade_limit": ("int", 1, 100_000),
    "daily_notional_limit": ("decimal", Decimal("1"), Decimal("1000000000000")),
    "max_concentration_pct": ("decimal", Decimal("0.01"), HUNDRED),
    "daily_loss_limit_pct": ("decimal", Decimal("0.01"), HUNDRED),
}


@dataclass(frozen=True)
class Proposal:
    """An entry order as the risk checks see it. `direction` is long or short; prices per unit."""

    symbol: str
    direction: str
    quantity: Decimal
    entry_price: Decimal
    stop_loss_price: Decimal | None
    multiplier: Decimal = Decimal("1")

    @property
    def notional(self) -> Decimal:
        return self.quantity * self.entry_price * self.multiplier


# --- settings -----------------------------------------------------------------------------------

LIMITS_OF = select(UserSettings).where(UserSettings.user_id == bindparam("user_id"))  # built once: read per order


def get_limits(user) -> UserSettings:
    """The user's risk limits, creating the row with defaults when missing (flushes)."""
    settings = db.session.scalar(LIMITS_OF, {"user_id": user.id})
    if settings is None:
        settings = UserSettings(user_id=user.id)
        db.session.add(settings)
        db.session.flush()
    return settings


# The limits alone: the row also holds an encrypted secret, which a placement must not decrypt.
LIMIT_VALUES_OF = select(*(UserSettings.__table__.c[name] for name in LIMIT_FIELDS)).where(
    UserSettings.__table__.c.user_id == bindparam("user_id"))


def _limits_row(user):
    """The user's risk limits as a plain row (values only: read on every placement, no object needed),
    created with the defaults when missing."""
    found = read_rows(LIMIT_VALUES_OF, {"user_id": user.id})
    return found[0] if found else get_limits(user)


def update_limits(user, unsafe: dict) -> UserSettings:
    """Change any of the limit fields given; raises ValidationFailed (details.field) for a bad value."""
    if not isinstance(unsafe, dict):
        raise ValidationFailed("Send a JSON object of limits.", details={"field": "body"})
    unknown = sorted(set(unsafe) - set(LIMIT_FIELDS))
    if unknown:
        raise ValidationFailed(f"Unknown field {unknown[0]}.", details={"field": unknown[0]})
    settings = get_limits(user)
    for name, unsafe_value in unsafe.items():
        setattr(settings, name, _parse_limit(name, unsafe_value))
    db.session.flush()
    return settings


def _parse_limit(name: str, unsafe_value):
    kind, minimum, maximum = LIMIT_FIELDS[name]
    if isinstance(unsafe_value, bool) or not isinstance(unsafe_value, (str, int, float)):
        raise ValidationFailed(f"{name} must be a number.", details={"field": name})
    try:
        value = Decimal(str(unsafe_value).strip())
    except InvalidOperation:
        raise ValidationFailed(f"{name} must be a number.", details={"field": name}) from None
    if not value.is_finite() or (kind == "int" and value != value.to_integral_value()):
        raise ValidationFailed(f"{name} must be a {'whole ' if kind == 'int' else ''}number.", details={"field": name})
    if not minimum <= value <= maximum:
        raise ValidationFailed(f"{name} must be between {minimum} and {maximum}.", details={"field": name})
    return int(value) if kind == "int" else value


def limits_to_dict(settings: UserSettings) -> dict:
    """The limits as JSON (decimals as strings)."""
    return {name: (getattr(settings, name) if LIMIT_FIELDS[name][0] == "int" else _text(getattr(settings, name)))
            for name in LIMIT_FIELDS}


# --- the per-user lock --------------------------------------------------------------------------

def cache_redis() -> redis_lib.Redis:
    """The cache Redis (db 1) client of this app, created once per app."""
    client = current_app.extensions.get("tradewarden_cache_redis")
    if client is None:
        client = redis_lib.Redis.from_url(current_app.config["CACHE_REDIS_URL"], socket_timeout=5,
                                          socket_connect_timeout=2, health_check_interval=30)
        current_app.extensions["tradewarden_cache_redis"] = client
    return client


@contextlib.contextmanager
def user_lock(user_id: int, purpose: str = "orders"):
    """Hold the per-user Redis lock; raises Conflict if busy, DependencyUnavailable if Redis is down.

    Threads of this process wanting the same lock first wait their turn in-process (`locks.taking_turns`);
    the whole wait is at most LOCK_WAIT_SECONDS."""
    name = f"tradewarden:lock:{purpose}:{user_id}"
    busy = Conflict("Another order of yours is being placed; try again.", code="orders.busy")
    deadline = monotonic() + LOCK_WAIT_SECONDS
    with locks.taking_turns(name, LOCK_WAIT_SECONDS, busy=busy):
        lock = cache_redis().lock(name, timeout=LOCK_TIMEOUT_SECONDS, sleep=LOCK_POLL_SECONDS,
                                  blocking_timeout=max(0.0, deadline - monotonic()))
        with locks.holding(lock, busy=busy,
                           unavailable=DependencyUnavailable("Orders are paused: the lock service is unavailable.")):
            yield


# --- the checks ---------------------------------------------------------------------------------

def check_order(user, proposal: Proposal, account, exclude_order_id: int | None = None) -> None:
    """Raise RiskLimitExceeded when the entry `proposal` breaks one of the user's limits.

    `account` is the broker's AccountSnapshot (equity, buying power). Call inside `user_lock`.
    What the user's trades and other orders already use is read in one query each.
    """
    settings = _limits_row(user)
    equity = account.equity
    realized_today, exposure = _trade_totals(user.id, proposal.symbol)
    orders = _order_totals(user.id, proposal.symbol, exclude_order_id)
    _check_daily_loss(settings, realized_today, equity)
    _check_buying_power(proposal, account.buying_power, orders.unsent_notional)
    _check_risk_per_trade(settings, proposal, equity)
    _check_daily_activity(settings, proposal, orders)
    _check_concentration(settings, proposal, equity, exposure + orders.working_notional_in_symbol)


def _deny(code: str, message: str, **numbers) -> None:
    raise RiskLimitExceeded(message, code=code, details={key: _text(value) for key, value in numbers.items()})


def _check_daily_loss(settings: UserSettings, realized: Decimal, equity: Decimal) -> None:
    allowed_loss = equity * settings.daily_loss_limit_pct / HUNDRED
    if realized < 0 and -realized >= allowed_loss:
        _deny("risk.daily_loss_limit", "Today's realized loss has reached your daily loss limit; no new entries today.",
              realized_loss_today=-realized, limit=allowed_loss, limit_pct=settings.daily_loss_limit_pct,
              equity=equity)


def _check_buying_power(proposal: Proposal, buying_power: Decimal, reserved: Decimal) -> None:
    if proposal.notional + reserved > buying_power:
        _deny("risk.buying_power", "Not enough buying power for this order.", order_notional=proposal.notional,
              reserved_by_open_orders=reserved, buying_power=buying_power)


def _check_risk_per_trade(settings: UserSettings, proposal: Proposal, equity: Decimal) -> None:
    stop = proposal.stop_loss_price or default_stop(settings, proposal)
    risk = abs(proposal.entry_price - stop) * proposal.quantity * proposal.multiplier
    allowed = equity * settings.max_risk_per_trade_pct / HUNDRED
    if risk > allowed:
        _deny("risk.max_risk_per_trade", "The order risks more than your per-trade limit.", risk=risk, limit=allowed,
              limit_pct=settings.max_risk_per_trade_pct, entry_price=proposal.entry_price, stop_price=stop,
              equity=equity)


def default_stop(settings: UserSettings, proposal: Proposal) -> Decimal:
    """The stop price implied by the default stop % (below entry for longs, above for shorts)."""
    offset = proposal.entry_price * settings.default_stop_pct / HUNDRED
    return proposal.entry_price - offset if proposal.direction == "long" else proposal.entry_price + offset


def _check_daily_activity(settings: UserSettings, proposal: Proposal, orders: OrderTotals) -> None:
    if orders.count_today + 1 > settings.daily_trade_limit:
        _deny("risk.daily_trade_limit", "You have reached today's order limit.", orders_today=orders.count_today,
              limit=settings.daily_trade_limit)
    if orders.notional_today + proposal.notional > settings.daily_notional_limit:
        _deny("risk.daily_notional_limit", "The order would exceed today's notional limit.",
              notional_today=orders.notional_today, order_notional=proposal.notional,
              limit=settings.daily_notional_limit)


def _check_concentration(settings: UserSettings, proposal: Proposal, equity: Decimal, current: Decimal) -> None:
    after = current + proposal.notional
    allowed = equity * settings.max_concentration_pct / HUNDRED
    if after > allowed:
        _deny("risk.concentration", f"{proposal.symbol} would be too large a share of your equity.",
              exposure_after=after, limit=allowed, limit_pct=settings.max_concentration_pct, equity=equity)


# --- measurements -------------------------------------------------------------------------------

def start_of_day(now: datetime | None = None) -> datetime:
    """Midnight UTC of today (the trading-limit day)."""
    now = now or utcnow()
    return datetime.combine(now.astimezone(timezone.utc).date(), time.min, tzinfo=timezone.utc)


def _closed_today():
    return and_(Trade.closed_at >= start_of_day(), Trade.realized_pnl.is_not(None))


def realized_pnl_today(user_id: int) -> Decimal:
    """Realized P&L (after fees) of trades closed since midnight UTC."""
    values = db.session.scalars(select(Trade.realized_pnl).where(Trade.user_id == user_id, _closed_today()))
    return sum(values, Decimal("0"))


def _raw(column, name: str):
    """`column` read as the driver gives it, without SQLAlchemy's per-value conversion (see _exact): the totals
    read every order and trade of the user's day, and that conversion was two thirds of their time."""
    return type_coerce(column, NullType()).label(name)


def _exact(value) -> Decimal:
    """A decimal read raw: SQLite's canonical text (or an integer), or PostgreSQL's NUMERIC padded to ten places
    (normalized, as ExactDecimal reads it)."""
    return value.normalize() if isinstance(value, Decimal) else Decimal(value)


def _contract_multiplier(asset_type_column):
    """The contract multiplier of each row, in SQL: 100 for options, else 1."""
    return case((asset_type_column == "option", 100), else_=1)


def _trade_totals_query(dialect_name: str):
    """The query of `_trade_totals` for one dialect: user_id, symbol and day_start are bound per call.

    Two rows, each added up exactly in the database (`exact_sum`), so a busy day or a large position built
    by many entries costs the check no more than a quiet one: the cost basis of the open trades in the
    symbol (what they bought, and the part already sold, at the entry price), and the realized P&L of the
    trades closed today. Each half reads one index range (user and status; user and close time), so trades
    closed before today are not read at all."""
    open_statuses = Trade.status.in_(OPEN_TRADE_STATUSES)
    user = Trade.user_id == bindparam("user_id")
    multiplier = _contract_multiplier(Trade.asset_type)
    held = select(_raw(exact_sum(dialect_name, Trade.quantity, Trade.entry_price, multiplier), "bought"),
                  _raw(exact_sum(dialect_name, Trade.exit_quantity, Trade.entry_price, multiplier), "sold"),
                  _raw(literal(0), "closed_today")).where(user, open_statuses, Trade.symbol == bindparam("symbol"))
    closed_today = select(_raw(exact_sum(dialect_name, Trade.realized_pnl), "pnl"), literal(0), literal(1)).where(
        user, Trade.closed_at >= bindparam("day_start"), Trade.realized_pnl.is_not(None), ~open_statuses)
    return union_all(held, closed_today)


def _trade_totals(user_id: int, symbol: str) -> tuple[Decimal, Decimal]:
    """(realized P&L of trades closed today, cost basis still held in `symbol` by open trades), one query."""
    rows = read_rows(_query_for(_trade_totals_query), {"user_id": user_id, "symbol": symbol,
                                                        "day_start": start_of_day()})
    realized = exposure = Decimal("0")
    for amount, sold, is_closed_today in rows:
        if is_closed_today:
            realized = _exact(amount)
        else:
            exposure = _exact(amount) - _exact(sold)
    return realized, exposure


@dataclass(frozen=True)
class OrderTotals:
    """What the user's other orders already use."""

    unsent_notional: Decimal  # entries not yet at the broker: its buying power does not know them yet
    working_notional_in_symbol: Decimal  # unfilled remainder of working entries in the symbol (sent or not)
    count_today: int  # orders placed today and not refused (a replacement is not a new order)
    notional_today: Decimal


# An order's unit price for these sums: what it filled at, else its limit, its stop, or the estimate at entry.
UNIT_PRICE = type_coerce(func.coalesce(Order.average_fill_price, Order.limit_price, Order.stop_price,
                                       Order.estimated_price), ExactDecimal())


def _order_totals_query(dialect_name: str):
    """The query of `_order_totals` for one dialect: user_id, symbol, day_start and exclude_id (0 for none)
    are bound per call.

    Its first half is the user's working orders that count toward any total, a row each. The second is one
    row standing for all the orders placed today that are finished: `today` is how many they are and
    `quantity` their notional (at unit price 1), added up exactly in the database. A finished order no longer changes, and reading them one
    by one made each placement slower with every order of the day (6 µs more per order already placed).
    Each half reads one index range (user and status; user and creation time)."""
    entry = Order.purpose == OrderPurpose.ENTRY
    working = Order.status.in_(WORKING_STATUSES)
    unsent = and_(entry, Order.status.in_(UNSENT_STATUSES))
    working_here = and_(entry, Order.symbol == bindparam("symbol"), working)
    counted = and_(Order.status.not_in(REFUSED_STATUSES), Order.replaces_order_id.is_(None))
    today = and_(Order.created_at >= bindparam("day_start"), counted)
    mine = (Order.user_id == bindparam("user_id"), Order.id != bindparam("exclude_id"))
    multiplier = _contract_multiplier(Order.asset_type)
    working_rows = select(_raw(Order.quantity, "quantity"), _raw(Order.filled_quantity, "filled_quantity"),
                          _raw(multiplier, "multiplier"), _raw(UNIT_PRICE, "price"), _raw(unsent, "unsent"),
                          _raw(working_here, "working_here"), _raw(case((today, 1), else_=0), "today")
                          ).where(*mine, working, or_(unsent, working_here, today))
    finished_today = select(_raw(exact_sum(dialect_name, Order.quantity, UNIT_PRICE, multiplier), "notional"),
                            null(), literal(1), literal(1), false(), false(),
                            _raw(func.count(), "count")).where(*mine, today, ~working)
    return union_all(working_rows, finished_today)


def _order_totals(user_id: int, symbol: str, exclude_order_id: int | None) -> OrderTotals:
    """The user's OrderTotals (leaving out order `exclude_order_id`) from one query."""
    rows = read_rows(_query_for(_order_totals_query), {
        "user_id": user_id, "symbol": symbol, "day_start": start_of_day(), "exclude_id": exclude_order_id or 0})
    unsent_notional = working_notional = notional_today = Decimal("0")
    count_today = 0
    for quantity, filled, multiplier, price, is_unsent, is_working_here, today in rows:
        count_today += today
        if price is None:
            continue
        quantity, unit = _exact(quantity), _exact(price) * multiplier
        unfilled = (quantity - _exact(filled)) * unit if is_unsent or is_working_here else 0
        unsent_notional += unfilled if is_unsent else 0
        working_notional += unfilled if is_working_here else 0
        notional_today += quantity * unit if today else 0
    return OrderTotals(unsent_notional, working_notional, count_today, notional_today)


@functools.cache
def _built_for(build, dialect_name: str):
    return build(dialect_name)


def _query_for(build):
    """The query `build` makes for the session's database, built once per dialect (building it anew took a
    quarter of a check's time)."""
    return _built_for(build, db.session.get_bind().dialect.name)


def _text(value) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return str(value)

