"""Orders (issue 4 item 5): place, execute through the broker, record fills, cancel, replace, sync, recover.

Flow: `place_order` validates, takes the per-user lock, runs the risk checks, inserts `Order(pending)`
and commits — **inside the lock**, so the lock spans check + insert + commit (the one service that
commits itself; see its docstring). The worker's `orders.execute` claims `pending → submitting` with
one conditional UPDATE, calls the broker with the `client_order_id`, then records `submitted` and any
fills. Every status change is one conditional UPDATE plus an `OrderEvent` (DESIGN §5); a change from
an unexpected state raises `InvalidTransition` and writes nothing. Fill totals are written with an
optimistic check on the previous total, so two recorders can never both add the same quantity.
"""
from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

import redis as redis_lib
from flask import current_app
from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value

from models import (AssetType, Broker, BrokerConnection, ConnectionStatus, Fill, Order, OrderEvent, OrderPurpose,
                    OrderSide, OrderStatus, OrderType, TimeInForce)
from utils import jobs, locks, market_data, risk, trades
from utils.brokers.base import BrokerFill, BrokerOrder, OrderRequest
from utils.dbtypes import iso_utc, utcnow
from utils.database import (LARGEST_ROW_ID, columns_of, guarded_update, insert_object, insert_row, objects_from_row,
                            owned_row, read_rows)
from utils.errors import (BrokerAuthExpired, BrokerRejected, BrokerUnavailable, Conflict, InvalidSymbol,
                          InvalidTransition, NotFound, OrderNotCancelable, OrderNotFound, ValidationFailed)
from utils.extensions import db

log = logging.getLogger("tradewarden.orders")

S = OrderStatus
TRANSITIONS: dict[OrderStatus, set[OrderStatus]] = {
    S.PENDING: {S.SUBMITTING, S.CANCELLED, S.REPLACED, S.REJECTED, S.FAILED},
    S.SUBMITTING: {S.SUBMITTED, S.REJECTED, S.FAILED},
    S.SUBMITTED: {S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.CANCELLED, S.REPLACED, S.EXPIRED, S.REJECTED},
    S.PARTIALLY_FILLED: {S.FILLED, S.PENDING_CANCEL, S.CANCELLED, S.REPLACED, S.EXPIRED},
    S.PENDING_CANCEL: {S.CANCELLED, S.FILLED, S.EXPIRED, S.REPLACED},
}
OPEN_AT_BROKER = (S.SUBMITTED, S.PARTIALLY_FILLED, S.PENDING_CANCEL)
TERMINAL = (S.FILLED, S.CANCELLED, S.REJECTED, S.FAILED, S.REPLACED, S.EXPIRED)

ENTRY_INSTRUCTIONS = {"BUY": "long", "BUY_TO_OPEN": "long", "SELL_SHORT": "short", "SELL_TO_OPEN": "short"}
EXIT_INSTRUCTIONS = {"SELL": "long", "SELL_TO_CLOSE": "long", "BUY_TO_COVER": "short", "BUY_TO_CLOSE": "short"}
INSTRUCTION_SIDE = {"BUY": "buy", "BUY_TO_OPEN": "buy", "BUY_TO_COVER": "buy", "BUY_TO_CLOSE": "buy",
                    "SELL": "sell", "SELL_TO_OPEN": "sell", "SELL_SHORT": "sell", "SELL_TO_CLOSE": "sell"}
CLIENT_ORDER_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_QUANTITY = Decimal("1000000000")
MAX_PRICE = Decimal("100000000")
PRICE_PLACES = Decimal("0.0000000001")
OPTION_MULTIPLIER = Decimal("100")
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 200


# --- the validated request ----------------------------------------------------------------------

@dataclass(frozen=True)
class OrderInput:
    """A validated order request (DESIGN §7)."""

    symbol: str
    asset_type: AssetType
    side: OrderSide
    instruction: str
    quantity: Decimal
    order_type: OrderType
    limit_price: Decimal | None
    stop_price: Decimal | None
    time_in_force: TimeInForce
    client_order_id: str | None
    stop_loss_price: Decimal | None
    take_profit_price: Decimal | None
    trailing_stop_percent: Decimal | None
    broker_connection_id: int | None
    trade_id: int | None

    @property
    def is_entry(self) -> bool:
        return self.instruction in ENTRY_INSTRUCTIONS

    @property
    def direction(self) -> str:
        """long or short: the side of the position this order opens or closes."""
        return ENTRY_INSTRUCTIONS.get(self.instruction) or EXIT_INSTRUCTIONS[self.instruction]


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, details={"field": field})


def _decimal(unsafe: dict, field: str, *, required: bool = False, maximum: Decimal = MAX_PRICE) -> Decimal | None:
    unsafe_value = unsafe.get(field)
    if unsafe_value is None or (isinstance(unsafe_value, str) and not unsafe_value.strip()):
        if required:
            raise _invalid(field, f"{field} is required.")
        return None
    if isinstance(unsafe_value, bool) or not isinstance(unsafe_value, (str, int, float)):
        raise _invalid(field, f"{field} must be a number.")
    try:
        value = Decimal(str(unsafe_value).strip())
    except InvalidOperation:
        raise _invalid(field, f"{field} must be a number.") from None
    if not value.is_finite() or value <= 0 or value > maximum:
        raise _invalid(field, f"{field} must be greater than 0 and at most {maximum}.")
    if value != value.quantize(PRICE_PLACES, rounding=ROUND_HALF_EVEN):
        raise _invalid(field, f"{field} has too many decimal places (10 at most).")
    return value


def parse_price(unsafe: dict, field: str) -> Decimal:
    """A required price from a request body: greater than 0, at most MAX_PRICE, 10 places at most (422)."""
    return _decimal(unsafe, field, required=True)


def _choice(unsafe: dict, field: str, choices, default=None) -> str:
    unsafe_value = unsafe.get(field, default)
    if unsafe_value is None:
        raise _invalid(field, f"{field} is required.")
    if not isinstance(unsafe_value, str) or unsafe_value.strip().lower() not in choices:
        raise _invalid(field, f"{field} must be one of {', '.join(sorted(choices))}.")
    return unsafe_value.strip().lower()


def _optional_id(unsafe: dict, field: str) -> int | None:
    unsafe_value = unsafe.get(field)
    if unsafe_value is None or unsafe_value == "":
        return None
    if isinstance(unsafe_value, bool) or not isinstance(unsafe_value, (int, str)) \
            or not str(unsafe_value).strip().isdigit() or not 0 < int(unsafe_value) <= LARGEST_ROW_ID:
        raise _invalid(field, f"{field} must be a whole number from 1 to {LARGEST_ROW_ID}.")
    return int(unsafe_value)


def asset_type_for(symbol: str) -> AssetType:
    """Equity, option (OCC symbol) or crypto (BASE-QUOTE pair), from the symbol's shape."""
    return AssetType(market_data.asset_type_of(symbol))


def multiplier(asset_type) -> Decimal:
    """Contract multiplier: 100 for options, 1 otherwise."""
    return OPTION_MULTIPLIER if str(asset_type) == AssetType.OPTION else Decimal("1")


def _symbol(unsafe: dict) -> str:
    unsafe_symbol = unsafe.get("symbol")
    try:
        if not isinstance(unsafe_symbol, str) or len(unsafe_symbol) > 40:
            raise InvalidSymbol()
        return market_data.canonical_symbol(unsafe_symbol)
    except InvalidSymbol:
        raise _invalid("symbol", "symbol must be a ticker such as AAPL, BTC-USD or an OCC option symbol.") from None


def _instruction(unsafe: dict, side: str, asset_type: AssetType) -> str:
    unsafe_instruction = unsafe.get("instruction")
    if unsafe_instruction is None or unsafe_instruction == "":
        if asset_type == AssetType.OPTION:
            return "BUY_TO_OPEN" if side == "buy" else "SELL_TO_CLOSE"
        return side.upper()
    if not isinstance(unsafe_instruction, str) or unsafe_instruction.strip().upper() not in INSTRUCTION_SIDE:
        raise _invalid("instruction", f"instruction must be one of {', '.join(sorted(INSTRUCTION_SIDE))}.")
    instruction = unsafe_instruction.strip().upper()
    if INSTRUCTION_SIDE[instruction] != side:
        raise _invalid("instruction", f"instruction {instruction} does not match side {side}.")
    is_option_instruction = instruction.endswith(("_TO_OPEN", "_TO_CLOSE"))
    if is_option_instruction != (asset_type == AssetType.OPTION):
        raise _invalid("instruction", f"instruction {instruction} does not fit a {asset_type.value} symbol.")
    if asset_type == AssetType.CRYPTO and instruction in ("SELL_SHORT", "BUY_TO_COVER"):
        raise _invalid("instruction", "Crypto cannot be sold short.")
    return instruction


def _check_not_expired(symbol: str, instruction: str) -> None:
    """An expired option cannot be opened (closing one is left to the broker, as every exit is)."""
    expiry = market_data.expired_on(symbol)
    if expiry is not None and instruction in ENTRY_INSTRUCTIONS:
        raise _invalid("symbol", f"{symbol} expired on {expiry.isoformat()}; an expired option cannot be opened.")


def _quantity(unsafe: dict, asset_type: AssetType) -> Decimal:
    quantity = _decimal(unsafe, "quantity", required=True, maximum=MAX_QUANTITY)
    if asset_type != AssetType.CRYPTO and quantity != quantity.to_integral_value():
        raise _invalid("quantity", "quantity must be a whole number for stocks and options.")
    return quantity


def _prices(unsafe: dict, order_type: str) -> tuple[Decimal | None, Decimal | None]:
    needs_limit, needs_stop = order_type in ("limit", "stop_limit"), order_type in ("stop", "stop_limit")
    limit_price = _decimal(unsafe, "limit_price", required=needs_limit)
    stop_price = _decimal(unsafe, "stop_price", required=needs_stop)
    if limit_price is not None and not needs_limit:
        raise _invalid("limit_price", f"limit_price is not used by a {order_type} order.")
    if stop_price is not None and not needs_stop:
        raise _invalid("stop_price", f"stop_price is not used by a {order_type} order.")
    return limit_price, stop_price


def _client_order_id(unsafe: dict) -> str | None:
    unsafe_id = unsafe.get("client_order_id")
    if unsafe_id is None or unsafe_id == "":
        return None
    if not isinstance(unsafe_id, str) or not CLIENT_ORDER_ID.match(unsafe_id):
        raise _invalid("client_order_id", "client_order_id must be 1-64 letters, digits or _ . : -")
    return unsafe_id


def _trailing_percent(unsafe: dict) -> Decimal | None:
    return _decimal(unsafe, "trailing_stop_percent", maximum=Decimal("99"))


def parse_order_request(unsafe: dict) -> OrderInput:
    """Validate a DESIGN §7 order request; raises ValidationFailed naming the first bad field."""
    if not isinstance(unsafe, dict):
        raise _invalid("body", "Send the order as a JSON object.")
    symbol = _symbol(unsafe)
    asset_type = asset_type_for(symbol)
    side = _choice(unsafe, "side", {"buy", "sell"})
    order_type = _choice(unsafe, "type", {member.value for member in OrderType})
    limit_price, stop_price = _prices(unsafe, order_type)
    instruction = _instruction(unsafe, side, asset_type)
    _check_not_expired(symbol, instruction)
    return OrderInput(
        symbol=symbol, asset_type=asset_type, side=OrderSide(side),
        instruction=instruction, quantity=_quantity(unsafe, asset_type),
        order_type=OrderType(order_type), limit_price=limit_price, stop_price=stop_price,
        time_in_force=TimeInForce(_choice(unsafe, "time_in_force", {"day", "gtc"}, default="day")),
        client_order_id=_client_order_id(unsafe), stop_loss_price=_decimal(unsafe, "stop_loss_price"),
        take_profit_price=_decimal(unsafe, "take_profit_price"), trailing_stop_percent=_trailing_percent(unsafe),
        broker_connection_id=_optional_id(unsafe, "broker_connection_id"), trade_id=_optional_id(unsafe, "trade_id"))


# --- placing ------------------------------------------------------------------------------------

def place_order(user, unsafe: dict) -> tuple[Order, bool]:
    """Validate, risk-check and store a new order, enqueue its execution, and COMMIT.

    The one service that commits: the per-user lock must span risk check + insert + commit, or two
    racing orders could both pass a limit. Returns (order, created); the same client_order_id again
    returns the existing order and False. Raises ValidationFailed, RiskLimitExceeded, NotFound
    (unknown broker connection or trade), Conflict (client_order_id used by someone else, or busy),
    DependencyUnavailable (lock service down) and BrokerUnavailable (account not readable).
    """
    request = parse_order_request(unsafe)
    # Quotes held: the symbol's quote, read for the tradability check, also prices a position in it for equity.
    with risk.user_lock(user.id), market_data.quotes_held():
        connection = connection_for(user, request.broker_connection_id)
        existing = _existing_for_client_id(user, request)
        if existing is not None:
            return existing, False
        order = _create_order(user, connection, request)
        jobs.enqueue_after_commit(jobs.ORDERS_EXECUTE, order.id, unless_waiting=_waiting_execution_key(connection))
        _commit_new_order(request)
    log.info("order %s placed: %s %s %s", order.id, order.side, order.quantity, order.symbol)
    return order, True


def connection_for(user, connection_id: int | None) -> BrokerConnection:
    """The user's broker connection by id, or their paper connection; NotFound for others' ids."""
    from utils.brokers import ensure_paper_connection
    if connection_id is None:
        return ensure_paper_connection(user)
    connection = db.session.scalar(select(BrokerConnection).where(
        BrokerConnection.id == connection_id, BrokerConnection.user_id == user.id))
    if connection is None:
        raise NotFound("No such broker connection.", details={"field": "broker_connection_id"})
    if connection.status != ConnectionStatus.CONNECTED:
        raise Conflict("That broker connection is not connected; link it again.", code="broker_not_connected")
    return connection


# The order that already has a client_order_id: looked up on every placement that names one, and almost
# always absent, so the probe is a prebuilt Core read and the order itself is loaded only when there is one.
ORDER_BY_CLIENT_ID = select(Order.__table__.c.id).where(Order.__table__.c.client_order_id == bindparam("client_id"))


def _client_order_id_taken() -> Conflict:
    return Conflict("That client_order_id is already in use.", code="order.client_order_id_taken")


def _existing_for_client_id(user, request: OrderInput) -> Order | None:
    if request.client_order_id is None:
        return None
    found = read_rows(ORDER_BY_CLIENT_ID, {"client_id": request.client_order_id})
    if not found:
        return None
    order = db.session.get(Order, found[0].id)
    if order.user_id != user.id:
        raise _client_order_id_taken()
    if (order.symbol, order.side, order.quantity) != (request.symbol, request.side, request.quantity):
        raise Conflict("That client_order_id was used for a different order.", code="order.client_order_id_reused")
    return order


def _commit_new_order(request: OrderInput) -> None:
    """Commit the new order. What was just written is kept in memory (not expired), so answering with the
    order does not read it back: the answer shows the order as it was accepted."""
    session = db.session()
    session.expire_on_commit = False
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise _client_order_id_taken() from None
    finally:
        session.expire_on_commit = True


def _create_order(user, connection: BrokerConnection, request: OrderInput) -> Order:
    quote = check_tradable_now(connection, request.symbol)
    if request.is_entry:
        order = _order_from(user, connection, request,
                            estimated_price=_check_entry(user, connection, request, quote=quote))
        order.trade_id = trades.create_pending(order, request.direction)  # the trade first: one INSERT each
    else:
        order = _order_from(user, connection, request, trade_id=trades.exit_trade_for(user, request).id,
                            purpose=OrderPurpose.EXIT)
    return _added_with_event(order)


def check_tradable_now(connection: BrokerConnection, symbol: str) -> market_data.Quote | None:
    """Refuse now, as a 422 on the symbol, an order its broker is sure to reject for want of a price: the
    paper broker fills only against a current quote (code `stale_quote`, with the quote's time, or
    `invalid_symbol` when it has none). Accepted instead, it would only end `rejected` in the worker.
    Returns that current quote (None where the broker judges for itself), so it is not read again."""
    from utils.brokers import adapter_class
    try:
        return adapter_class(connection).check_tradable_now(symbol)
    except BrokerRejected as refusal:
        raise ValidationFailed(refusal.message, code=refusal.code,
                               details={**refusal.details, "field": "symbol"}) from None


def _new_order(user, connection, request: OrderInput, **values) -> Order:
    return _added_with_event(_order_from(user, connection, request, **values))


def _order_from(user, connection, request: OrderInput, **values) -> Order:
    """A pending order for `request`, not yet in the session."""
    values.setdefault("purpose", OrderPurpose.ENTRY)
    return Order(user_id=user.id, broker_connection_id=connection.id,
                 client_order_id=request.client_order_id or new_client_order_id(), symbol=request.symbol,
                 asset_type=request.asset_type, side=request.side, instruction=request.instruction,
                 order_type=request.order_type, quantity=request.quantity, limit_price=request.limit_price,
                 stop_price=request.stop_price, time_in_force=request.time_in_force, status=S.PENDING,
                 stop_loss_price=request.stop_loss_price, take_profit_price=request.take_profit_price,
                 trailing_stop_percent=request.trailing_stop_percent, **values)


def _added_with_event(order: Order) -> Order:
    """Insert the order and its first event (flushes). A new order's events and fills are known, so they
    are set on it rather than read back when it is shown. Conflict when its client_order_id was taken
    meanwhile (by another user: the caller's own are looked up under its lock)."""
    db.session.flush()
    try:
        insert_object(order)
    except IntegrityError:
        db.session.rollback()
        raise _client_order_id_taken() from None
    accepted = {"order_id": order.id, "from_status": None, "to_status": S.PENDING, "detail": "accepted",
                "created_at": utcnow()}
    event = OrderEvent(id=insert_row(OrderEvent, accepted), **accepted)  # what was written; not in the session
    set_committed_value(order, "events", [event])
    set_committed_value(order, "fills", [])
    return order


def new_client_order_id() -> str:
    """A fresh idempotency key for an order the user did not name."""
    return f"tw-{uuid.uuid4().hex}"


def _check_entry(user, connection: BrokerConnection, request: OrderInput, exclude_order_id=None,
                 quote: market_data.Quote | None = None) -> Decimal:
    """Run the risk checks for an entry; returns the unit price they assumed (from `quote` when given)."""
    from utils.brokers import get_broker
    broker = get_broker(connection)
    entry_price = _entry_price(broker, request, quote)
    _check_protective_prices(request, entry_price)
    proposal = risk.Proposal(symbol=request.symbol, direction=request.direction, quantity=request.quantity,
                             entry_price=entry_price, stop_loss_price=request.stop_loss_price,
                             multiplier=multiplier(request.asset_type))
    risk.check_order(user, proposal, broker.get_account(), exclude_order_id=exclude_order_id)
    return entry_price


def _entry_price(broker, request: OrderInput, quote: market_data.Quote | None) -> Decimal:
    if request.limit_price is not None:
        return request.limit_price
    if request.stop_price is not None:
        return request.stop_price
    quote = quote or broker.get_quotes([request.symbol]).get(request.symbol)
    if quote is None:
        raise _invalid("symbol", f"There is no price for {request.symbol}.")
    return quote.ask if request.side == OrderSide.BUY else quote.bid


def _check_protective_prices(request: OrderInput, entry_price: Decimal) -> None:
    long = request.direction == "long"
    stop, target = request.stop_loss_price, request.take_profit_price
    if stop is not None and (stop >= entry_price if long else stop <= entry_price):
        raise _invalid("stop_loss_price", f"stop_loss_price must be {'below' if long else 'above'} the entry "
                                          f"price {entry_price}.")
    if target is not None and (target <= entry_price if long else target >= entry_price):
        raise _invalid("take_profit_price", f"take_profit_price must be {'above' if long else 'below'} the entry "
                                            f"price {entry_price}.")


def create_exit_order(trade, quantity: Decimal, purpose: OrderPurpose = OrderPurpose.EXIT) -> Order:
    """Add a market order that closes `quantity` of `trade` and enqueue it (flushes; caller commits)."""
    side = OrderSide.SELL if trade.side == "long" else OrderSide.BUY
    if trade.asset_type == AssetType.OPTION:
        instruction = "SELL_TO_CLOSE" if side == OrderSide.SELL else "BUY_TO_CLOSE"
    else:
        instruction = "SELL" if side == OrderSide.SELL else "BUY_TO_COVER"
    order = Order(user_id=trade.user_id, broker_connection_id=trade.broker_connection_id,
                  client_order_id=new_client_order_id(), symbol=trade.symbol, asset_type=trade.asset_type, side=side,
                  instruction=instruction, order_type=OrderType.MARKET, quantity=quantity,
                  time_in_force=TimeInForce.DAY, status=S.PENDING, purpose=purpose, trade_id=trade.id)
    db.session.add(order)
    db.session.flush()
    db.session.add(OrderEvent(order_id=order.id, from_status=None, to_status=S.PENDING, detail=f"{purpose} exit"))
    jobs.enqueue_after_commit(jobs.ORDERS_EXECUTE, order.id)
    return order


# --- transitions --------------------------------------------------------------------------------

def transition(order: Order, new_status: OrderStatus, detail: str | None = None, **values) -> None:
    """Move `order` to `new_status` with one conditional UPDATE and an OrderEvent (flushes).

    Raises InvalidTransition when the move is not allowed or the row changed under us.
    """
    old_status, new_status = OrderStatus(order.status), OrderStatus(new_status)
    if new_status not in TRANSITIONS.get(old_status, set()):
        raise InvalidTransition(f"An order cannot go from {old_status} to {new_status}.",
                                details={"from": old_status.value, "to": new_status.value})
    if new_status in TERMINAL:
        values.setdefault("completed_at", utcnow())
    values.update(status=new_status, updated_at=utcnow())
    if guarded_update(Order, order.id, {"status": old_status}, values) != 1:
        raise InvalidTransition("The order changed meanwhile.", details={"from": old_status.value,
                                                                          "to": new_status.value})
    insert_row(OrderEvent, {"order_id": order.id, "from_status": old_status, "to_status": new_status,
                            "detail": (detail or None) and detail[:255]})
    _written(order, values)
    db.session.expire(order, ["events"])  # the new event was written past the session


def _written(row, values: dict) -> None:
    """Make the in-memory row show what a conditional UPDATE just wrote (without reloading it)."""
    for name, value in values.items():
        set_committed_value(row, name, value)


# --- execution (worker) -------------------------------------------------------------------------

def claim_submission(order_id: int, attempt: int | None = None) -> int | None:
    """Claim an order for sending: `pending → submitting`, or (a retry) bump the attempt counter of a
    `submitting` order from `attempt`. Returns the new attempt number, or None when someone else has it or
    the order is an entry past its send deadline (it is `failed` instead, see send_deadline)."""
    order = db.session.get(Order, order_id)
    if order is None:
        return None
    if attempt is None:
        if order.status != S.PENDING:
            return None
        try:
            if _fail_if_too_late(order):
                return None
            transition(order, S.SUBMITTING, submit_attempts=order.submit_attempts + 1)
        except InvalidTransition:
            return None
        set_committed_value(order, "fills", [])  # a fill is only recorded once a broker has the order
        return order.submit_attempts
    return _claim_retry(order, attempt)


def send_deadline(order: Order) -> datetime | None:
    """When an unsent entry stops being sent: ORDERS_SEND_DEADLINE_SECONDS after it was placed (None: never).
    Exits have none: closing a position late still does what the user or the stop-loss asked."""
    seconds = int(current_app.config.get("ORDERS_SEND_DEADLINE_SECONDS", 300))
    if not seconds or order.purpose != OrderPurpose.ENTRY:
        return None
    return order.created_at + timedelta(seconds=seconds)


def _past_send_deadline(order: Order) -> bool:
    deadline = send_deadline(order)
    return deadline is not None and utcnow() >= deadline


def _fail_if_too_late(order: Order) -> bool:
    """Fail a `pending` entry past its send deadline instead of claiming it (flushes): the worker was down or
    far behind, and an entry sent now would reach a market that has moved on since it was placed."""
    if not _past_send_deadline(order):
        return False
    waited = int((utcnow() - order.created_at).total_seconds())
    allowed = int((send_deadline(order) - order.created_at).total_seconds())
    _fail(order, f"not sent: it waited {waited} s for the worker, past the {allowed} s send deadline; sent this "
                 "late it would meet a market that has moved on. Place it again if you still want it.")
    return True


def _claim_retry(order: Order, attempt: int) -> int | None:
    """Count send attempt `attempt + 1` with an event, unless the last attempt stopped at an unexpected error:
    that note counts the attempts of a recurring error (note_send_error), so the events stay few."""
    detail = None if _unexpected_error_note(order.id) else f"send attempt {attempt + 1}"
    return attempt + 1 if _count_attempt(order.id, S.SUBMITTING, attempt, detail) else None


def _count_attempt(order_id: int, status: OrderStatus, attempt: int, detail: str | None) -> bool:
    """Raise the order's attempt count from `attempt`, staying in `status`, with an event saying why (none when
    `detail` is None; flushes). False when the order moved on or someone else counted first (one conditional
    UPDATE)."""
    changed = db.session.execute(
        update(Order).where(Order.id == order_id, Order.status == status, Order.submit_attempts == attempt)
        .values(submit_attempts=attempt + 1, updated_at=utcnow())
        .execution_options(synchronize_session="fetch")).rowcount
    if changed != 1:
        return False
    if detail is not None:
        db.session.add(OrderEvent(order_id=order_id, from_status=status, to_status=status, detail=detail))
    db.session.flush()
    return True


@dataclass(frozen=True)
class BrokerAnswer:
    """What the broker said to a send: its order, and whether we adopted it (found by client_order_id)."""

    broker_order: BrokerOrder
    adopted: bool = False


def execute_in_our_database(order_id: int) -> bool:
    """Claim, send and record the answer of a `pending` order whose broker keeps its orders in our own
    database (the paper broker), all in the caller's transaction, to commit as one (flushes). A crash
    anywhere undoes all three and leaves the order `pending`, with nothing at the broker, for the recovery
    sweep to queue again. Returns False, having done nothing, for an order at any other broker."""
    # The order and its connection are held here, so the calls below find them in the session (its identity
    # map lets go of unchanged rows nobody holds, and reading them again costs a SELECT each).
    order, connection = _order_and_connection(order_id)
    if not _kept_in_our_database(connection):
        return False
    with market_data.quotes_held():  # the price is read before the claim takes the database's write lock
        market_data.get_quotes([order.symbol])
        if claim_submission(order_id) is not None:  # None: not pending any more
            answer = send_claimed(order_id)
            if answer is not None:
                pause_for_fault_injection(order_id)
                record_answer(order_id, answer)
    return True


ORDER_AND_CONNECTION = select(*columns_of(Order, "order_"), *columns_of(BrokerConnection, "connection_")) \
    .join_from(Order, BrokerConnection, BrokerConnection.id == Order.broker_connection_id) \
    .where(Order.id == bindparam("order_id"))


def _order_and_connection(order_id: int) -> tuple[Order | None, BrokerConnection | None]:
    """The order and its broker connection, read together (one SELECT instead of one each) and precompiled."""
    rows = read_rows(ORDER_AND_CONNECTION, {"order_id": order_id})
    return objects_from_row(rows[0], Order, BrokerConnection) if rows else (None, None)


def waiting_execution_key(connection_id: int) -> str:
    """The key under which an `orders.execute` of a paper account waits for a worker (see place_order)."""
    return f"tradewarden:orders:execute-waiting:{connection_id}"


def _waiting_execution_key(connection: BrokerConnection) -> str | None:
    """A new order at the paper broker sends no `orders.execute` of its own while one of its account is waiting
    for a worker: that task executes every order of the account still pending when it starts (see
    worker.execute_order). An order at a remote broker always has a task of its own."""
    return waiting_execution_key(connection.id) if _kept_in_our_database(connection) else None


def paper_connection_id(order_id: int) -> int | None:
    """The id of the order's broker connection when its broker keeps its orders in our database (the paper
    broker); None for other brokers and unknown orders."""
    _, connection = _order_and_connection(order_id)
    return connection.id if _kept_in_our_database(connection) else None


PENDING_OF_CONNECTION = select(Order.__table__.c.id).where(
    Order.__table__.c.broker_connection_id == bindparam("connection_id"),
    Order.__table__.c.status == S.PENDING).order_by(Order.__table__.c.id).limit(bindparam("limit"))


def pending_order_ids(connection_id: int, limit: int) -> list[int]:
    """The ids of the connection's orders not yet taken up by a worker (`pending`), oldest first."""
    return [row.id for row in read_rows(PENDING_OF_CONNECTION, {"connection_id": connection_id, "limit": limit})]


def count_execution_error(order_id: int, error: Exception, give_up_after: int) -> None:
    """Count a failed execution of a `pending` order whose transaction was rolled back (flushes): an
    unexpected error, not a broker's answer. Rolled back means nothing reached the paper broker, so once
    `give_up_after` executions have failed the order is `failed`, instead of being queued by the recovery
    sweep forever. Only the error's type is written; its message and traceback go to the worker's log."""
    order = db.session.get(Order, order_id)
    if order is None or order.status != S.PENDING:
        return
    attempts = order.submit_attempts + 1
    detail = f"execution {attempts} stopped by an internal error ({type(error).__name__})"
    if attempts >= give_up_after:
        _fail(order, f"{detail}; given up, nothing reached the broker", submit_attempts=attempts)
        return
    _count_attempt(order_id, S.PENDING, order.submit_attempts, detail)


def _connection_of(order: Order | None) -> BrokerConnection | None:
    return db.session.get(BrokerConnection, order.broker_connection_id) if order is not None else None


def _kept_in_our_database(connection: BrokerConnection | None) -> bool:
    """Whether the connection's broker keeps its orders in our own database (the paper broker). False without
    a connection or an installed adapter: the remote path reports that and retries."""
    from utils.brokers import adapter_class
    try:
        return connection is not None and adapter_class(connection).in_our_database
    except BrokerUnavailable:
        return False


def send_claimed(order_id: int, resend_allowed: bool = True) -> BrokerAnswer | None:
    """Send a claimed (`submitting`) order to its broker and return its answer (flushes).

    A resend asks the broker by client_order_id first and adopts what it finds. When its sends have run
    out (`resend_allowed` false: it was only kept because a send may have arrived), a broker that answers
    without a copy ends it `failed` instead: sent now, it would reach a market that has moved on.
    A business rejection is recorded as `rejected` (returns None); BrokerUnavailable propagates so the task
    can retry. The caller commits right after, so the broker's side is durable before the answer is
    recorded, exactly as with a remote broker (the paper broker keeps its state in our database).
    """
    order = db.session.get(Order, order_id)
    if order is None or order.status != S.SUBMITTING:
        return None
    try:
        return _send(order, broker_for(order), resend_allowed)
    except (BrokerRejected, BrokerAuthExpired, OrderNotCancelable, OrderNotFound) as error:
        _reject(order, error.message)
        return None


# The send turn is renewed every 10 s while a send runs, however long its HTTP retries take, so a worker
# killed mid-send frees its account within 30 s.
SEND_LOCK_SECONDS = 30
SEND_LOCK_WAIT_SECONDS = 30


def send_lock(connection_id: int):
    """The Redis lock that lets one send at a time through to a broker account (see send_turn)."""
    return risk.cache_redis().lock(f"tradewarden:lock:send:{connection_id}", timeout=SEND_LOCK_SECONDS,
                                   blocking_timeout=SEND_LOCK_WAIT_SECONDS, thread_local=False)


@contextlib.contextmanager
def send_turn(order_id: int):
    """Hold the account's send lock from the send to the recording of its answer, at a broker that does not
    keep our client_order_id (Schwab). A resend there finds a lost order by its details among the orders
    not yet recorded as ours; another identical order of ours in flight at that moment would be taken for
    it. Waiting our turn means every earlier send is recorded before a lookup runs. Busy → BrokerUnavailable
    (retried, and nothing was sent)."""
    from utils.brokers import adapter_class
    connection = _connection_of(db.session.get(Order, order_id))
    if connection is None or adapter_class(connection).keeps_client_order_id:
        yield
        return
    with locks.holding(send_lock(connection.id), keep_alive=True,
                      unavailable=BrokerUnavailable("Sending is paused: the lock service is unavailable."),
                      busy=BrokerUnavailable("Another order on this broker account is being sent; trying again "
                                             "shortly.")):
        yield


def record_answer(order_id: int, answer: BrokerAnswer) -> None:
    """Record the broker's answer to a send: `submitted` (or `rejected`) plus any fills (flushes)."""
    order = db.session.get(Order, order_id)
    if order is None or order.status != S.SUBMITTING:
        return
    record_submission(order, answer.broker_order, adopted=answer.adopted)


def _send(order: Order, broker, resend_allowed: bool = True) -> BrokerAnswer | None:
    if order.submit_attempts > 1:
        found = broker.read_back(lambda: broker.find_sent_order(broker_request(order), order.created_at,
                                                                _known_broker_ids(order)), accepted=False)
        if found is not None:
            log.info("order %s: adopting the copy the broker already has (%s)", order.id, found.broker_order_id)
            return BrokerAnswer(found, adopted=True)
        if not resend_allowed:
            _give_up_unsent(order, "after its send attempts ran out")
            return None
        if _past_send_deadline(order):
            _give_up_unsent(order, "and its send deadline has passed")
            return None
    replaced = db.session.get(Order, order.replaces_order_id) if order.replaces_order_id else None
    if replaced is not None and replaced.status == S.SUBMITTING:  # placing now could leave both live
        raise BrokerUnavailable(f"Order {replaced.id}, which this one replaces, is still being sent.")
    if replaced is not None and replaced.broker_order_id:
        _catch_up(replaced, broker)
        if replaced.status != S.SUBMITTED:  # it filled (in part) or ended since the replace was asked for
            raise BrokerRejected(f"Order {replaced.id} is {replaced.status} at the broker now, so it was not replaced.")
        return _sending(lambda: broker.replace_order(replaced.broker_order_id, broker_request(order)))
    return _sending(lambda: broker.place_order(broker_request(order)))


def _sending(send) -> BrokerAnswer:
    """Call the broker's place or replace. Reaching this call means no earlier send of the order is in
    doubt (there was none, or the broker's lookup just said it has no copy), so a BrokerUnavailable from
    it says all there is to know about whether the broker may have the order (`settles_earlier_sends`)."""
    try:
        return BrokerAnswer(send())
    except BrokerUnavailable as error:
        error.settles_earlier_sends = True
        raise


def note_send_may_arrive(order_id: int) -> bool | None:
    """Mark a claimed order at a remote broker `send_outcome_unknown` before its send (flushes; commit it with
    the claim). From here until the broker's answer is recorded the order may reach the broker, and a
    worker killed mid-send, or an error after the POST, records nothing more: without the mark a later
    run of failed lookups could call the order `failed` while the broker holds it. Returns the mark as it
    was before (None at the paper broker, whose send commits with our records), for note_send_failure."""
    order = db.session.get(Order, order_id)
    if order is None or order.status != S.SUBMITTING or _kept_in_our_database(_connection_of(order)):
        return None
    before, order.send_outcome_unknown = order.send_outcome_unknown, True
    db.session.flush()
    return before


def note_send_failure(order_id: int, error: BrokerUnavailable, doubt_before_claim: bool | None = None) -> None:
    """Remember whether the broker may have the order after a failed send (flushes): yes when the send may
    have arrived; no when the send was refused and no earlier send is in doubt; when the failure came
    before this attempt's send (the lookup of an earlier send did not answer, the account was busy), as it
    was before the claim marked it (`doubt_before_claim`, from note_send_may_arrive; None: unchanged)."""
    if error.may_have_arrived:
        unknown = True
    elif error.settles_earlier_sends:
        unknown = False
    elif doubt_before_claim is not None:
        unknown = doubt_before_claim
    else:
        return
    db.session.execute(update(Order).where(Order.id == order_id, Order.status == S.SUBMITTING)
                       .values(send_outcome_unknown=unknown).execution_options(synchronize_session=False))
    db.session.flush()


def _catch_up(order: Order, broker) -> None:
    """Record what the broker reports of `order` right now (fills since the last sync) before acting on it."""
    apply_broker_order(order, broker.get_order(order.broker_order_id))


def retry_delay_seconds(attempt: int) -> float:
    """Backoff before send attempt `attempt + 1`: ORDERS_RETRY_BASE_SECONDS (default 1) doubled per attempt."""
    base = float(Decimal(str(current_app.config.get("ORDERS_RETRY_BASE_SECONDS") or "1")))
    return base * 2 ** (attempt - 1)


def pause_for_fault_injection(order_id: int) -> None:
    """ORDERS_EXECUTE_FAULT_DELAY_SECONDS (tests only, default 0) widens the window between the broker
    call and recording its answer, so a crash test can SIGKILL the worker exactly there."""
    delay = int(current_app.config.get("ORDERS_EXECUTE_FAULT_DELAY_SECONDS") or 0)
    if delay > 0:
        log.warning("order %s: fault injection, pausing %s s before recording the broker's answer", order_id, delay)
        time.sleep(delay)


def _known_broker_ids(order: Order) -> frozenset[str]:
    """Broker order ids already recorded on the order's connection since a day before it was created."""
    return frozenset(db.session.scalars(select(Order.broker_order_id).where(
        Order.broker_connection_id == order.broker_connection_id, Order.broker_order_id.is_not(None),
        Order.created_at >= order.created_at - timedelta(days=1))))


def broker_request(order: Order) -> OrderRequest:
    """The broker-facing request for an order (carries our client_order_id as the idempotency key).
    Amounts go out without the trailing zeros PostgreSQL's NUMERIC(28, 10) reads back (10.0000000000),
    which a broker checking size or price precision would refuse."""
    return OrderRequest(client_order_id=order.client_order_id, symbol=order.symbol,
                        asset_type=str(order.asset_type), side=str(order.side), instruction=order.instruction,
                        order_type=str(order.order_type), quantity=_plain(order.quantity),
                        time_in_force=str(order.time_in_force), limit_price=_plain(order.limit_price),
                        stop_price=_plain(order.stop_price))


def _plain(amount: Decimal | None) -> Decimal | None:
    """The same amount without trailing zeros (10.50 → 10.5; 100 stays 100, not 1E+2)."""
    if amount is None:
        return None
    normal = amount.normalize()
    return normal.quantize(Decimal(1)) if normal.as_tuple().exponent > 0 else normal


def broker_for(order: Order):
    """The Broker adapter of the order's connection."""
    from utils.brokers import get_broker
    return get_broker(db.session.get(BrokerConnection, order.broker_connection_id))


def record_submission(order: Order, broker_order: BrokerOrder, adopted: bool = False) -> None:
    """Record the broker's acceptance (`submitted` + broker id) and whatever it already reports."""
    if broker_order.status == S.REJECTED:
        _reject(order, broker_order.reject_reason or "rejected by the broker")
        return
    found = " (found by client_order_id)" if adopted else ""
    transition(order, S.SUBMITTED, detail=f"broker order {broker_order.broker_order_id}{found}",
               broker_order_id=broker_order.broker_order_id, submitted_at=utcnow())
    if order.replaces_order_id:
        _mark_replaced(order.replaces_order_id, order)
    apply_broker_order(order, broker_order)
    trades.exit_sent(order)


def _mark_replaced(old_order_id: int, new_order: Order) -> None:
    old = db.session.get(Order, old_order_id)
    if old is not None and old.status in (S.PENDING, *OPEN_AT_BROKER):
        transition(old, S.REPLACED, detail=f"replaced by order {new_order.id}")


def _reject(order: Order, reason: str) -> None:
    transition(order, S.REJECTED, detail=reason, reject_reason=reason[:255])
    trades.entry_finished(order)


def _give_up_unsent(order: Order, why: str) -> None:
    """The broker answered that it has no copy of an order that may not be sent again (its sends ran out, or
    an entry's send deadline passed): `failed`, not sent again."""
    _fail(order, f"the broker answered that it never got the order, {why}; not sent again")


def fail_submission(order_id: int, reason: str) -> None:
    """Give up on a `submitting` order after the retries (broker unreachable): `failed` (flushes).

    Not while a send may have reached the broker (`send_outcome_unknown`): calling that order failed could
    leave a live order at the broker that nobody watches. It stays `submitting`, and the recovery sweep
    asks the broker again until it answers, then adopts its copy or, if it has none, fails it."""
    order = db.session.get(Order, order_id)
    if order is None or order.status != S.SUBMITTING:
        return
    if order.send_outcome_unknown:
        _note_kept_submitting(order, f"{reason[:160]}; the broker may have the order, so it is not called failed")
        return
    _fail(order, reason)


def note_send_error(order_id: int, attempt: int, error: Exception) -> None:
    """Record on a `submitting` order that send attempt `attempt` stopped at an unexpected error, one that is
    no broker's answer (flushes). Where it stopped is unknown, so the order keeps the in-doubt mark of its
    claim and stays `submitting` for the recovery sweep; the event shows the user why it waits.

    The same error again on the next attempt widens the last note ("send attempts 2–9 stopped by …") instead
    of adding events: the sweep retries every few minutes for as long as the error lasts."""
    order = db.session.get(Order, order_id)
    if order is None or order.status != S.SUBMITTING:
        return
    kind = type(error).__name__
    event, match = _unexpected_error_note(order.id) or (None, None)
    if match is not None and match.group("kind") == kind:
        event.detail = _kept_submitting_detail(_unexpected_error_reason(f"send attempts {match.group('first')}–"
                                                                        f"{attempt}", kind))
        db.session.flush()
        return
    _note_kept_submitting(order, _unexpected_error_reason(f"send attempt {attempt}", kind))


UNEXPECTED_ERROR_NOTE = re.compile(r"send attempts? (?P<first>\d+)(–\d+)? stopped by an unexpected error "
                                   r"\((?P<kind>\w+)\)")


def _unexpected_error_reason(attempts: str, kind: str) -> str:
    return f"{attempts} stopped by an unexpected error ({kind}), not an answer from the broker"


def _unexpected_error_note(order_id: int) -> tuple[OrderEvent, re.Match] | None:
    """The order's latest event, with its match, when it is note_send_error's note; else None."""
    latest = db.session.scalars(select(OrderEvent).where(OrderEvent.order_id == order_id)
                                .order_by(OrderEvent.id.desc()).limit(1)).first()
    match = latest is not None and UNEXPECTED_ERROR_NOTE.match(latest.detail or "")
    return (latest, match) if match else None


def _note_kept_submitting(order: Order, reason: str) -> None:
    db.session.add(OrderEvent(order_id=order.id, from_status=S.SUBMITTING, to_status=S.SUBMITTING,
                              detail=_kept_submitting_detail(reason)))
    db.session.flush()


def _kept_submitting_detail(reason: str) -> str:
    return f"{reason}: the recovery sweep asks it again"


def _fail(order: Order, reason: str, **values) -> None:
    transition(order, S.FAILED, detail=reason, reject_reason=reason[:255], send_outcome_unknown=False, **values)
    trades.entry_finished(order)


# --- fills and broker status --------------------------------------------------------------------

def apply_broker_order(order: Order, broker_order: BrokerOrder) -> None:
    """Record new fills from the broker's view of the order, then follow its status (flushes)."""
    record_broker_fills(order, broker_order)
    _follow_broker_status(order, broker_order)


def record_broker_fills(order: Order, broker_order: BrokerOrder) -> None:
    """Record the executions the broker lists that we do not have yet, then whatever part of the broker's
    filled quantity no listed execution explains (flushes)."""
    earlier = fills_before_edit(order)
    known = {fill.broker_execution_id for fill in [*order.fills, *earlier]}
    for broker_fill in sorted(broker_order.fills, key=lambda fill: (fill.executed_at, fill.execution_id)):
        if broker_fill.execution_id not in known:
            record_fill(order, broker_fill)
            known.add(broker_fill.execution_id)
    _record_unlisted_fill(order, broker_order, earlier)


def fills_before_edit(order: Order) -> list[Fill]:
    """Fills recorded on the orders this one replaced by an edit in place at the broker (the same broker
    order id, as Coinbase keeps it): the broker counts them in this order too, so we must not again."""
    earlier, current = [], order
    while current.replaces_order_id and current.broker_order_id:
        replaced = db.session.get(Order, current.replaces_order_id)
        if replaced is None or replaced.broker_order_id != current.broker_order_id:
            break
        earlier.extend(replaced.fills)
        current = replaced
    return earlier


def _record_unlisted_fill(order: Order, broker_order: BrokerOrder, earlier: list[Fill]) -> None:
    """A broker that reports only running totals (E*TRADE) says how much is filled and at what average, not
    each execution: the quantity beyond ours becomes one fill, priced so that our average equals the
    broker's and identified by the total it brings us to (so polling again records nothing twice).
    Brokers that list executions are never topped up from totals: a list that lags the totals would
    otherwise be counted twice once it catches up."""
    if broker_order.executions_listed:
        return
    recorded = [*order.fills, *earlier]
    missing = broker_order.filled_quantity - sum((fill.quantity for fill in recorded), Decimal("0"))
    if missing <= 0 or not broker_order.average_fill_price:
        return
    ours = sum((fill.quantity * fill.price for fill in recorded), Decimal("0"))
    price = ((broker_order.average_fill_price * broker_order.filled_quantity - ours) / missing).quantize(
        PRICE_PLACES, rounding=ROUND_HALF_EVEN)
    fee = max((broker_order.total_fees or Decimal("0")) - sum((fill.fee for fill in recorded), Decimal("0")),
              Decimal("0"))
    total = format(broker_order.filled_quantity.normalize(), "f")
    record_fill(order, BrokerFill(execution_id=f"{broker_order.broker_order_id}-filled-{total}", quantity=missing,
                                  price=price, fee=fee, executed_at=utcnow()))


def record_fill(order: Order, broker_fill) -> Fill | None:
    """Add one execution to an order; a duplicate or an overfill is refused (returns None)."""
    quantity, price = broker_fill.quantity, broker_fill.price
    if quantity <= 0 or price < 0:  # zero is a price: an option that expired worthless settles at it
        log.warning("order %s: refused a fill with quantity %s price %s", order.id, quantity, price)
        return None
    if order.filled_quantity + quantity > order.quantity:
        log.warning("order %s: refused overfill %s (filled %s of %s)", order.id, quantity, order.filled_quantity,
                    order.quantity)
        return None
    previous = list(order.fills)  # loaded before the new fill is in the session, so it is not counted twice
    if any(fill.broker_execution_id == broker_fill.execution_id for fill in previous):
        return None
    fill = insert_object(Fill(user_id=order.user_id, order_id=order.id, broker_execution_id=broker_fill.execution_id,
                              quantity=quantity, price=price, fee=broker_fill.fee or Decimal("0"),
                              executed_at=broker_fill.executed_at or utcnow()))
    set_committed_value(order, "fills", [*previous, fill])  # ordered by id, and the new id is the largest
    _add_to_totals(order, previous, fill)
    trades.apply_fill(order, fill)
    _status_after_fill(order)
    return fill


def average_price(fills) -> Decimal | None:
    """Quantity-weighted average price, exact in Decimal, rounded half-even to 10 places."""
    quantity = sum((fill.quantity for fill in fills), Decimal("0"))
    if quantity == 0:
        return None
    notional = sum((fill.quantity * fill.price for fill in fills), Decimal("0"))
    return (notional / quantity).quantize(PRICE_PLACES, rounding=ROUND_HALF_EVEN)


def _add_to_totals(order: Order, previous: list[Fill], fill: Fill) -> None:
    """Write the new totals guarded by the old filled quantity (a concurrent recorder makes this fail)."""
    all_fills = [*previous, fill]
    new_filled = order.filled_quantity + fill.quantity
    values = {"filled_quantity": new_filled, "fees": order.fees + fill.fee,
              "average_fill_price": average_price(all_fills), "updated_at": utcnow()}
    if guarded_update(Order, order.id, {"filled_quantity": order.filled_quantity}, values) != 1:
        raise Conflict("The order's fills changed meanwhile.", code="order.concurrent_fill")
    _written(order, values)


def _status_after_fill(order: Order) -> None:
    if order.filled_quantity == order.quantity:
        transition(order, S.FILLED, detail="filled")
        trades.entry_finished(order)
    elif order.status == S.SUBMITTED:
        transition(order, S.PARTIALLY_FILLED, detail=f"filled {order.filled_quantity} of {order.quantity}")


BROKER_ENDINGS = {S.CANCELLED, S.EXPIRED, S.REJECTED, S.REPLACED}


def _follow_broker_status(order: Order, broker_order: BrokerOrder) -> None:
    reported = OrderStatus(broker_order.status) if broker_order.status in S._value2member_map_ else None
    if reported not in BROKER_ENDINGS or order.status in TERMINAL:
        return
    if reported == S.REJECTED and order.status not in (S.SUBMITTED, S.SUBMITTING):
        reported = S.CANCELLED
    if reported not in TRANSITIONS.get(OrderStatus(order.status), set()):
        return
    reason = broker_order.reject_reason or f"{reported} at the broker"
    transition(order, reported, detail=reason,
               **({"reject_reason": reason[:255]} if reported == S.REJECTED else {}))
    trades.entry_finished(order)


# --- cancel and replace -------------------------------------------------------------------------

def get_order(user, order_id) -> Order:
    """One of the user's orders; NotFound for unknown ids and other users' orders."""
    return owned_row(Order, user, order_id, "No such order.")


def cancel_order(user, order_id) -> Order:
    """Ask to cancel an order: `pending → cancelled` at once, `submitted|partially_filled → pending_cancel`
    and a worker job (flushes; caller commits). Raises NotFound, Conflict when it can no longer be cancelled."""
    order = get_order(user, order_id)
    if order.status == S.PENDING_CANCEL:  # asking again re-sends the (idempotent) broker cancel
        jobs.enqueue_after_commit(jobs.ORDERS_CANCEL, order.id)
        return order
    try:
        if order.status == S.PENDING:
            transition(order, S.CANCELLED, detail="cancelled before it was sent")
            trades.entry_finished(order)
        elif order.status in (S.SUBMITTED, S.PARTIALLY_FILLED):
            transition(order, S.PENDING_CANCEL, detail="cancel requested")
            jobs.enqueue_after_commit(jobs.ORDERS_CANCEL, order.id)
        else:
            raise InvalidTransition()
    except InvalidTransition:
        raise Conflict(f"An order that is {order.status} cannot be cancelled.", code="order.not_cancelable",
                       details={"status": str(order.status)}) from None
    return order


def request_broker_cancel(order_id: int) -> None:
    """Worker side of a cancel: tell the broker and record its answer (flushes).
    BrokerUnavailable propagates so the task can retry."""
    order = db.session.get(Order, order_id)
    if order is None or order.status != S.PENDING_CANCEL or not order.broker_order_id:
        return
    broker = broker_for(order)
    try:
        broker_order = broker.cancel_order(order.broker_order_id)
    except (OrderNotCancelable, OrderNotFound):
        broker_order = broker.get_order(order.broker_order_id)
    apply_broker_order(order, broker_order)


REPLACE_FIELDS = ("quantity", "limit_price", "stop_price", "time_in_force", "client_order_id")


def replace_order(user, order_id, unsafe: dict) -> Order:
    """Replace an open order with a new one (quantity, limit_price, stop_price, time_in_force) and COMMIT.

    Like place_order it commits inside the per-user lock. The new order points back with
    `replaces_order_id`; the old one becomes `replaced` once the broker confirms (at once if it was never
    sent). Raises NotFound, Conflict (not replaceable), ValidationFailed, RiskLimitExceeded.
    """
    if not isinstance(unsafe, dict) or not any(unsafe.get(field) is not None for field in REPLACE_FIELDS[:4]):
        raise _invalid("body", "Send at least one of quantity, limit_price, stop_price, time_in_force.")
    old = get_order(user, order_id)
    request = parse_order_request(_merged_request(old, unsafe))
    with risk.user_lock(user.id):
        db.session.refresh(old)
        if old.status not in (S.PENDING, S.SUBMITTED):
            raise Conflict(f"An order that is {old.status} cannot be replaced.", code="order.not_replaceable",
                           details={"status": str(old.status)})
        new = _create_replacement(user, old, request)
        jobs.enqueue_after_commit(jobs.ORDERS_EXECUTE, new.id)
        _commit_new_order(request)
    return new


def _merged_request(old: Order, unsafe: dict) -> dict:
    merged = {"symbol": old.symbol, "side": str(old.side), "type": str(old.order_type),
              "instruction": old.instruction, "time_in_force": str(old.time_in_force),
              "quantity": str(old.quantity), "limit_price": old.limit_price and str(old.limit_price),
              "stop_price": old.stop_price and str(old.stop_price),
              "stop_loss_price": old.stop_loss_price and str(old.stop_loss_price),
              "take_profit_price": old.take_profit_price and str(old.take_profit_price),
              "trailing_stop_percent": old.trailing_stop_percent and str(old.trailing_stop_percent)}
    merged.update({field: unsafe[field] for field in REPLACE_FIELDS if field in unsafe})
    return merged


def _create_replacement(user, old: Order, request: OrderInput) -> Order:
    connection = db.session.get(BrokerConnection, old.broker_connection_id)
    quote = check_tradable_now(connection, request.symbol)
    estimated_price = old.estimated_price
    if request.is_entry:
        estimated_price = _check_entry(user, connection, request, exclude_order_id=old.id, quote=quote)
    else:
        trades.check_exit_quantity(db.session.get(trades.Trade, old.trade_id), request.quantity,
                                   exclude_order_id=old.id)
    new = _new_order(user, connection, request, estimated_price=estimated_price, replaces_order_id=old.id,
                     trade_id=old.trade_id)
    new.purpose = old.purpose
    if old.status == S.PENDING:
        transition(old, S.REPLACED, detail=f"replaced by order {new.id} before it was sent")
    db.session.flush()
    return new


# --- sync and recovery (beat) -------------------------------------------------------------------

@contextlib.contextmanager
def sweep_lock(name: str, timeout: int = 60):
    """Hold a non-blocking Redis lock for a periodic scan; yields False when another scan holds it."""
    lock = risk.cache_redis().lock(f"tradewarden:lock:sweep:{name}", timeout=timeout, blocking=False)
    acquired = lock.acquire()
    try:
        yield acquired
    finally:
        if acquired:
            with contextlib.suppress(redis_lib.RedisError):
                lock.release()


def open_order_ids(limit: int = 500) -> list[int]:
    """Ids of orders the broker still works on (submitted, partially filled, pending cancel)."""
    return list(db.session.scalars(select(Order.id).where(Order.status.in_(OPEN_AT_BROKER))
                                   .order_by(Order.updated_at).limit(limit)))


def sync_order(order_id: int) -> None:
    """Ask the broker about one open order and record new fills and its status (flushes)."""
    order = db.session.get(Order, order_id)
    if order is None or order.status not in OPEN_AT_BROKER or not order.broker_order_id:
        return
    try:
        broker_order = broker_for(order).get_order(order.broker_order_id)
    except OrderNotFound:
        log.warning("order %s: the broker no longer knows %s", order.id, order.broker_order_id)
        return
    apply_broker_order(order, broker_order)


def stuck_after() -> timedelta:
    """ORDERS_STUCK_AFTER_SECONDS: how long an order may wait in one state before it counts as delayed."""
    return timedelta(seconds=int(current_app.config.get("ORDERS_STUCK_AFTER_SECONDS") or 30))


def stuck_orders(now: datetime | None = None) -> tuple[list[int], list[tuple[int, int]]]:
    """Orders stuck in `pending` (ids) and in `submitting` (id, attempt) longer than ORDERS_STUCK_AFTER_SECONDS.

    A `submitting` order at a remote broker counts as stuck only once no send of it can still be running
    (the task time limit has passed): a resend beside a slow first send could reach the broker before the
    first one shows there, and only the paper broker (same database, idempotent) is safe from that."""
    now = now or utcnow()
    cutoff = now - stuck_after()
    remote_cutoff = min(cutoff, now - timedelta(seconds=jobs.TASK_TIME_LIMIT_SECONDS + 30))
    pending = list(db.session.scalars(select(Order.id).where(Order.status == S.PENDING, Order.updated_at < cutoff)))
    submitting = [tuple(row) for row in db.session.execute(
        select(Order.id, Order.submit_attempts).join(BrokerConnection, BrokerConnection.id == Order.broker_connection_id)
        .where(Order.status == S.SUBMITTING, Order.updated_at < cutoff,
               (BrokerConnection.broker == Broker.PAPER) | (Order.updated_at < remote_cutoff)))]
    return pending, submitting


def delayed_counts(now: datetime | None = None) -> dict[str, int]:
    """How many orders are delayed, by why (for the `orders_delayed` metric): `waiting_for_worker`, pending
    longer than ORDERS_STUCK_AFTER_SECONDS; `unconfirmed_by_broker`, still submitting after a retry;
    `cancel_unconfirmed`, pending_cancel that long. The same orders carry a notice (waiting_notice); one query
    over the status index."""
    cutoff = (now or utcnow()) - stuck_after()
    conditions = {"waiting_for_worker": and_(Order.status == S.PENDING, Order.created_at < cutoff),
                  "unconfirmed_by_broker": and_(Order.status == S.SUBMITTING, Order.submit_attempts >= 2),
                  "cancel_unconfirmed": and_(Order.status == S.PENDING_CANCEL, Order.updated_at < cutoff)}
    counts = db.session.execute(select(*(func.count(Order.id).filter(where) for where in conditions.values()))
                                .where(Order.status.in_((S.PENDING, S.SUBMITTING, S.PENDING_CANCEL)))).one()
    return dict(zip(conditions, counts))


def stuck_cancels(now: datetime | None = None) -> list[int]:
    """Orders in `pending_cancel` untouched for ORDERS_STUCK_AFTER_SECONDS (their cancel task gave up, or the
    broker is slow to confirm): asking the broker again is safe, a cancel is idempotent."""
    cutoff = (now or utcnow()) - stuck_after()
    return list(db.session.scalars(select(Order.id).where(Order.status == S.PENDING_CANCEL, Order.updated_at < cutoff)))


# --- reading ------------------------------------------------------------------------------------

def list_orders(user, *, status=None, cursor=None, limit=DEFAULT_PAGE_SIZE) -> tuple[list[Order], str | None]:
    """The user's orders, newest first, `limit` per page; `cursor` is the previous page's next_cursor.
    Raises ValidationFailed for an unknown status, a bad cursor or limit."""
    query = select(Order).where(Order.user_id == user.id)
    if status not in (None, ""):
        if status not in S._value2member_map_:
            raise _invalid("status", f"status must be one of {', '.join(S._value2member_map_)}.")
        query = query.where(Order.status == status)
    return paginate(query, Order.id, cursor, limit)


def paginate(query, id_column, cursor, limit) -> tuple[list, str | None]:
    """Keyset pagination on a descending integer id: (items, next_cursor)."""
    limit = _page_size(limit)
    if cursor not in (None, ""):
        if not str(cursor).isdigit() or len(str(cursor)) > 18 or int(cursor) > LARGEST_ROW_ID:
            raise _invalid("cursor", "cursor is not valid.")
        query = query.where(id_column < int(cursor))
    items = list(db.session.scalars(query.order_by(id_column.desc()).limit(limit + 1)))
    next_cursor = str(items[limit - 1].id) if len(items) > limit else None
    return items[:limit], next_cursor


def _page_size(unsafe_limit) -> int:
    try:
        limit = int(unsafe_limit)
    except (TypeError, ValueError):
        raise _invalid("limit", "limit must be a whole number.") from None
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise _invalid("limit", f"limit must be between 1 and {MAX_PAGE_SIZE}.")
    return limit


def decimal_text(value: Decimal | None) -> str | None:
    """A Decimal as a plain string ("101.25"), None stays None."""
    if value is None:
        return None
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def waiting_notice(order: Order) -> str | None:
    """What to tell the user about an order delayed on its way to or at its broker, else None.

    An order still `submitting` after a retry may already be at the broker while nothing confirms it: the
    user should look there before placing it again, not take it for lost."""
    if order.status == S.PENDING:
        return _execution_error_notice(order) if order.submit_attempts else _unsent_notice(order)
    if order.status == S.SUBMITTING and order.submit_attempts > 1:
        return _unconfirmed_notice(order)
    if order.status == S.PENDING_CANCEL and utcnow() - order.updated_at >= stuck_after():
        return (f"{_capitalized(broker_name(order))} has not confirmed the cancel yet; until it does, the order "
                "may still fill. Tradewarden asks again.")
    return None


def _execution_error_notice(order: Order) -> str:
    return (f"Tradewarden's execution of this order stopped at an internal error ({order.submit_attempts} so far); "
            "nothing reached the broker, and it is tried again.")


def _unsent_notice(order: Order) -> str | None:
    """For an order the worker has not taken up for longer than ORDERS_STUCK_AFTER_SECONDS: what that means."""
    waiting_since = order.created_at
    if utcnow() - waiting_since < stuck_after():
        return None
    deadline = send_deadline(order)
    ending = (f" If it is still unsent at {deadline:%H:%M:%S} UTC it is not sent at all." if deadline else
              " It is sent as soon as the worker runs.")
    return (f"Waiting for Tradewarden's worker since {waiting_since:%H:%M:%S} UTC; nothing has been sent to the "
            f"broker yet, and you can still cancel it.{ending}")


def _unconfirmed_notice(order: Order) -> str:
    broker, attempts = broker_name(order), order.submit_attempts
    if order.send_outcome_unknown:
        return (f"{_capitalized(broker)} has not confirmed this order after {attempts} send attempts. It may "
                f"already be at {broker}, so Tradewarden keeps asking instead of sending it again: check your "
                f"{broker} account before you place it again.")
    return f"Not at {broker} yet after {attempts} send attempts; Tradewarden keeps trying."


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def broker_name(order: Order) -> str:
    from utils.brokers.oauth import DISPLAY_NAMES
    broker = _connection_of(order).broker.value
    return DISPLAY_NAMES.get(broker, "the paper broker")


def order_to_dict(order: Order) -> dict:
    """An order in the DESIGN §7 shape, with its events and fills."""
    return {
        "id": order.id, "client_order_id": order.client_order_id, "symbol": order.symbol,
        "asset_type": str(order.asset_type), "side": str(order.side), "instruction": order.instruction,
        "quantity": decimal_text(order.quantity), "type": str(order.order_type),
        "limit_price": decimal_text(order.limit_price), "stop_price": decimal_text(order.stop_price),
        "time_in_force": str(order.time_in_force), "status": str(order.status),
        "filled_quantity": decimal_text(order.filled_quantity),
        "average_fill_price": decimal_text(order.average_fill_price), "fees": decimal_text(order.fees),
        "purpose": str(order.purpose), "trade_id": order.trade_id, "replaces_order_id": order.replaces_order_id,
        "broker_connection_id": order.broker_connection_id, "reject_reason": order.reject_reason,
        "stop_loss_price": decimal_text(order.stop_loss_price),
        "take_profit_price": decimal_text(order.take_profit_price),
        "trailing_stop_percent": decimal_text(order.trailing_stop_percent),
        "created_at": iso_utc(order.created_at), "updated_at": iso_utc(order.updated_at),
        "notice": waiting_notice(order),
        "events": [{"from_status": event.from_status, "to_status": event.to_status, "detail": event.detail,
                    "created_at": iso_utc(event.created_at)} for event in order.events],
        "fills": [{"id": fill.id, "quantity": decimal_text(fill.quantity), "price": decimal_text(fill.price),
                   "fee": decimal_text(fill.fee), "executed_at": iso_utc(fill.executed_at)} for fill in order.fills],
    }
