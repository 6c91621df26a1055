"""Stop-loss guard (issue 5): broker-side stops, the beat sweep, trailing stops and take-profit.

- **Broker-side stop**: when an entry fills and the trade has a stop, a GTC stop order (purpose
  `stop_loss`, linked by `trade_id`) goes through the normal orders path to brokers that support it.
  It is resized when partial fills grow the trade, replaced when the stop moves, and cancelled before
  any other exit (`cancel_working_exits`, called by `trades.close_trade`, which also withdraws any exit
  the user left resting, so the closing market exit sells exactly what is still held).
- **Sweep** (`stoploss.sweep`, every `STOPLOSS_INTERVAL_SECONDS`): one query for open trades with a
  stop or take-profit, one batched `market_data.get_quotes` for their symbols, a pure evaluation
  (`evaluate`), then for each breach the same claim a manual close uses (`trades.close_trade`:
  `open → closing` once, cancel the broker-side stop first, one market exit). A Redis lock keeps
  overlapping sweeps apart; the conditional claim makes even a lost lock harmless.
- **Stale or missing quotes** (older than `QUOTE_MAX_AGE_SECONDS`) never trigger an exit: the trade's
  `quote_misses` grows (reset by a good quote); at 3 in a row the dashboard warns and one audit event
  is written.
- **Visible**: the last sweep is stored as JSON at `stoploss:last_sweep` in the cache Redis (read by
  /health/ready and the dashboard) with running totals at `stoploss:totals`; `SweepCollector` turns
  them into the `stoploss_*` Prometheus metrics on the web process.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

import redis as redis_lib
from flask import current_app, has_app_context
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import String, func, or_, select, type_coerce, update
from sqlalchemy.orm.attributes import set_committed_value

from models import (AssetType, BrokerConnection, CloseReason, Order, OrderEvent, OrderPurpose, OrderSide,
                    OrderStatus, OrderType, TimeInForce, Trade, TradeSide, TradeStatus, User)
from utils import audit, jobs, market_data, orders, risk, trades
from utils.dbtypes import utcnow
from utils.errors import Conflict, DomainError, OrderNotCancelable, OrderNotFound, ValidationFailed
from utils.extensions import db
from utils.health import LAST_SWEEP_KEY

log = logging.getLogger("tradewarden.stoploss")

TOTALS_KEY = "stoploss:totals"
MISS_WARNING_THRESHOLD = 3
ID_CHUNK = 500  # ids per `IN (...)` so no database hits its bound-parameter limit
S = OrderStatus
WORKING = trades.WORKING_ORDER_STATUSES
HUNDRED = Decimal(100)
PROTECTION_FIELDS = ("stop_loss_price", "trailing_stop_percent", "take_profit_price")


# --- evaluation: pure, no I/O (the benchmark times this with the query and the quote read) ---------

# Speed (benchmarks/stoploss.py): plain columns, no ORM objects, `side` as a boolean and decimals as their
# stored text (no per-row type processing); `evaluate` makes Decimals only of the values it compares.
CANDIDATE_COLUMNS = (Trade.id, Trade.user_id, Trade.symbol, (Trade.side == TradeSide.LONG).label("is_long"),
                     type_coerce(Trade.stop_loss_price, String), type_coerce(Trade.trailing_stop_percent, String),
                     type_coerce(Trade.water_mark_price, String), type_coerce(Trade.take_profit_price, String),
                     Trade.quote_misses)


@dataclass
class SweepPlan:
    """What one sweep decided: breaches to close, quote misses, recovered trades and trailing moves."""

    checked: int = 0
    breaches: list[tuple[int, int, str]] = field(default_factory=list)        # (trade_id, user_id, reason)
    misses: list[tuple[int, int, str, int]] = field(default_factory=list)     # (trade_id, user_id, symbol, new count)
    recovered: list[int] = field(default_factory=list)                        # trade ids whose misses reset
    ratchets: list[tuple] = field(default_factory=list)  # (trade_id, old_stop, new_stop, old_mark, new_mark)
    symbols: int = 0


# What a sweep checks: open trades with a stop, trail or take-profit.
GUARDED = (Trade.status == TradeStatus.OPEN,
           or_(Trade.stop_loss_price.is_not(None), Trade.trailing_stop_percent.is_not(None),
               Trade.take_profit_price.is_not(None)))


def candidate_query():
    """The ONE query of a sweep: the needed columns of open trades with a stop, trail or take-profit."""
    return select(*CANDIDATE_COLUMNS).where(*GUARDED)


def usable_quotes(quotes: dict, now: datetime, max_age: timedelta) -> dict:
    """Per symbol (bid, ask, last) of the quotes that are fresh enough; stale ones are left out."""
    oldest = now - max_age
    return {symbol: (quote.bid or quote.last, quote.ask or quote.last, quote.last)
            for symbol, quote in quotes.items() if quote.as_of >= oldest}


def evaluate(rows, prices: dict) -> SweepPlan:
    """Decide, for candidate rows (CANDIDATE_COLUMNS) and usable prices per symbol, which trades breach,
    miss a quote or move a trailing stop. Pure: no I/O."""
    plan = SweepPlan(checked=len(rows), symbols=len(prices))
    for trade_id, user_id, symbol, long, stop, trail, mark, target, misses in rows:
        price = prices.get(symbol)
        if price is None:
            plan.misses.append((trade_id, user_id, symbol, misses + 1))
            continue
        if misses:
            plan.recovered.append(trade_id)
        stop = None if stop is None else Decimal(stop)
        if trail is not None:
            stop = _ratchet(plan, trade_id, stop, Decimal(trail), None if mark is None else Decimal(mark),
                            price[2], long)
        reason = _breach(price[0] if long else price[1], stop, None if target is None else Decimal(target), long)
        if reason:
            plan.breaches.append((trade_id, user_id, reason))
    return plan


def _breach(price: Decimal, stop: Decimal | None, target: Decimal | None, long: bool) -> str | None:
    if long:
        if stop is not None and price <= stop:
            return CloseReason.STOP_LOSS.value
        return CloseReason.TAKE_PROFIT.value if target is not None and price >= target else None
    if stop is not None and price >= stop:
        return CloseReason.STOP_LOSS.value
    return CloseReason.TAKE_PROFIT.value if target is not None and price <= target else None


def _ratchet(plan: SweepPlan, trade_id: int, stop: Decimal | None, trail: Decimal, mark: Decimal | None,
             last: Decimal, long: bool) -> Decimal | None:
    new_mark, new_stop = trailed(stop, trail, mark, last, long)
    if new_mark != mark or new_stop != stop:
        plan.ratchets.append((trade_id, stop, new_stop, mark, new_mark))
    return new_stop


def trailed(stop: Decimal | None, percent: Decimal, mark: Decimal | None, price: Decimal,
            long: bool) -> tuple[Decimal, Decimal]:
    """(new water mark, new stop) of a trailing stop at `price`; the stop only moves in the position's favour."""
    if long:
        mark = price if mark is None else max(mark, price)
        trail = market_data.round_price(mark * (1 - percent / HUNDRED))
        return mark, trail if stop is None else max(stop, trail)
    mark = price if mark is None else min(mark, price)
    trail = market_data.round_price(mark * (1 + percent / HUNDRED))
    return mark, trail if stop is None else min(stop, trail)


def plan_sweep(now: datetime | None = None) -> SweepPlan:
    """Read the candidates (one query) and their quotes (one batched read) and evaluate them; no writes."""
    rows = db.session.connection().execute(candidate_query()).all()  # Core rows: no ORM loading layer
    symbols = sorted({row[2] for row in rows})
    expired = {symbol for symbol in symbols if market_data.expired_on(symbol)}
    if expired:  # an expired option is settled (`trades.settle_expired_options`) or closed by its broker
        rows = [row for row in rows if row[2] not in expired]
        symbols = [symbol for symbol in symbols if symbol not in expired]
    quotes = market_data.get_quotes(symbols) if symbols else {}
    return evaluate(rows, usable_quotes(quotes, now or datetime.now(timezone.utc), market_data.default_max_age()))


# --- the sweep: apply the plan ---------------------------------------------------------------------

def sweep(commit) -> dict:
    """Run one stop-loss sweep under the sweep lock: record misses, move trailing stops, close breaches
    (committing through `commit` after each step), then store the record. Returns the summary."""
    started, started_at = time.perf_counter(), utcnow()
    timeout = max(60, 5 * int(current_app.config.get("STOPLOSS_INTERVAL_SECONDS") or 60))
    with orders.sweep_lock("stoploss", timeout=timeout) as acquired:
        _count("runs")
        if not acquired:
            log.info("stop-loss sweep skipped: another sweep holds the lock")
            return {"outcome": "skipped"}
        plan = plan_sweep()
        record_misses(plan)
        commit()
        ratcheted = apply_ratchets(plan, commit)
        triggered, failed = close_breaches(plan, commit)
    summary = {"outcome": "ok" if not failed else "errors", "started_at": started_at.isoformat(),
               "finished_at": utcnow().isoformat(), "duration_seconds": round(time.perf_counter() - started, 4),
               "checked": plan.checked, "symbols": plan.symbols, "triggered": triggered, "failed": failed,
               "quote_unavailable": len(plan.misses), "ratcheted": ratcheted}
    store_record(summary)
    return summary


def record_misses(plan: SweepPlan) -> None:
    """Count one quote miss on each trade without a usable quote, reset recovered ones, and write one audit
    event per trade reaching MISS_WARNING_THRESHOLD misses in a row (flushes)."""
    for chunk in _chunks([miss[0] for miss in plan.misses]):
        db.session.execute(update(Trade).where(Trade.id.in_(chunk), Trade.status == TradeStatus.OPEN)
                           .values(quote_misses=Trade.quote_misses + 1).execution_options(synchronize_session=False))
    for chunk in _chunks(plan.recovered):
        db.session.execute(update(Trade).where(Trade.id.in_(chunk)).values(quote_misses=0)
                           .execution_options(synchronize_session=False))
    for trade_id, user_id, symbol, count in plan.misses:
        if count == MISS_WARNING_THRESHOLD:  # exactly once per streak, not once per sweep
            audit.record("stoploss.quote_unavailable", user=user_id, actor=None,
                         details={"trade_id": trade_id, "symbol": symbol, "misses": count})
    db.session.flush()


def _chunks(ids: list[int]):
    for start in range(0, len(ids), ID_CHUNK):
        yield ids[start:start + ID_CHUNK]


def apply_ratchets(plan: SweepPlan, commit) -> int:
    """Write each trailing stop's new water mark and stop (guarded by the old values) and move its
    broker-side stop; returns how many stops moved."""
    breached = {trade_id for trade_id, _user, _reason in plan.breaches}
    moved = 0
    for trade_id, old_stop, new_stop, old_mark, new_mark in plan.ratchets:
        if not _write_ratchet(trade_id, old_stop, new_stop, old_mark, new_mark):
            continue
        if new_stop != old_stop:
            moved += 1
            if trade_id not in breached:  # a breached trade's stop is about to be cancelled anyway
                _resync_quietly(trade_id)
        commit()
    return moved


def _write_ratchet(trade_id: int, old_stop, new_stop, old_mark, new_mark) -> bool:
    guards = [Trade.id == trade_id, Trade.status == TradeStatus.OPEN,
              Trade.stop_loss_price.is_(None) if old_stop is None else Trade.stop_loss_price == old_stop,
              Trade.water_mark_price.is_(None) if old_mark is None else Trade.water_mark_price == old_mark]
    return db.session.execute(update(Trade).where(*guards).values(stop_loss_price=new_stop,
                                                                  water_mark_price=new_mark, updated_at=utcnow())
                              .execution_options(synchronize_session=False)).rowcount == 1


def _resync_quietly(trade_id: int) -> None:
    trade = db.session.get(Trade, trade_id, populate_existing=True)
    try:
        sync_broker_stop(trade)
    except DomainError as error:  # the sweep itself still guards the trade
        log.warning("trade %s: broker-side stop not moved: %s", trade_id, error.message)


def close_breaches(plan: SweepPlan, commit) -> tuple[int, int]:
    """Close each breached trade through the one claim (`trades.close_trade`); returns (closed, failed).
    A trade someone else already claimed is skipped; one failing trade never stops the others."""
    closed = failed = 0
    for trade_id, user_id, reason in plan.breaches:
        try:
            if not still_breached(trade_id):  # the plan's quotes may have aged while earlier closes ran
                continue
            closed += close_breached(trade_id, user_id, CloseReason(reason))
            commit()
        except DomainError as error:
            db.session.rollback()
            failed += not isinstance(error, Conflict)
            log.warning("trade %s: %s not closed now: %s", trade_id, reason, error.message)
        except Exception:  # noqa: BLE001 — e.g. a broker answer we cannot read: the other breaches still close
            db.session.rollback()
            failed += 1
            log.exception("trade %s: %s not closed now", trade_id, reason)
    return closed, failed


def still_breached(trade_id: int) -> bool:
    """Evaluate one trade again on its current stop and a quote that is fresh now (one query, one cached
    quote read): closes act on the price at the moment of closing, never on one that went stale since.
    A trade whose last automated exit the broker refused is not breached again until its retry time
    (`trades.exit_due`), so a refused exit is not sent again at every sweep."""
    rows = db.session.connection().execute(candidate_query().where(Trade.id == trade_id, trades.exit_due())).all()
    if not rows:
        return False
    quotes = market_data.get_quotes([rows[0][2]])
    prices = usable_quotes(quotes, datetime.now(timezone.utc), market_data.default_max_age())
    return bool(evaluate(rows, prices).breaches)


def close_breached(trade_id: int, user_id: int, reason: CloseReason) -> bool:
    """Claim and close one breached trade (False when another closer got there first); flushes."""
    user = db.session.get(User, user_id)
    try:
        trade = trades.close_trade(user, trade_id, reason=reason)
    except Conflict as error:
        if error.code != "trade.not_open":
            raise
        return False
    audit.record(f"stoploss.{reason.value}", user=user_id, actor=None,
                 details={"trade_id": trade_id, "symbol": trade.symbol, "status": str(trade.status)})
    log.info("trade %s: %s triggered", trade_id, reason.value)
    return True


# --- the record: /health/ready, the dashboard and the metrics read it --------------------------------

def _cache() -> redis_lib.Redis:
    return risk.cache_redis()


def _count(name: str, amount: int = 1) -> None:
    try:
        _cache().hincrby(TOTALS_KEY, name, amount)
    except redis_lib.RedisError as error:
        log.warning("stop-loss totals not updated: %s", error)


def store_record(summary: dict) -> None:
    """Write the sweep's summary to `stoploss:last_sweep` and add its counts to the running totals."""
    try:
        pipe = _cache().pipeline(transaction=False)
        pipe.set(LAST_SWEEP_KEY, json.dumps(summary))
        for name in ("checked", "triggered", "quote_unavailable", "ratcheted"):
            pipe.hincrby(TOTALS_KEY, name, summary[name])
        pipe.hincrby(TOTALS_KEY, "sweeps", 1)
        pipe.execute()
    except redis_lib.RedisError as error:
        log.warning("stop-loss sweep record not stored: %s", error)


def last_record() -> dict | None:
    """The last sweep's summary, or None when none ran (or Redis is down)."""
    try:
        raw = _cache().get(LAST_SWEEP_KEY)
        return json.loads(raw) if raw else None
    except (redis_lib.RedisError, ValueError):
        return None


def totals() -> dict[str, int]:
    """Running totals over all sweeps: runs, sweeps, checked, triggered, quote_unavailable, ratcheted."""
    try:
        return {key.decode(): int(value) for key, value in _cache().hgetall(TOTALS_KEY).items()}
    except (redis_lib.RedisError, ValueError):
        return {}


def guard_status(user) -> dict:
    """The dashboard card: when the last sweep ran and whether it is on time, how many of the user's trades a
    sweep guards, and the user's trades with MISS_WARNING_THRESHOLD or more quote misses in a row. The sweep's
    own counts cover every user's trades, so they are not shown (one user must not learn of another's)."""
    record = last_record()
    age = None
    if record and record.get("finished_at"):
        age = (utcnow() - datetime.fromisoformat(record["finished_at"])).total_seconds()
    warnings = db.session.execute(select(Trade.id, Trade.symbol, Trade.quote_misses).where(
        Trade.user_id == user.id, Trade.status == TradeStatus.OPEN,
        Trade.quote_misses >= MISS_WARNING_THRESHOLD).order_by(Trade.id)).all()
    interval = int(current_app.config.get("STOPLOSS_INTERVAL_SECONDS") or 60)
    guarded = db.session.scalar(select(func.count(Trade.id)).where(Trade.user_id == user.id, *GUARDED))
    return {"last_sweep": record, "age_seconds": age, "interval_seconds": interval, "guarded": guarded,
            "overdue": record is None or age is None or age > 3 * interval,
            "warnings": [{"trade_id": row[0], "symbol": row[1], "misses": row[2]} for row in warnings],
            "refused_exits": refused_exits(user)}


def refused_exits(user) -> list[dict]:
    """The user's open trades whose last automated exit the broker refused: why, and when the next goes."""
    rows = db.session.execute(select(Trade.id, Trade.symbol, Trade.exit_refusals, Trade.exit_retry_at).where(
        Trade.user_id == user.id, Trade.status == TradeStatus.OPEN, Trade.exit_refusals > 0).order_by(Trade.id)).all()
    reasons = _last_refusals([row[0] for row in rows]) if rows else {}
    return [{"trade_id": trade_id, "symbol": symbol, "refusals": refusals, "retry_at": retry_at,
             "reason": reasons.get(trade_id)} for trade_id, symbol, refusals, retry_at in rows]


def _last_refusals(trade_ids: list[int]) -> dict[int, str | None]:
    """The broker's reason for the latest refused exit of each trade, in one query."""
    rows = db.session.execute(select(Order.trade_id, Order.reject_reason).where(
        Order.trade_id.in_(trade_ids), Order.purpose != OrderPurpose.ENTRY, Order.status == S.REJECTED)
        .order_by(Order.id))
    return dict(rows.all())  # ordered by id: each trade keeps its latest


class SweepCollector:
    """Prometheus view of the sweep (which runs in the worker) from the stored record, for the web process."""

    def describe(self):
        return list(self._families())

    def collect(self):
        if not has_app_context():
            return []
        return list(self._families(last_record() or {}, totals()))

    @staticmethod
    def _families(record: dict | None = None, running: dict | None = None):
        gauges = {"stoploss_last_sweep_timestamp_seconds": "Unix time the stop-loss sweep last finished.",
                  "stoploss_sweep_duration_seconds": "Seconds the last stop-loss sweep took."}
        counters = {"stoploss_checked": ("checked", "Trades checked by stop-loss sweeps."),
                    "stoploss_triggered": ("triggered", "Trades closed by a stop-loss or take-profit."),
                    "stoploss_quote_unavailable": ("quote_unavailable",
                                                   "Trade checks skipped for a stale or missing quote.")}
        values = _gauge_values(record or {})
        for name, text in gauges.items():
            family = GaugeMetricFamily(name, text)
            if record is not None and name in values:
                family.add_metric([], values[name])
            yield family
        for name, (key, text) in counters.items():
            family = CounterMetricFamily(name, text)
            if running is not None:
                family.add_metric([], running.get(key, 0))
            yield family


def _gauge_values(record: dict) -> dict:
    values = {}
    try:
        if record.get("finished_at"):
            values["stoploss_last_sweep_timestamp_seconds"] = datetime.fromisoformat(record["finished_at"]).timestamp()
        if record.get("duration_seconds") is not None:
            values["stoploss_sweep_duration_seconds"] = float(record["duration_seconds"])
    except (TypeError, ValueError):
        pass
    return values


# --- broker-side stops -------------------------------------------------------------------------------

def on_entry_filled(trade: Trade, opened: bool = False) -> None:
    """After an entry fill opened (`opened`) or grew `trade`: start its trailing stop's water mark at the entry
    price and place or resize its broker-side stop (flushes). Never raises for a broker problem."""
    if trade.status != TradeStatus.OPEN:
        return
    if trade.trailing_stop_percent is not None and trade.water_mark_price is None and trade.entry_price:
        mark, stop = trailed(trade.stop_loss_price, trade.trailing_stop_percent, None, trade.entry_price,
                             trade.side == TradeSide.LONG)
        _set_trade(trade, water_mark_price=mark, stop_loss_price=stop)
    try:
        # A stop is placed only for an open trade, so the fill that opened it has none to look for.
        sync_broker_stop(trade, working=[] if opened else None)
    except DomainError as error:  # recording the fill matters more; the sweep still guards the trade
        log.warning("trade %s: broker-side stop not placed: %s", trade.id, error.message)


def on_exit_filled(trade: Trade) -> None:
    """After an exit fill: when it closed the trade, withdraw every exit still working (the broker-side stop,
    a resting exit of the user's), so nothing is left at the broker to sell again. When it reduced a
    still-open trade, or a failed exit handed it back to `open`: resize or re-place its broker-side stop
    (flushes; never raises for a broker problem)."""
    if trade.status == TradeStatus.CLOSED:
        for order in working_exits(trade.id):
            withdraw_exit(order)
        return
    if trade.status != TradeStatus.OPEN:
        return
    try:
        sync_broker_stop(trade)
    except DomainError as error:
        log.warning("trade %s: broker-side stop not resized: %s", trade.id, error.message)


def _set_trade(trade: Trade, **values) -> None:
    db.session.execute(update(Trade).where(Trade.id == trade.id).values(**values, updated_at=utcnow())
                       .execution_options(synchronize_session=False))
    for name, value in values.items():
        set_committed_value(trade, name, value)


def working_stops(trade_id: int) -> list[Order]:
    """The trade's broker-side stop orders still working (oldest first)."""
    return list(db.session.scalars(select(Order).where(
        Order.trade_id == trade_id, Order.purpose == OrderPurpose.STOP_LOSS, Order.order_type == OrderType.STOP,
        Order.status.in_(WORKING)).order_by(Order.id).execution_options(populate_existing=True)))


def broker_stops_enabled(trade: Trade) -> bool:
    """Whether the trade's broker can rest a stop order (and STOPLOSS_BROKER_STOPS is not off)."""
    if not current_app.config["STOPLOSS_BROKER_STOPS"]:
        return False
    from utils.brokers import get_broker
    return bool(get_broker(db.session.get(BrokerConnection, trade.broker_connection_id)).supports_stop_orders)


def sync_broker_stop(trade: Trade, working: list[Order] | None = None) -> Order | None:
    """Make the broker-side stop match the open trade: place it, resize or move it (a replacement order),
    or withdraw it when there is no stop any more (flushes; orders are sent after commit). `working`: the
    trade's working stops when the caller knows them (read here otherwise)."""
    working = working_stops(trade.id) if working is None else working
    quantity = trade.quantity - trade.exit_quantity
    if trade.status != TradeStatus.OPEN or trade.stop_loss_price is None or quantity <= 0 \
            or not broker_stops_enabled(trade):
        for order in working:
            withdraw_exit(order)
        return None
    current = working[-1] if working else None
    if current is None or current.status == S.PENDING_CANCEL:
        return _new_stop(trade, quantity)
    if (current.quantity - current.filled_quantity, current.stop_price) == (quantity, trade.stop_loss_price):
        return current
    if current.status == S.PENDING and _rewrite_pending(current, quantity, trade.stop_loss_price):
        return current
    return _new_stop(trade, quantity, replacing=current)


def _exit_instruction(trade: Trade) -> tuple[OrderSide, str]:
    side = OrderSide.SELL if trade.side == TradeSide.LONG else OrderSide.BUY
    if trade.asset_type == AssetType.OPTION:
        return side, "SELL_TO_CLOSE" if side == OrderSide.SELL else "BUY_TO_CLOSE"
    return side, "SELL" if side == OrderSide.SELL else "BUY_TO_COVER"


def _new_stop(trade: Trade, quantity: Decimal, replacing: Order | None = None) -> Order:
    side, instruction = _exit_instruction(trade)
    order = Order(user_id=trade.user_id, broker_connection_id=trade.broker_connection_id,
                  client_order_id=orders.new_client_order_id(), symbol=trade.symbol, asset_type=trade.asset_type,
                  side=side, instruction=instruction, order_type=OrderType.STOP, quantity=quantity,
                  stop_price=trade.stop_loss_price, time_in_force=TimeInForce.GTC, status=S.PENDING,
                  purpose=OrderPurpose.STOP_LOSS, trade_id=trade.id,
                  replaces_order_id=replacing.id if replacing is not None else None)
    db.session.add(order)
    db.session.flush()
    detail = f"broker-side stop at {orders.decimal_text(trade.stop_loss_price)}"
    db.session.add(OrderEvent(order_id=order.id, from_status=None, to_status=S.PENDING,
                              detail=detail + (f", replacing order {replacing.id}" if replacing else "")))
    countdown = None
    if replacing is not None and replacing.status == S.PENDING:
        orders.transition(replacing, S.REPLACED, detail=f"replaced by order {order.id} before it was sent")
        order.replaces_order_id = None
    elif replacing is not None and replacing.status == S.SUBMITTING:
        countdown = 5  # let the old order's send finish, so the broker replaces it instead of adding a second
    db.session.flush()
    jobs.enqueue_after_commit(jobs.ORDERS_EXECUTE, order.id, countdown=countdown)
    return order


def _rewrite_pending(order: Order, quantity: Decimal, stop_price: Decimal) -> bool:
    """Change a stop not sent yet in place (guarded: it must still be pending)."""
    values = {"quantity": quantity, "stop_price": stop_price, "updated_at": utcnow()}
    changed = db.session.execute(update(Order).where(Order.id == order.id, Order.status == S.PENDING)
                                 .values(**values).execution_options(synchronize_session=False)).rowcount
    if changed != 1:
        db.session.refresh(order)  # it was claimed for sending meanwhile: replace it instead
        return False
    for name, value in values.items():
        set_committed_value(order, name, value)
    return True


def withdraw_exit(order: Order) -> None:
    """Cancel an exit (a stop) that is no longer wanted through the orders path (the worker tells the broker)."""
    if order.status == S.PENDING:
        orders.transition(order, S.CANCELLED, detail="withdrawn before it was sent")
    elif order.status in (S.SUBMITTED, S.PARTIALLY_FILLED):
        orders.transition(order, S.PENDING_CANCEL, detail="withdrawn: no longer needed")
        jobs.enqueue_after_commit(jobs.ORDERS_CANCEL, order.id)


def working_exits(trade_id: int) -> list[Order]:
    """The trade's exit orders still working, oldest first: its broker-side stops and any exit the user placed."""
    return list(db.session.scalars(select(Order).where(
        Order.trade_id == trade_id, Order.purpose != OrderPurpose.ENTRY, Order.status.in_(WORKING))
        .order_by(Order.id).execution_options(populate_existing=True)))


def cancel_working_exits(trade: Trade) -> bool:
    """Cancel every working exit of a claimed (`closing`) trade at the broker, now (its broker-side stops and
    any exit left resting, such as a limit sell), recording the fills they already had, so the closing market
    exit covers exactly what is still held. Returns True when those fills closed the trade (no other exit is
    needed). Raises Conflict while one is still being sent (before anything is cancelled; retry later),
    BrokerUnavailable when the broker is unreachable."""
    working = working_exits(trade.id)
    for order in working:
        _refuse_in_flight(order)
    for order in working:
        _cancel_and_credit(trade, order)
    return trade.status == TradeStatus.CLOSED


def _cancel_and_credit(trade: Trade, order: Order) -> None:
    """Cancel one exit; when its own fills are what closed the trade, the close is credited to it."""
    was_held = trade.status != TradeStatus.CLOSED
    _cancel_now(order)
    if was_held and trade.status == TradeStatus.CLOSED:
        _set_trade(trade, close_reason=trades.CLOSE_REASON_FOR_PURPOSE.get(order.purpose, CloseReason.MANUAL))


def _is_broker_stop(order: Order) -> bool:
    return order.purpose == OrderPurpose.STOP_LOSS and order.order_type == OrderType.STOP


def _refuse_in_flight(order: Order) -> None:
    """Conflict for an exit claimed for sending but not at the broker yet: there is nothing to cancel there yet,
    and selling now could sell twice."""
    at_broker = order.status != S.SUBMITTING and bool(order.broker_order_id)
    if order.status == S.PENDING or at_broker:
        return
    if _is_broker_stop(order):
        raise Conflict("The protective stop is being sent to the broker; try again in a moment.",
                       code="stoploss.stop_in_flight", details={"order_id": order.id})
    raise Conflict(f"Exit order {order.id} of this trade is being sent to the broker; try again in a moment.",
                   code="trade.exit_in_flight", details={"order_id": order.id})


def _cancel_now(order: Order) -> None:
    """Cancel one exit order at once, recording the fills the broker reports for it."""
    if order.status == S.PENDING:
        orders.transition(order, S.CANCELLED, detail="cancelled before it was sent: the trade is closing")
        return
    _refuse_in_flight(order)
    broker = orders.broker_for(order)
    try:
        answer = broker.cancel_order(order.broker_order_id)
    except (OrderNotCancelable, OrderNotFound):
        answer = broker.get_order(order.broker_order_id)
    orders.record_broker_fills(order, answer)
    _finish_cancel(order, answer.status)


def _finish_cancel(order: Order, broker_status: str) -> None:
    """Mark the exit cancelled without handing the closing trade back (`trades.entry_finished` would: that is
    for an exit that failed, not for one the close withdrew)."""
    if order.status in orders.TERMINAL:
        return
    if broker_status in (S.CANCELLED, S.EXPIRED, S.REPLACED, S.REJECTED):
        orders.transition(order, S.CANCELLED, detail="cancelled at the broker: the trade is closing")
        return
    raise Conflict(f"The broker is still cancelling order {order.id} of this trade; try again in a moment.",
                   code="stoploss.stop_in_flight" if _is_broker_stop(order) else "trade.exit_in_flight",
                   details={"order_id": order.id})


# --- changing a trade's protection (page and PUT /api/v1/trades/<id>/stop-loss) ----------------------

def _protection_value(unsafe: dict, name: str, maximum: Decimal) -> Decimal | None:
    unsafe_value = unsafe.get(name)
    if unsafe_value is None or (isinstance(unsafe_value, str) and not unsafe_value.strip()):
        return None
    if isinstance(unsafe_value, bool) or not isinstance(unsafe_value, (str, int, float)):
        raise ValidationFailed(f"{name} must be a number.", details={"field": name})
    try:
        value = Decimal(str(unsafe_value).strip())
    except InvalidOperation:
        raise ValidationFailed(f"{name} must be a number.", details={"field": name}) from None
    if not value.is_finite() or value <= 0 or value > maximum:
        raise ValidationFailed(f"{name} must be greater than 0 and at most {maximum}.", details={"field": name})
    if value != value.quantize(orders.PRICE_PLACES, rounding=ROUND_HALF_EVEN):
        raise ValidationFailed(f"{name} has too many decimal places (10 at most).", details={"field": name})
    return value


def protection_form_data(trade: Trade) -> dict:
    """The trade's protection as form text (blank when unset)."""
    return {name: orders.decimal_text(getattr(trade, name)) or "" for name in PROTECTION_FIELDS}


def parse_protection(unsafe) -> dict:
    """The fields present in a protection change (None clears one); raises ValidationFailed."""
    if not isinstance(unsafe, dict):
        raise ValidationFailed("Send a JSON object.", details={"field": "body"})
    unknown = sorted(str(key)[:40] for key in unsafe if key not in PROTECTION_FIELDS)
    if unknown:
        raise ValidationFailed(f"Unknown field {unknown[0]}.", details={"field": unknown[0]})
    if not unsafe:
        raise ValidationFailed("Send at least one of " + ", ".join(PROTECTION_FIELDS) + ".",
                               details={"field": "body"})
    maximums = {"trailing_stop_percent": Decimal(99)}
    return {name: _protection_value(unsafe, name, maximums.get(name, orders.MAX_PRICE))
            for name in PROTECTION_FIELDS if name in unsafe}


def update_protection(user, trade_id, unsafe) -> Trade:
    """Set or clear an open trade's stop-loss, trailing percent and take-profit, checked against the current
    price, and move its broker-side stop (flushes). Raises NotFound, Conflict (not open), ValidationFailed."""
    changes = parse_protection(unsafe)
    trade = trades.get_trade(user, trade_id)
    if trade.status != TradeStatus.OPEN:
        raise Conflict(f"The trade is {trade.status}; only an open trade's protection can change.",
                       code="trade.not_open", details={"status": str(trade.status)})
    # The user has looked at the trade: a refused automated exit no longer waits for its retry time.
    values = {**_protection_values(trade, changes, _current_quote(trade)), "exit_refusals": 0, "exit_retry_at": None}
    guarded = db.session.execute(update(Trade).where(Trade.id == trade.id, Trade.status == TradeStatus.OPEN)
                                 .values(**values, updated_at=utcnow()).execution_options(synchronize_session=False))
    if guarded.rowcount != 1:
        raise Conflict("The trade changed meanwhile; reload and try again.", code="trade.not_open")
    for name, value in values.items():
        set_committed_value(trade, name, value)
    sync_broker_stop(trade)
    audit.record("trade.protection_changed", user=user,
                 details={"trade_id": trade.id, **{name: orders.decimal_text(values.get(name))
                                                   for name in PROTECTION_FIELDS}})
    return trade


def _current_quote(trade: Trade):
    quote = market_data.get_quotes([trade.symbol]).get(trade.symbol)
    if quote is None or market_data.is_stale(quote):
        raise ValidationFailed(f"There is no current price for {trade.symbol} to check the new prices against.",
                               details={"field": "symbol"})
    return quote


def _protection_values(trade: Trade, changes: dict, quote) -> dict:
    long = trade.side == TradeSide.LONG
    current = {name: getattr(trade, name) for name in PROTECTION_FIELDS}
    current.update(changes)
    values = {**current, "water_mark_price": None}
    if current["trailing_stop_percent"] is not None:
        # A trail already running keeps its water mark; a new one starts from the current price.
        kept = trade.water_mark_price if trade.trailing_stop_percent is not None else None
        values["water_mark_price"], values["stop_loss_price"] = trailed(
            _stop_floor(trade, changes), current["trailing_stop_percent"], kept, quote.last, long)
    _check_against_price(values["stop_loss_price"], values["take_profit_price"], quote, long)
    return values


def _stop_floor(trade: Trade, changes: dict) -> Decimal | None:
    """The fixed stop a trail may not go below: the one sent, else the current one (unless the trail changed)."""
    if "stop_loss_price" in changes:
        return changes["stop_loss_price"]
    if "trailing_stop_percent" in changes and trade.trailing_stop_percent is not None:
        return None  # a new percent re-trails from the water mark, so a wider trail can loosen the stop
    return trade.stop_loss_price


def _check_against_price(stop, target, quote, long: bool) -> None:
    price = quote.bid if long else quote.ask
    if stop is not None and (stop >= price if long else stop <= price):
        raise ValidationFailed(f"The stop ({stop}) must be {'below' if long else 'above'} the current price {price}.",
                               details={"field": "stop_loss_price", "current_price": format(price, "f")})
    if target is not None and (target <= price if long else target >= price):
        raise ValidationFailed(f"take_profit_price must be {'above' if long else 'below'} the current price "
                               f"{price}.", details={"field": "take_profit_price", "current_price": format(price, "f")})
