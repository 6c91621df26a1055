"""Position check: does each linked broker still hold what the user's open trades say it holds?

A position sold at Schwab's, Coinbase's or E*TRADE's own site is invisible to Tradewarden: the trade stays
open, its exposure counts in the risk checks, and its stop would one day send an exit the broker refuses.
Beat's `positions.check` (every `POSITION_CHECK_SECONDS`, default 300) asks each linked broker for its
positions and compares them, per symbol, with the open trades on that link. A shortfall (the broker holds
less, in the trades' direction, than they add up to) seen at two checks in a row is shown on the dashboard,
with the way out: record the sale with *Closed at broker…*. A broker holding more is fine (shares bought
outside Tradewarden). Symbols with an order or a close under way are left out of that check, since their
fills may not be recorded yet. Read only: nothing is closed on this evidence. The paper broker keeps its
positions in our own database and is not checked.

The result per link is JSON at `positions:check:<connection id>` in the cache Redis.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from decimal import Decimal

import redis as redis_lib
from sqlalchemy import select

from models import (Broker, BrokerConnection, ConnectionStatus, Order, OrderPurpose, OrderType, Trade, TradeSide,
                    TradeStatus)
from utils import risk, trades
from utils.brokers.oauth import DISPLAY_NAMES
from utils.dbtypes import iso_utc, utcnow
from utils.errors import DomainError
from utils.extensions import db

log = logging.getLogger("tradewarden.positions")

KEY = "positions:check:{}"
CONFIRMING_CHECKS = 2  # a shortfall is shown once seen at this many checks in a row
KEEP_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Shortfall:
    symbol: str
    ours: Decimal    # what the open trades hold, signed (negative for short)
    at_broker: Decimal  # what the broker reports, signed


def shortfalls(ours: dict[str, Decimal], broker: dict[str, Decimal]) -> list[Shortfall]:
    """The symbols where the broker holds less, in the trades' direction, than the trades add up to. Pure."""
    found = []
    for symbol, held in sorted(ours.items()):
        reported = broker.get(symbol, Decimal(0))
        if (held > 0 and reported < held) or (held < 0 and reported > held):
            found.append(Shortfall(symbol, held, reported))
    return found


def held_by_trades(connection_id: int) -> dict[str, Decimal]:
    """Signed quantity per symbol of the link's open trades, leaving out symbols where something is under way
    (a pending or closing trade, or a working order other than a resting broker-side stop)."""
    rows = db.session.execute(select(Trade.symbol, Trade.side, Trade.status, Trade.quantity, Trade.exit_quantity)
                              .where(Trade.broker_connection_id == connection_id,
                                     Trade.status.in_((TradeStatus.PENDING, TradeStatus.OPEN,
                                                       TradeStatus.CLOSING)))).all()
    busy = {symbol for symbol, _side, status, _quantity, _exited in rows if status != TradeStatus.OPEN}
    busy |= set(db.session.scalars(select(Order.symbol).where(
        Order.broker_connection_id == connection_id, Order.status.in_(trades.WORKING_ORDER_STATUSES),
        ~((Order.purpose == OrderPurpose.STOP_LOSS) & (Order.order_type == OrderType.STOP)))))
    held: dict[str, Decimal] = {}
    for symbol, side, _status, quantity, exited in rows:
        if symbol not in busy:
            sign = 1 if side == TradeSide.LONG else -1
            held[symbol] = held.get(symbol, Decimal(0)) + sign * (quantity - exited)
    return held


def check_connection(connection: BrokerConnection) -> list[Shortfall]:
    """Compare one link's positions with its open trades and store the result; returns the shortfalls."""
    from utils.brokers import get_broker
    ours = held_by_trades(connection.id)
    if not ours:
        found = []
    else:
        reported: dict[str, Decimal] = {}
        for position in get_broker(connection).get_positions():
            reported[position.symbol] = reported.get(position.symbol, Decimal(0)) + position.quantity
        found = shortfalls(ours, reported)
    _store(connection.id, found)
    return found


def _store(connection_id: int, found: list[Shortfall]) -> None:
    previous = {item["symbol"]: item for item in (last_check(connection_id) or {}).get("shortfalls", [])}
    items = [{"symbol": item.symbol, "ours": str(item.ours), "at_broker": str(item.at_broker),
              "checks": previous.get(item.symbol, {}).get("checks", 0) + 1} for item in found]
    record = {"checked_at": iso_utc(utcnow()), "shortfalls": items}
    risk.cache_redis().set(KEY.format(connection_id), json.dumps(record), ex=KEEP_SECONDS)


def last_check(connection_id: int) -> dict | None:
    try:
        stored = risk.cache_redis().get(KEY.format(connection_id))
    except redis_lib.RedisError:
        return None
    return json.loads(stored) if stored else None


def check_all() -> dict:
    """Beat: check every connected link that is not the paper broker; one link's failure skips only it."""
    connection_ids = db.session.scalars(select(BrokerConnection.id).where(
        BrokerConnection.broker != Broker.PAPER, BrokerConnection.status == ConnectionStatus.CONNECTED)
        .order_by(BrokerConnection.id)).all()
    counts = {"checked": 0, "shortfalls": 0, "failed": 0}
    for connection_id in connection_ids:
        try:
            counts["shortfalls"] += len(check_connection(db.session.get(BrokerConnection, connection_id)))
            counts["checked"] += 1
        except DomainError as error:
            counts["failed"] += 1
            log.warning("positions of broker connection %s not checked: %s", connection_id, error.message)
        except Exception:  # noqa: BLE001 — an answer we cannot read from one broker must not stop the others
            counts["failed"] += 1
            log.exception("positions of broker connection %s not checked", connection_id)
        finally:
            db.session.rollback()  # read only
    return counts


def warnings_for(user) -> list[dict]:
    """The user's confirmed shortfalls, one per link and symbol, for the dashboard."""
    connections = db.session.scalars(select(BrokerConnection).where(
        BrokerConnection.user_id == user.id, BrokerConnection.broker != Broker.PAPER).order_by(BrokerConnection.id))
    found = []
    for connection in connections:
        record = last_check(connection.id) or {}
        found += [{"broker": DISPLAY_NAMES.get(str(connection.broker), str(connection.broker)),
                   "connection_id": connection.id,
                   "checked_at": record["checked_at"], **item}
                  for item in record.get("shortfalls", []) if item["checks"] >= CONFIRMING_CHECKS]
    return found
