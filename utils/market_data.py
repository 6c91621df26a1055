"""Market data: sources `simulated` (seeded random walk), `manual` and `schwab`; one cached batch call.

`Quote` lives here, the lower layer, so brokers import it without running back up (DESIGN §3).

- `get_quotes(symbols)` answers from Redis db 1 (`CACHE_REDIS_URL`, TTL `QUOTE_CACHE_TTL_SECONDS`) with one
  MGET and reads every miss from the configured source in ONE batched call.
- Prices live in the database (`models.MarketPrice`), so they survive restarts; Redis is only a cache.
- `simulated`: each symbol walks from a start price (configured universe, else derived from its name);
  step n of a symbol depends only on (SIMULATED_SEED, symbol, n), so a seed reproduces the same path.
- `manual`: prices set by `flask prices set` or `PUT /api/v1/admin/prices/<symbol>`; `as_of` = when set.
- Other sources (e.g. `schwab`) plug in through `register_source`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, InvalidOperation
from importlib import import_module
from typing import Protocol
from zoneinfo import ZoneInfo

import redis
from flask import current_app
from redis.exceptions import LockError
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from utils.errors import Conflict, DependencyUnavailable, InvalidSymbol, ValidationFailed
from utils.extensions import db

log = logging.getLogger("tradewarden.market_data")


@dataclass(frozen=True)
class Quote:
    """A price snapshot. `as_of` is the quote's own time (UTC), so callers can tell it is stale."""

    symbol: str
    bid: Decimal
    ask: Decimal
    last: Decimal
    as_of: datetime


# --- symbols -------------------------------------------------------------------------------------

EQUITY, OPTION, CRYPTO = "equity", "option", "crypto"
EQUITY_PATTERN = re.compile(r"^[A-Z][A-Z0-9]{0,5}(\.[A-Z]{1,2})?$")
CRYPTO_PATTERN = re.compile(r"^[A-Z0-9]{2,10}-(USD|USDC|USDT|EUR|GBP|BTC|ETH)$")
# OCC: root (1-6, padded with spaces to 6 in Schwab's form), YYMMDD, C/P, strike x 1000 as 8 digits.
OPTION_PATTERN = re.compile(r"^([A-Z][A-Z0-9.]{0,5}) *(\d{6})([CP])(\d{8})$")
OPTION_MULTIPLIER = Decimal(100)
MAX_PRICE = Decimal("1000000000")
# US listed options expire on their OCC date, a day of the New York calendar.
OPTIONS_CALENDAR = ZoneInfo("America/New_York")


def canonical_symbol(unsafe_symbol: str) -> str:
    """The canonical form of a symbol (upper case; options as unpadded OCC); raises InvalidSymbol."""
    text = str(unsafe_symbol or "").strip().upper()
    option = OPTION_PATTERN.match(text)
    if option:
        _expiry_date(option.group(2), unsafe_symbol)
        return "".join(option.groups())
    if EQUITY_PATTERN.match(text) or CRYPTO_PATTERN.match(text):
        return text
    raise InvalidSymbol(details={"symbol": str(unsafe_symbol)[:40]})


def _expiry_date(yymmdd: str, unsafe_symbol) -> date:
    try:
        return date(2000 + int(yymmdd[:2]), int(yymmdd[2:4]), int(yymmdd[4:]))
    except ValueError:  # e.g. month 13: no such contract
        raise InvalidSymbol(details={"symbol": str(unsafe_symbol)[:40]}) from None


def expired_on(symbol: str, now: datetime | None = None) -> date | None:
    """The expiration date of an option `symbol` (canonical) that expired before today in New York; None for an
    option still trading and for any other symbol."""
    option = OPTION_PATTERN.match(symbol)
    if option is None:
        return None
    expiry = _expiry_date(option.group(2), symbol)
    today = (now or datetime.now(timezone.utc)).astimezone(OPTIONS_CALENDAR).date()
    return expiry if expiry < today else None


def expired_underlying(symbol: str) -> str | None:
    """The underlying of an option `symbol` (canonical) that has expired, or None (a live option, any other
    symbol, or a root that is no tradable symbol of its own)."""
    if expired_on(symbol) is None:
        return None
    try:
        return canonical_symbol(OPTION_PATTERN.match(symbol).group(1))
    except InvalidSymbol:
        return None


def settlement_quote(symbol: str, underlying: Quote) -> Quote:
    """An expired option's only price: its intrinsic value at the underlying's last price (a call
    max(S − K, 0), a put max(K − S, 0), per share; zero when it expired out of the money), as of the
    underlying's quote, so an exit is never settled on a stale underlying price."""
    right, strike = OPTION_PATTERN.match(symbol).group(3, 4)
    distance = underlying.last - Decimal(strike) / 1000
    value = max(distance if right == "C" else -distance, Decimal(0))
    return Quote(symbol=symbol, bid=value, ask=value, last=value, as_of=underlying.as_of)


def asset_type_of(symbol: str) -> str:
    """`equity`, `option` or `crypto` for a symbol; raises InvalidSymbol when it fits no pattern."""
    canonical = canonical_symbol(symbol)
    if OPTION_PATTERN.match(canonical):
        return OPTION
    return CRYPTO if CRYPTO_PATTERN.match(canonical) else EQUITY


def multiplier_for(asset_type: str) -> Decimal:
    """Units of the underlying per contract: 100 for options, 1 otherwise."""
    return OPTION_MULTIPLIER if asset_type == OPTION else Decimal(1)


def occ_padded(symbol: str) -> str:
    """An option symbol in Schwab's padded OCC form (`AAPL  240517P00190000`)."""
    root, expiry, right, strike = OPTION_PATTERN.match(canonical_symbol(symbol)).groups()
    return f"{root:<6}{expiry}{right}{strike}"


def price_increment(price: Decimal) -> Decimal:
    """The tick size a price is rounded to: a cent at or above 1, finer below."""
    return Decimal("0.01") if abs(price) >= 1 else Decimal("0.0001")


def round_price(price: Decimal, rounding: str = ROUND_HALF_EVEN) -> Decimal:
    """`price` rounded to its tick size (never below the smallest tick)."""
    rounded = price.quantize(price_increment(price), rounding=rounding)
    return max(rounded, Decimal("0.0001"))


# --- settings ------------------------------------------------------------------------------------

DEFAULT_UNIVERSE = {"AAPL": "190.00", "MSFT": "420.00", "SPY": "520.00", "QQQ": "440.00", "TSLA": "180.00",
                    "NVDA": "900.00", "AMZN": "180.00", "GOOGL": "170.00", "BTC-USD": "65000.00",
                    "ETH-USD": "3200.00"}


def setting(name: str, default):
    """A config value, coerced to the type of `default` (tests may pass strings)."""
    value = current_app.config.get(name, default)
    if value is None or value == "":
        return default
    return type(default)(value) if not isinstance(default, Decimal) else Decimal(str(value))


def simulated_universe() -> dict[str, Decimal]:
    """Start prices of the simulated universe: `SIMULATED_SYMBOLS` ("AAPL=190,BTC-USD=65000") or a default."""
    raw = setting("SIMULATED_SYMBOLS", "")
    pairs = [item.split("=", 1) for item in raw.split(",") if "=" in item] if raw else DEFAULT_UNIVERSE.items()
    return {canonical_symbol(symbol): Decimal(str(price).strip()) for symbol, price in pairs}


def default_max_age() -> timedelta:
    return timedelta(seconds=setting("QUOTE_MAX_AGE_SECONDS", 300))


def is_stale(quote: Quote, max_age: timedelta | None = None, now: datetime | None = None) -> bool:
    """True when the quote is older than `max_age` (default `QUOTE_MAX_AGE_SECONDS`, 300 s)."""
    limit = max_age if max_age is not None else default_max_age()
    return (now or datetime.now(timezone.utc)) - quote.as_of > limit


def quote_from_last(symbol: str, last: Decimal, as_of: datetime) -> Quote:
    """A quote around `last`: bid/ask `QUOTE_SPREAD_BPS` apart, rounded outwards to the tick size."""
    half = Decimal(setting("QUOTE_SPREAD_BPS", 4)) / Decimal(20000)
    bid = min(round_price(last * (1 - half), ROUND_FLOOR), last)
    ask = max(round_price(last * (1 + half), ROUND_CEILING), last)
    return Quote(symbol=symbol, bid=bid, ask=ask, last=last, as_of=as_of)


# --- sources -------------------------------------------------------------------------------------

def broker_quote(symbol: str, bid, ask, last, as_of: datetime | None) -> Quote | None:
    """A broker's quote, or None when it cannot be trusted for a decision: a bid or ask that is missing or
    not positive, or no time of its own (a quote without a time could be of any age)."""
    prices = [Decimal(str(value)) if value not in (None, "") else None for value in (bid, ask, last)]
    if as_of is None or any(price is None or price <= 0 for price in prices[:2]):
        return None
    bid_price, ask_price, last_price = prices
    if last_price is None or last_price <= 0:
        last_price = (bid_price + ask_price) / 2
    return Quote(symbol=symbol, bid=bid_price, ask=ask_price, last=last_price, as_of=as_of)


class QuoteSource(Protocol):
    def fetch(self, symbols: list[str]) -> dict[str, Quote]:
        """Quotes for canonical symbols in one batched read; unknown symbols are absent."""


def _stored_prices(source: str, symbols: list[str]) -> dict[str, "object"]:
    from models import MarketPrice
    rows = db.session.execute(select(MarketPrice).where(MarketPrice.source == source,
                                                        MarketPrice.symbol.in_(symbols))).scalars()
    return {row.symbol: row for row in rows}


class ManualSource:
    """Prices an admin set; a symbol never set has no quote."""

    name = "manual"

    def fetch(self, symbols: list[str]) -> dict[str, Quote]:
        rows = _stored_prices(self.name, symbols)
        return {symbol: quote_from_last(symbol, row.price, row.as_of) for symbol, row in rows.items()}


class SimulatedSource:
    """The seeded random walk; a symbol not walked yet quotes at its start price."""

    name = "simulated"

    def fetch(self, symbols: list[str]) -> dict[str, Quote]:
        rows = _stored_prices(self.name, symbols)
        now = datetime.now(timezone.utc)
        new = [symbol for symbol in symbols if symbol not in rows]
        if new:
            _watch(new)
        quotes = {symbol: quote_from_last(symbol, row.price, row.as_of) for symbol, row in rows.items()}
        quotes.update({symbol: quote_from_last(symbol, start_price(symbol), now) for symbol in new})
        return quotes


SOURCES: dict[str, QuoteSource | str] = {"manual": ManualSource(), "simulated": SimulatedSource()}
SOURCES["schwab"] = "utils.brokers.schwab:SchwabQuoteSource"  # added by broker linking (issue 6)


def register_source(name: str, source: QuoteSource | str) -> None:
    """Add a quote source (an object with `fetch(symbols)`, or "module:attribute" imported lazily)."""
    SOURCES[name] = source


def current_source() -> QuoteSource:
    """The source named by MARKET_DATA_SOURCE; raises DependencyUnavailable when it cannot be loaded."""
    name = current_app.config.get("MARKET_DATA_SOURCE", "simulated")
    source = SOURCES.get(name)
    if isinstance(source, str):
        module, attribute = source.split(":")
        try:
            source = SOURCES[name] = getattr(import_module(module), attribute)()
        except (ImportError, AttributeError):
            log.exception("market data source %s (%s) cannot be loaded", name, module)
            source = None
    if source is None:
        raise DependencyUnavailable(f"The market data source {name!r} is not available.",
                                    code="market_data_unavailable")
    return source


def source_name() -> str:
    return current_app.config.get("MARKET_DATA_SOURCE", "simulated")


# --- the cached batch call -----------------------------------------------------------------------

READS_KEY = "market_data:source_reads"          # batched source reads (a metric; tests count them)
READ_SYMBOLS_KEY = "market_data:source_symbols"  # symbols read from the source
WATCHED_KEY = "market_data:watched"              # simulated symbols someone asked for
_STALE_KEY = "market_data_stale_symbols"


def cache() -> redis.Redis:
    """The Redis client for the quote cache (db 1), one per app."""
    client = current_app.extensions.get("market_data_cache")
    if client is None:
        client = redis.Redis.from_url(current_app.config["CACHE_REDIS_URL"], socket_timeout=2,
                                      socket_connect_timeout=2)
        current_app.extensions["market_data_cache"] = client
    return client


def cache_key(symbol: str, source: str | None = None) -> str:
    return f"quote:{source or source_name()}:{symbol}"


def get_quotes(symbols: list[str], *, fresh: bool = False) -> dict[str, Quote]:
    """Quotes keyed by the requested symbols: one cache MGET, one batched source read for the misses.

    Invalid or unknown symbols are simply absent. `fresh=True` skips the cache (and refreshes it). An expired
    option is not read from the source: it is priced at its settlement value from its underlying's quote.
    A Redis outage degrades to reading the source; it never fails the call.
    """
    wanted = _canonical_map(symbols)
    if not wanted:
        return {}
    unique = list(dict.fromkeys(wanted.values()))
    expired = {symbol: underlying for symbol in unique if (underlying := expired_underlying(symbol))}
    found = _live_quotes([symbol for symbol in unique if symbol not in expired] + list(expired.values()), fresh)
    found.update({symbol: settlement_quote(symbol, found[underlying])
                  for symbol, underlying in expired.items() if underlying in found})
    return {requested: replace(found[canonical], symbol=requested)
            for requested, canonical in wanted.items() if canonical in found}


def _live_quotes(symbols: list[str], fresh: bool) -> dict[str, Quote]:
    """Quotes of trading symbols: those held by `quotes_held`, the cache, then one batched source read for the
    misses."""
    unique = list(dict.fromkeys(symbols))
    held = None if fresh else _HELD_QUOTES.get()
    found = {symbol: held[symbol] for symbol in unique if symbol in held} if held else {}
    if not fresh and len(found) < len(unique):
        found.update(_cached([symbol for symbol in unique if symbol not in found]))
    misses = [symbol for symbol in unique if symbol not in found]
    if misses:
        loaded = current_source().fetch(misses)
        _store(loaded, len(misses))
        found.update(loaded)
    if held is not None:
        held.update(found)
    return found


_HELD_QUOTES: ContextVar[dict[str, Quote] | None] = ContextVar("held_quotes", default=None)


@contextmanager
def quotes_held():
    """Within the block each symbol's quote is read once: later reads (not `fresh`) get what the first found.
    Lets a paper execution read its price before it takes the database's write lock, not while holding it."""
    token = _HELD_QUOTES.set({})
    try:
        yield
    finally:
        _HELD_QUOTES.reset(token)


def _canonical_map(symbols: list[str]) -> dict[str, str]:
    wanted = {}
    for requested in symbols:
        try:
            wanted[requested] = canonical_symbol(requested)
        except InvalidSymbol:
            continue
    return wanted


def _cached(symbols: list[str]) -> dict[str, Quote]:
    try:
        values = cache().mget([cache_key(symbol) for symbol in symbols])
    except redis.RedisError as error:
        log.warning("quote cache unavailable: %s", error)
        return {}
    return {symbol: _decode(symbol, value) for symbol, value in zip(symbols, values) if value}


def _store(quotes: dict[str, Quote], misses: int) -> None:
    ttl = setting("QUOTE_CACHE_TTL_SECONDS", 5)
    try:
        pipe = cache().pipeline(transaction=False)
        for symbol, quote in quotes.items():
            pipe.set(cache_key(symbol), _encode(quote), ex=ttl)
        pipe.incr(READS_KEY)
        pipe.incrby(READ_SYMBOLS_KEY, misses)
        pipe.execute()
    except redis.RedisError as error:
        log.warning("quote cache unavailable: %s", error)


def _encode(quote: Quote) -> str:
    return json.dumps({"b": str(quote.bid), "a": str(quote.ask), "l": str(quote.last), "t": quote.as_of.isoformat()})


def _decode(symbol: str, raw: bytes) -> Quote:
    data = json.loads(raw)
    return Quote(symbol=symbol, bid=Decimal(data["b"]), ask=Decimal(data["a"]), last=Decimal(data["l"]),
                 as_of=datetime.fromisoformat(data["t"]))


def invalidate_after_commit(symbols: list[str], source: str | None = None) -> None:
    """Drop these symbols' cached quotes once the current transaction commits."""
    stale = db.session.info.setdefault(_STALE_KEY, set())
    stale.update(cache_key(symbol, source) for symbol in symbols)


@event.listens_for(Session, "after_commit")
def _drop_stale_quotes(session) -> None:
    keys = session.info.pop(_STALE_KEY, None)
    if not keys:
        return
    try:
        cache().delete(*keys)
    except redis.RedisError as error:
        log.warning("could not drop %d cached quotes: %s", len(keys), error)


@event.listens_for(Session, "after_rollback")
def _keep_cached_quotes(session) -> None:
    session.info.pop(_STALE_KEY, None)


MAX_WATCHED = 1000  # symbols anyone may ask for are walked too, but not without bound


def _watch(symbols: list[str]) -> None:
    try:
        if cache().scard(WATCHED_KEY) < MAX_WATCHED:
            cache().sadd(WATCHED_KEY, *symbols)
    except redis.RedisError as error:
        log.warning("could not record watched symbols: %s", error)


# --- the simulated random walk -------------------------------------------------------------------

def start_price(symbol: str) -> Decimal:
    """The walk's start: the configured universe price, else one derived from the symbol's name."""
    configured = simulated_universe().get(symbol)
    if configured is not None:
        return configured
    digest = int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:8], "big")
    asset_type = asset_type_of(symbol)
    if asset_type == OPTION:
        return Decimal(50 + digest % 2000) / 100        # 0.50 .. 20.49 per share
    if asset_type == CRYPTO:
        return Decimal(100 + digest % 1_000_000) / 100  # 1.00 .. 10,000.99
    return Decimal(1000 + digest % 49_000) / 100        # 10.00 .. 499.99


def simulated_step(seed: int, symbol: str, tick: int, price: Decimal) -> Decimal:
    """The price after step `tick` of the walk: a move of at most ±SIMULATED_VOLATILITY_BPS."""
    volatility = setting("SIMULATED_VOLATILITY_BPS", 20)
    move_bps = random.Random(f"{seed}:{symbol}:{tick}").randint(-volatility, volatility)
    return round_price(price * (1 + Decimal(move_bps) / Decimal(10000)))


TICK_LOCK_KEY = "lock:market.tick"


@contextmanager
def tick_lock():
    """Yield True to the one tick holding the Redis lock (beat runs overlapping never move prices twice)."""
    lock = cache().lock(TICK_LOCK_KEY, timeout=max(30, setting("MARKET_TICK_SECONDS", 5) * 6))
    try:
        acquired = lock.acquire(blocking=False)
    except redis.RedisError as error:
        log.warning("market tick skipped: lock unavailable: %s", error)
        acquired = False
    try:
        yield acquired
    finally:
        if acquired:
            _release(lock)


def _release(lock) -> None:
    try:
        lock.release()
    except (redis.RedisError, LockError) as error:  # expired meanwhile: nothing to free
        log.warning("market tick lock release: %s", error)


def advance_simulated_prices(now: datetime | None = None) -> list[str]:
    """Move every simulated symbol one step (inserting new ones at their start price); flushes.

    Each row moves with a conditional UPDATE on its tick number, so two overlapping ticks never
    move a symbol twice for the same step. Returns the symbols whose price changed.
    """
    from models import MarketPrice
    now = now or datetime.now(timezone.utc)
    seed = setting("SIMULATED_SEED", 42)
    rows = _stored_prices("simulated", _simulated_symbols())
    moved = []
    for symbol in _simulated_symbols():
        row = rows.get(symbol)
        if row is None:
            db.session.add(MarketPrice(source="simulated", symbol=symbol, price=start_price(symbol), tick=0, as_of=now))
            continue
        if _move(row, simulated_step(seed, symbol, row.tick + 1, row.price), now):
            moved.append(symbol)
    db.session.flush()
    invalidate_after_commit(moved, "simulated")
    return moved


def _simulated_symbols() -> list[str]:
    from models import MarketPrice
    stored = db.session.execute(select(MarketPrice.symbol).where(MarketPrice.source == "simulated")).scalars()
    try:
        watched = {member.decode() for member in cache().smembers(WATCHED_KEY)}
    except redis.RedisError:
        watched = set()
    symbols = set(stored) | set(simulated_universe()) | set(_canonical_map(list(watched)).values())
    return sorted(symbol for symbol in symbols if expired_on(symbol) is None)  # an expired option walks no more


def _move(row, price: Decimal, now: datetime) -> bool:
    from models import MarketPrice
    result = db.session.execute(
        update(MarketPrice).where(MarketPrice.id == row.id, MarketPrice.tick == row.tick)
        .values(price=price, tick=row.tick + 1, as_of=now).execution_options(synchronize_session=False))
    db.session.expire(row)
    return result.rowcount == 1


# --- manual prices -------------------------------------------------------------------------------

def parse_price(unsafe_price) -> Decimal:
    """A positive price with at most 8 decimal places; raises ValidationFailed."""
    try:
        price = Decimal(str(unsafe_price).strip()) if not isinstance(unsafe_price, (bool, float)) else None
    except (InvalidOperation, ValueError):
        price = None
    if price is None or not price.is_finite() or price <= 0 or price > MAX_PRICE \
            or price.normalize().as_tuple().exponent < -8:
        raise ValidationFailed("price must be a positive decimal (at most 8 decimal places), e.g. \"190.25\".",
                               details={"field": "price"})
    return price


def set_manual_price(unsafe_symbol: str, unsafe_price, set_by_id: int | None = None):
    """Store the manual price of a symbol (as_of = now), flush, and after commit drop its cached quote
    and enqueue `market.match` for it. Raises Conflict unless MARKET_DATA_SOURCE=manual,
    InvalidSymbol / ValidationFailed for bad input."""
    from models import MarketPrice
    from utils import jobs
    if source_name() != "manual":
        raise Conflict("Prices can be set only when MARKET_DATA_SOURCE=manual.", code="market_data_not_manual")
    symbol, price = canonical_symbol(unsafe_symbol), parse_price(unsafe_price)
    row = _stored_prices("manual", [symbol]).get(symbol)
    if row is None:
        row = MarketPrice(source="manual", symbol=symbol, tick=0)
        db.session.add(row)
    row.price, row.as_of, row.set_by_id = price, datetime.now(timezone.utc), set_by_id
    row.tick += 1
    db.session.flush()
    if set_by_id is not None:
        from utils import audit
        audit.record("market.price_set", user=set_by_id, details={"symbol": symbol, "price": str(price)})
    invalidate_after_commit([symbol], "manual")
    jobs.enqueue_after_commit(jobs.MARKET_MATCH, symbol)
    return row
