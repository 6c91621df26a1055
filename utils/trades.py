"""Trades (issue 4 item 6): one position from entry to exit, built from the fills of its orders.

An entry order creates a `Trade(pending)` at placement; its first fill opens it (`pending → open`),
later fills grow it; exit fills reduce it and close it with realized P&L after fees (options × 100).
`pending → cancelled` when the entry never fills. Status changes and quantity changes are conditional
UPDATEs guarded by the previous value, so two writers can never both apply.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from sqlalchemy import func, or_, select
from sqlalchemy.orm.attributes import set_committed_value

from models import (AssetType, Broker, BrokerConnection, CloseReason, Order, OrderPurpose, OrderStatus, Trade,
                    TradeSide, TradeStatus, User)
from utils import audit, market_data, orders, risk
from utils.dbtypes import iso_utc, utcnow
from utils.database import get_object, guarded_update, insert_row, owned_row
from utils.errors import Conflict, DomainError, InvalidTransition, NotFound, ValidationFailed
from utils.extensions import db

log = logging.getLogger("tradewarden.trades")

T = TradeStatus
TRADE_TRANSITIONS = {
    T.PENDING: {T.OPEN, T.CANCELLED},
    T.OPEN: {T.CLOSING, T.CLOSED},
    # An exit that fails (rejected, cancelled) hands the position back so the sweep or the user can retry.
    T.CLOSING: {T.CLOSED, T.OPEN},
}
HELD_STATUSES = (T.OPEN, T.CLOSING)
WORKING_ORDER_STATUSES = (OrderStatus.PENDING, OrderStatus.SUBMITTING, OrderStatus.SUBMITTED,
                          OrderStatus.PARTIALLY_FILLED, OrderStatus.PENDING_CANCEL)
FINISHED_ORDER_STATUSES = (OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.FAILED,
                           OrderStatus.REPLACED, OrderStatus.EXPIRED)
PLACES = Decimal("0.0000000001")
CLOSE_REASON_FOR_PURPOSE = {OrderPurpose.STOP_LOSS: CloseReason.STOP_LOSS,
                            OrderPurpose.TAKE_PROFIT: CloseReason.TAKE_PROFIT}
# Closes Tradewarden starts on its own. When the broker refuses one (the position is gone, the symbol is
# halted), the next waits 2, 5, then every 15 minutes, instead of going again at every sweep. The wait stays
# short because a refusal may pass (a halt lifts) and the position must not go unprotected for long.
AUTOMATED_CLOSES = (CloseReason.STOP_LOSS, CloseReason.TAKE_PROFIT, CloseReason.EXPIRED)
EXIT_RETRY_DELAYS = tuple(timedelta(minutes=minutes) for minutes in (2, 5, 15))


def _multiplier(trade: Trade) -> Decimal:
    return Decimal("100") if str(trade.asset_type) == "option" else Decimal("1")


def _sign(trade: Trade) -> Decimal:
    return Decimal("1") if trade.side == TradeSide.LONG else Decimal("-1")


def transition_trade(trade: Trade, new_status: TradeStatus, **values) -> None:
    """Move a trade with one conditional UPDATE; raises InvalidTransition (nothing written) otherwise."""
    old_status, new_status = TradeStatus(trade.status), TradeStatus(new_status)
    if new_status not in TRADE_TRANSITIONS.get(old_status, set()):
        raise InvalidTransition(f"A trade cannot go from {old_status} to {new_status}.",
                                details={"from": old_status.value, "to": new_status.value})
    _guarded_update(trade, {"status": old_status}, status=new_status, **values)


def _guarded_update(trade: Trade, expected: dict, **values) -> None:
    values["updated_at"] = utcnow()
    if guarded_update(Trade, trade.id, expected, values) != 1:
        raise InvalidTransition("The trade changed meanwhile.", details={"trade_id": trade.id})
    for name, value in values.items():
        set_committed_value(trade, name, value)


# --- building trades from orders ----------------------------------------------------------------

def create_pending(order: Order, direction: str) -> int:
    """Insert the trade an entry order will open, with its protective prices; returns its id."""
    return insert_row(Trade, {"user_id": order.user_id, "broker_connection_id": order.broker_connection_id,
                              "symbol": order.symbol, "asset_type": order.asset_type, "side": TradeSide(direction),
                              "status": T.PENDING, "stop_loss_price": order.stop_loss_price,
                              "take_profit_price": order.take_profit_price,
                              "trailing_stop_percent": order.trailing_stop_percent})


def exit_trade_for(user, request) -> Trade:
    """The open trade an exit order closes (by trade_id, else the only open one in the symbol and direction);
    raises NotFound / ValidationFailed, and refuses selling more than is held."""
    if request.trade_id is not None:
        trade = db.session.scalar(select(Trade).where(Trade.id == request.trade_id, Trade.user_id == user.id))
        if trade is None:
            raise NotFound("No such trade.", details={"field": "trade_id"})
        if trade.symbol != request.symbol or trade.side != request.direction:
            raise ValidationFailed("This order does not close that trade.", details={"field": "trade_id"})
    else:
        trade = _only_open_trade(user, request)
    if trade.status != T.OPEN:
        raise Conflict(f"The trade is {trade.status}; it cannot take an exit order.", code="trade.not_open")
    check_exit_quantity(trade, request.quantity)
    return trade


def _only_open_trade(user, request) -> Trade:
    candidates = list(db.session.scalars(select(Trade).where(
        Trade.user_id == user.id, Trade.symbol == request.symbol, Trade.side == request.direction,
        Trade.status == T.OPEN).limit(2)))
    if not candidates:
        raise ValidationFailed(f"You hold no {request.direction} position in {request.symbol} to close.",
                               details={"field": "quantity"})
    if len(candidates) > 1:
        raise ValidationFailed("You have several open trades in this symbol; say which with trade_id.",
                               details={"field": "trade_id"})
    return candidates[0]


def check_exit_quantity(trade: Trade, quantity: Decimal, exclude_order_id: int | None = None) -> None:
    """Refuse an exit larger than what is held minus exits already working (ValidationFailed)."""
    available = closable_quantity(trade, exclude_order_id)
    if quantity > available:
        raise ValidationFailed(f"You can close at most {available} of this position.",
                               details={"field": "quantity", "available": format(available, "f")})


def closable_quantity(trade: Trade, exclude_order_id: int | None = None) -> Decimal:
    """Held quantity not yet covered by working exit orders."""
    query = select(Order).where(Order.trade_id == trade.id, Order.purpose != OrderPurpose.ENTRY,
                                Order.status.in_(WORKING_ORDER_STATUSES))
    if exclude_order_id is not None:
        query = query.where(Order.id != exclude_order_id)
    # Stop-loss guard (issue 5, stop-loss engineer): a broker-side stop only protects what is held (it is
    # resized after exits and cancelled before a close), so it does not use up closable quantity.
    query = query.where(~((Order.purpose == OrderPurpose.STOP_LOSS) & (Order.order_type == "stop")))
    working = sum((order.quantity - order.filled_quantity for order in db.session.scalars(query)), Decimal("0"))
    return trade.quantity - trade.exit_quantity - working


def apply_fill(order: Order, fill) -> None:
    """Grow (entry) or reduce (exit) the order's trade by one fill (flushes)."""
    trade = get_object(Trade, order.trade_id) if order.trade_id else None
    if trade is None:
        return
    if order.purpose == OrderPurpose.ENTRY:
        _grow(trade, fill)
    else:
        _reduce(trade, order.purpose, fill)


def _weighted(old_price: Decimal | None, old_quantity: Decimal, price: Decimal, quantity: Decimal) -> Decimal:
    total = old_quantity + quantity
    notional = (old_price or Decimal("0")) * old_quantity + price * quantity
    return (notional / total).quantize(PLACES, rounding=ROUND_HALF_EVEN)


def _grow(trade: Trade, fill) -> None:
    values = {"quantity": trade.quantity + fill.quantity, "fees": trade.fees + fill.fee,
              "entry_price": _weighted(trade.entry_price, trade.quantity, fill.price, fill.quantity)}
    opens = trade.status == T.PENDING
    if opens:
        values.update(status=T.OPEN, opened_at=fill.executed_at or utcnow())
    _guarded_update(trade, {"quantity": trade.quantity, "status": trade.status}, **values)
    # Stop-loss guard (issue 5, stop-loss engineer): place or resize the broker-side stop for the grown trade.
    from utils import stoploss
    stoploss.on_entry_filled(trade, opened=opens)


def _reduce(trade: Trade, purpose: OrderPurpose, fill) -> None:
    exit_quantity = trade.exit_quantity + fill.quantity
    if exit_quantity > trade.quantity:
        log.warning("trade %s: exit fill %s would exceed the position; recorded on the order only", trade.id,
                    fill.quantity)
        return
    exit_price = _weighted(trade.exit_price, trade.exit_quantity, fill.price, fill.quantity)
    fees = trade.fees + fill.fee
    pnl = (exit_price - trade.entry_price) * exit_quantity * _multiplier(trade) * _sign(trade) - fees
    values = {"exit_quantity": exit_quantity, "exit_price": exit_price, "fees": fees, "realized_pnl": pnl}
    if trade.exit_refusals:  # the broker took an exit: whatever refused the earlier ones has passed
        values.update(exit_refusals=0, exit_retry_at=None)
    if exit_quantity == trade.quantity and trade.status in HELD_STATUSES:
        values.update(status=T.CLOSED, closed_at=fill.executed_at or utcnow(),
                      close_reason=trade.close_reason or CLOSE_REASON_FOR_PURPOSE.get(purpose, CloseReason.MANUAL))
    _guarded_update(trade, {"exit_quantity": trade.exit_quantity, "status": trade.status}, **values)
    # Stop-loss guard (issue 5, stop-loss engineer): shrink the broker-side stop to what is still held.
    from utils import stoploss
    stoploss.on_exit_filled(trade)


def exit_sent(order: Order) -> None:
    """An exit that reached the broker after a fill already closed its trade (it was being sent meanwhile)
    is withdrawn at once: there is nothing left for it to sell (flushes)."""
    if order.purpose == OrderPurpose.ENTRY or not order.trade_id:
        return
    trade = db.session.get(Trade, order.trade_id)
    if trade is not None and trade.status == T.CLOSED:
        from utils import stoploss
        stoploss.withdraw_exit(order)


def entry_finished(order: Order) -> None:
    """Tidy the trade when an order ends: an entry that never filled cancels its trade; a failed exit
    hands a `closing` trade back to `open` (flushes)."""
    if order.status not in FINISHED_ORDER_STATUSES or not order.trade_id:
        return
    if order.purpose == OrderPurpose.ENTRY and order.filled_quantity > 0:  # its fills gave the trade a quantity
        return
    trade = db.session.get(Trade, order.trade_id)
    if trade is None:
        return
    if order.purpose == OrderPurpose.ENTRY:
        if trade.status == T.PENDING and trade.quantity == 0 and not _has_working_entry(trade, order.id):
            transition_trade(trade, T.CANCELLED)
    elif trade.status == T.CLOSING and order.status != OrderStatus.FILLED and trade.exit_quantity < trade.quantity:
        transition_trade(trade, T.OPEN, close_reason=None, **_refusal_values(trade, order))
        # Stop-loss guard (issue 5, stop-loss engineer): the close cancelled the broker-side stop; put it back.
        from utils import stoploss
        stoploss.on_exit_filled(trade)


def exit_retry_delay(refusals: int) -> timedelta:
    """How long the next automated exit waits after `refusals` (≥ 1) refusals in a row."""
    return EXIT_RETRY_DELAYS[min(refusals, len(EXIT_RETRY_DELAYS)) - 1]


def exit_due(now: datetime | None = None):
    """The condition on trades whose automated exit may go now: no refused one is waiting."""
    return or_(Trade.exit_retry_at.is_(None), Trade.exit_retry_at <= (now or utcnow()))


def _refusal_values(trade: Trade, order: Order) -> dict:
    """What an exit that ended unfilled leaves on its trade. An automated exit the broker refused counts
    one more refusal and sets when the next may go (an audit event says why); a cancelled or failed exit,
    or one the user asked for, changes nothing."""
    if order.status != OrderStatus.REJECTED or trade.close_reason not in AUTOMATED_CLOSES:
        return {}
    refusals = trade.exit_refusals + 1
    retry_at = utcnow() + exit_retry_delay(refusals)
    audit.record("trade.exit_refused", user=trade.user_id, actor=None, details={
        "trade_id": trade.id, "symbol": trade.symbol, "order_id": order.id, "close_reason": str(trade.close_reason),
        "reason": order.reject_reason, "refusals": refusals, "retry_at": iso_utc(retry_at)})
    log.warning("trade %s: the broker refused its %s exit (%s in a row): %s; next try at %s", trade.id,
                trade.close_reason, refusals, order.reject_reason, iso_utc(retry_at))
    return {"exit_refusals": refusals, "exit_retry_at": retry_at}


def _has_working_entry(trade: Trade, finished_order_id: int) -> bool:
    return db.session.scalar(select(Order.id).where(
        Order.trade_id == trade.id, Order.purpose == OrderPurpose.ENTRY, Order.id != finished_order_id,
        Order.status.in_(WORKING_ORDER_STATUSES)).limit(1)) is not None


# --- user actions -------------------------------------------------------------------------------

def get_trade(user, trade_id) -> Trade:
    """One of the user's trades; NotFound for unknown ids and other users' trades."""
    return owned_row(Trade, user, trade_id, "No such trade.")


def list_trades(user, *, status=None, cursor=None, limit=50) -> tuple[list[Trade], str | None]:
    """The user's trades, newest first; ValidationFailed for an unknown status or bad cursor/limit."""
    query = select(Trade).where(Trade.user_id == user.id)
    if status not in (None, ""):
        if status not in T._value2member_map_:
            raise ValidationFailed(f"status must be one of {', '.join(T._value2member_map_)}.",
                                   details={"field": "status"})
        query = query.where(Trade.status == status)
    return orders.paginate(query, Trade.id, cursor, limit)


def close_trade(user, trade_id, reason: CloseReason = CloseReason.MANUAL) -> Trade:
    """Claim `open → closing` (once), cancel the trade's working exits at the broker, and enqueue one market
    exit for what is still held (flushes). Raises NotFound, Conflict when the trade is not open or one of its
    exits is still being sent (the caller rolls back the claim), BrokerUnavailable, and ValidationFailed
    for a manual close or an expiry settlement its broker cannot fill now (no current price at the paper
    broker): the trade stays open and guarded rather than have its stop withdrawn for an exit that would be
    rejected."""
    trade = get_trade(user, trade_id)
    if reason in (CloseReason.MANUAL, CloseReason.EXPIRED) and trade.status == T.OPEN:
        orders.check_tradable_now(db.session.get(BrokerConnection, trade.broker_connection_id), trade.symbol)
    if _claim_and_withdraw_exits(trade, reason):
        return trade
    remaining = closable_quantity(trade)
    if remaining > 0:
        purpose = {CloseReason.STOP_LOSS: OrderPurpose.STOP_LOSS,
                   CloseReason.TAKE_PROFIT: OrderPurpose.TAKE_PROFIT}.get(reason, OrderPurpose.EXIT)
        orders.create_exit_order(trade, remaining, purpose)
    return trade


def _claim_and_withdraw_exits(trade: Trade, reason: CloseReason) -> bool:
    """Claim `open → closing` once, then withdraw the broker-side stop and any resting exit (a limit sell),
    recording what they already filled, so what closes the rest covers exactly what is still held, never
    nothing and never twice. True when those fills closed the trade. Raises Conflict (not open, an exit
    still being sent) and BrokerUnavailable."""
    try:
        transition_trade(trade, T.CLOSING, close_reason=reason)
    except InvalidTransition:
        raise Conflict(f"The trade is {trade.status}; only an open trade can be closed.", code="trade.not_open",
                       details={"status": str(trade.status)}) from None
    from utils import stoploss
    return stoploss.cancel_working_exits(trade)


@dataclass(frozen=True)
class _ExitOutside:
    """The exit the user made at the broker directly, as a fill of no order of ours."""

    quantity: Decimal
    price: Decimal
    fee: Decimal = Decimal("0")
    executed_at: datetime | None = None


def record_closed_at_broker(user, trade_id, unsafe: dict) -> Trade:
    """Record that the user closed an open trade at the broker directly (not through Tradewarden), at
    `exit_price`. Its working exits are withdrawn first, the broker-side stop included, so nothing is left at
    the broker to sell again; then the trade closes with reason `broker` and the realized P&L of that price.
    No order is sent. Raises NotFound, ValidationFailed (exit_price), Conflict (not open, or an exit of ours
    still being sent) and BrokerUnavailable (flushes; the caller commits)."""
    exit_price = orders.parse_price(unsafe, "exit_price")
    trade = get_trade(user, trade_id)
    if _claim_and_withdraw_exits(trade, CloseReason.BROKER):  # an exit of ours filled it meanwhile
        return trade
    quantity = trade.quantity - trade.exit_quantity
    _reduce(trade, OrderPurpose.EXIT, _ExitOutside(quantity, exit_price, executed_at=utcnow()))
    audit.record("trade.closed_at_broker", user=user, details={
        "trade_id": trade.id, "symbol": trade.symbol, "quantity": orders.decimal_text(quantity),
        "exit_price": orders.decimal_text(exit_price)})
    return trade


# --- options held past expiration (paper broker) ---------------------------------------------------

def expired_option_trades() -> list[tuple[int, int]]:
    """(trade id, user id) of every open paper trade in an option that has expired (and no refused exit waits)."""
    rows = db.session.execute(
        select(Trade.id, Trade.user_id, Trade.symbol).join(BrokerConnection, BrokerConnection.id ==
                                                            Trade.broker_connection_id)
        .where(Trade.status == T.OPEN, Trade.asset_type == AssetType.OPTION, BrokerConnection.broker == Broker.PAPER,
               exit_due())
        .order_by(Trade.id)).all()
    return [(trade_id, user_id) for trade_id, user_id, symbol in rows if market_data.expired_on(symbol)]


def settle_expired_options(commit) -> int:
    """Beat: close each expired paper option trade with a market exit, which the paper broker fills at the
    contract's settlement value (its intrinsic value, zero out of the money). Returns how many were closed;
    one that cannot close now (no current underlying price, an exit still being sent) waits for the next run."""
    settled = 0
    for trade_id, user_id in expired_option_trades():
        try:
            trade = close_trade(db.session.get(User, user_id), trade_id, reason=CloseReason.EXPIRED)
            audit.record("trade.expired", user=user_id, actor=None,
                         details={"trade_id": trade_id, "symbol": trade.symbol})
            commit()
            settled += 1
        except DomainError as error:
            db.session.rollback()
            log.warning("trade %s: expired option not settled now: %s", trade_id, error.message)
        except Exception:  # noqa: BLE001 — one trade's fault must not keep the others unsettled
            db.session.rollback()
            log.exception("trade %s: expired option not settled now", trade_id)
    return settled


# --- views --------------------------------------------------------------------------------------

def trade_to_dict(trade: Trade) -> dict:
    """A trade in the DESIGN §7 shape (decimals as strings, ISO 8601 UTC times)."""
    decimal_text = orders.decimal_text
    return {
        "id": trade.id, "symbol": trade.symbol, "asset_type": str(trade.asset_type), "side": str(trade.side),
        "quantity": decimal_text(trade.quantity), "exit_quantity": decimal_text(trade.exit_quantity),
        "status": str(trade.status), "entry_price": decimal_text(trade.entry_price),
        "exit_price": decimal_text(trade.exit_price), "stop_loss_price": decimal_text(trade.stop_loss_price),
        "trailing_stop_percent": decimal_text(trade.trailing_stop_percent),
        "take_profit_price": decimal_text(trade.take_profit_price), "fees": decimal_text(trade.fees),
        "close_reason": trade.close_reason and str(trade.close_reason),
        "realized_pnl": decimal_text(trade.realized_pnl), "opened_at": iso_utc(trade.opened_at),
        "closed_at": iso_utc(trade.closed_at), "exit_refusals": trade.exit_refusals,
        "exit_retry_at": iso_utc(trade.exit_retry_at),
    }


def positions(user) -> list[dict]:
    """Open trades with their current quote and unrealized P&L (None when there is no quote)."""
    from utils.brokers import get_broker
    held = list(db.session.scalars(select(Trade).where(Trade.user_id == user.id, Trade.status.in_(HELD_STATUSES))
                                   .order_by(Trade.id)))
    quotes = {}
    for connection_id in {trade.broker_connection_id for trade in held}:
        broker = get_broker(db.session.get(BrokerConnection, connection_id))
        symbols = sorted({trade.symbol for trade in held if trade.broker_connection_id == connection_id})
        quotes.update({(connection_id, symbol): quote for symbol, quote in broker.get_quotes(symbols).items()})
    return [_position(trade, quotes.get((trade.broker_connection_id, trade.symbol))) for trade in held]


def _position(trade: Trade, quote) -> dict:
    decimal_text = orders.decimal_text
    remaining = trade.quantity - trade.exit_quantity
    price = quote.last if quote else None
    unrealized = None
    if price is not None and trade.entry_price is not None:
        unrealized = (price - trade.entry_price) * remaining * _multiplier(trade) * _sign(trade)
    return {**trade_to_dict(trade), "open_quantity": decimal_text(remaining), "market_price": decimal_text(price),
            "quote_as_of": iso_utc(quote.as_of) if quote else None,
            "market_value": decimal_text(price * remaining * _multiplier(trade)) if price is not None else None,
            "unrealized_pnl": decimal_text(unrealized)}


def account_summary(user) -> dict:
    """Cash, buying power and equity from the user's default broker account, plus today's realized P&L."""
    from utils.brokers import get_broker
    decimal_text = orders.decimal_text
    account = get_broker(orders.connection_for(user, None)).get_account()
    open_count = db.session.scalar(select(func.count(Trade.id)).where(Trade.user_id == user.id,
                                                                      Trade.status.in_(HELD_STATUSES)))
    return {"cash": decimal_text(account.cash), "buying_power": decimal_text(account.buying_power),
            "equity": decimal_text(account.equity), "currency": account.currency,
            "realized_pnl_today": decimal_text(risk.realized_pnl_today(user.id)),
            "open_positions": open_count or 0}
