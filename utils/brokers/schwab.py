"""Charles Schwab Trader API adapter (wire format: /work/shared/reference/brokers.md §1).

Orders come back as 201 with the id in the `Location` header; replace (PUT) creates a new order and
cancels the old one; fills are read from `orderActivityCollection`; quotes are one batched call.
Schwab has no client order id field, so `find_order_by_client_id` cannot look orders up (returns None);
before a resend, `find_sent_order` matches the order's details among the account's recent orders instead.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from flask import current_app

from utils import market_data
from utils.brokers import oauth
from utils.brokers.base import AccountSnapshot, Broker, BrokerFill, BrokerOrder, OrderRequest, Position
from utils.brokers.transport import BrokerHttp
from utils.errors import (BrokerRejected, InsufficientFunds, InvalidSymbol, OrderNotCancelable, OrderNotFound,
                          ValidationFailed)
from utils.market_data import Quote

ORDER_ID_IN_LOCATION = re.compile(r"accounts/(\w+)/orders/(\d+)")
STATUS_MAP = {"FILLED": "filled", "CANCELED": "cancelled", "REJECTED": "rejected", "EXPIRED": "expired",
              "REPLACED": "replaced", "PENDING_CANCEL": "pending_cancel"}
ORDER_TYPES = {"market": "MARKET", "limit": "LIMIT", "stop": "STOP", "stop_limit": "STOP_LIMIT"}


def _json(response):
    return json.loads(response.text or "null", parse_float=Decimal)


def _whole(quantity: Decimal) -> int:
    if quantity != quantity.to_integral_value() or quantity <= 0:
        raise ValidationFailed("Schwab takes whole, positive share and contract quantities.")
    return int(quantity)


class SchwabBroker(Broker):
    supports_stop_orders = True
    keeps_client_order_id = False

    def __init__(self, connection, account=None):
        self.connection = connection
        self.account = account or (connection.accounts[0] if connection.accounts else None)
        self.http = BrokerHttp(current_app.config["SCHWAB_API_BASE_URL"], self._auth, "Schwab")

    def _auth(self) -> dict:
        return {"Authorization": f"Bearer {oauth.fresh_access_token(self.connection)}", "Accept": "application/json"}

    @property
    def _orders_path(self) -> str:
        return f"/trader/v1/accounts/{self.account.account_hash}/orders"

    # --- linking ------------------------------------------------------------------------------

    def linked_accounts(self) -> list[oauth.LinkedAccount]:
        """Every account number with its hashValue (the id all other calls use), and its type."""
        found = []
        for item in _json(self.http.request("GET", "/trader/v1/accounts/accountNumbers")) or []:
            details = self.http.request("GET", f"/trader/v1/accounts/{item['hashValue']}")
            kind = (_json(details) or {}).get("securitiesAccount", {}).get("type") if details.ok else None
            found.append(oauth.LinkedAccount(str(item["accountNumber"]), item["hashValue"], "Schwab brokerage", kind))
        return found

    # --- orders -------------------------------------------------------------------------------

    def order_body(self, request: OrderRequest) -> dict:
        """Schwab's order JSON for our request (prices as strings, as Schwab asks)."""
        body = {"orderType": ORDER_TYPES[request.order_type], "session": "NORMAL",
                "duration": "GOOD_TILL_CANCEL" if request.time_in_force == "gtc" else "DAY",
                "orderStrategyType": "SINGLE",
                "orderLegCollection": [{"instruction": request.instruction.upper(), "quantity": _whole(request.quantity),
                                        "instrument": {"symbol": _wire_symbol(request),
                                                       "assetType": "OPTION" if request.asset_type == "option"
                                                       else "EQUITY"}}]}
        if request.limit_price is not None and request.order_type in ("limit", "stop_limit"):
            body["price"] = format(request.limit_price, "f")
        if request.stop_price is not None and request.order_type in ("stop", "stop_limit"):
            body["stopPrice"] = format(request.stop_price, "f")
        if request.asset_type == "option":
            body["complexOrderStrategyType"] = "NONE"
        return body

    def place_order(self, request: OrderRequest) -> BrokerOrder:
        response = self.http.request("POST", self._orders_path, json=self.order_body(request))
        return self._created(response, request)

    def replace_order(self, broker_order_id: str, request: OrderRequest) -> BrokerOrder:
        response = self.http.request("PUT", f"{self._orders_path}/{broker_order_id}", json=self.order_body(request))
        return self._created(response, request)

    def _created(self, response, request: OrderRequest) -> BrokerOrder:
        if response.status_code != 201:
            raise _order_error(response)
        match = ORDER_ID_IN_LOCATION.search(response.headers.get("Location", ""))
        if match:
            return self.read_back(lambda: self.get_order(match.group(2), request.client_order_id))
        return self.read_back(lambda: self._latest_matching(request))  # no Location when it filled at once

    def _latest_matching(self, request: OrderRequest) -> BrokerOrder:
        body = self.order_body(request)
        for order in reversed(self._orders_entered_since(datetime.now(timezone.utc) - timedelta(minutes=5))):
            if _same_order(order, body):
                return _to_order(order, request.client_order_id)
        raise OrderNotFound("Schwab accepted the order but did not say which one it is.")

    def find_sent_order(self, request: OrderRequest, sent_since: datetime,
                        known_broker_ids: frozenset[str]) -> BrokerOrder | None:
        """The oldest order with our request's details entered since `sent_since` that is not already ours."""
        body = self.order_body(request)
        for order in self._orders_entered_since(sent_since - timedelta(minutes=1)):  # a minute for clock skew
            if str(order["orderId"]) not in known_broker_ids and _same_order(order, body):
                return _to_order(order, request.client_order_id)
        return None

    def _orders_entered_since(self, since: datetime) -> list[dict]:
        """The account's orders entered since `since`, oldest first."""
        now = datetime.now(timezone.utc)
        stamp = "%Y-%m-%dT%H:%M:%S.000Z"
        response = self.http.request("GET", self._orders_path, params={
            "fromEnteredTime": since.astimezone(timezone.utc).strftime(stamp),
            "toEnteredTime": (now + timedelta(minutes=1)).strftime(stamp)})
        if not response.ok:
            raise _order_error(response)
        return sorted(_json(response) or [], key=lambda order: int(order["orderId"]))

    def get_order(self, broker_order_id: str, client_order_id: str | None = None) -> BrokerOrder:
        response = self.http.request("GET", f"{self._orders_path}/{broker_order_id}")
        if not response.ok:
            raise _order_error(response)
        return _to_order(_json(response), client_order_id)

    def find_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        return None  # Schwab orders carry no client id; the caller must treat "unknown" as not received

    def cancel_order(self, broker_order_id: str) -> BrokerOrder:
        response = self.http.request("DELETE", f"{self._orders_path}/{broker_order_id}")
        if response.status_code == 404:
            raise OrderNotFound()
        if not response.ok:
            raise OrderNotCancelable(_message(response))
        return self.get_order(broker_order_id)

    # --- market data and account --------------------------------------------------------------

    def get_quotes(self, symbols: list[str]) -> dict[str, Quote]:
        if not symbols:
            return {}
        response = self.http.request("GET", "/marketdata/v1/quotes", params={
            "symbols": ",".join(symbols), "fields": "quote,reference", "indicative": "false"})
        if not response.ok:
            raise BrokerRejected(_message(response))
        quotes = {symbol: _to_quote(symbol, item) for symbol, item in (_json(response) or {}).items()
                  if symbol != "errors" and "quote" in item}
        return {symbol: quote for symbol, quote in quotes.items() if quote is not None}

    def _account_body(self) -> dict:
        response = self.http.request("GET", f"/trader/v1/accounts/{self.account.account_hash}",
                                     params={"fields": "positions"})
        if not response.ok:
            raise BrokerRejected(_message(response))
        return _json(response)["securitiesAccount"]

    def get_account(self) -> AccountSnapshot:
        balances = self._account_body().get("currentBalances", {})
        cash = balances.get("cashBalance", balances.get("totalCash", balances.get("availableFunds", 0)))
        power = balances.get("buyingPower", balances.get("cashAvailableForTrading", cash))
        return AccountSnapshot(cash=Decimal(str(cash)), buying_power=Decimal(str(power)),
                               equity=Decimal(str(balances.get("equity", balances.get("liquidationValue", cash)))))

    def get_positions(self) -> list[Position]:
        positions = []
        for item in self._account_body().get("positions", []):
            quantity = Decimal(str(item.get("longQuantity", 0))) - Decimal(str(item.get("shortQuantity", 0)))
            instrument = item["instrument"]
            positions.append(Position(symbol=_our_symbol(instrument),
                                      asset_type="option" if instrument.get("assetType") == "OPTION" else "equity",
                                      quantity=quantity, average_price=Decimal(str(item.get("averagePrice", 0)))))
        return positions


def _wire_symbol(request: OrderRequest) -> str:
    """Options go to Schwab in the padded OCC form (root left-justified to 6 characters)."""
    return market_data.occ_padded(request.symbol) if request.asset_type == "option" else request.symbol


def _our_symbol(instrument: dict) -> str:
    """Schwab's instrument symbol in our canonical form (options unpadded)."""
    symbol = instrument["symbol"]
    return market_data.canonical_symbol(symbol) if instrument.get("assetType") == "OPTION" else symbol


def _same_order(order: dict, body: dict) -> bool:
    """Whether Schwab's `order` is the order `body` asks for: type, instruction, symbol, quantity and prices.
    The account's list also holds orders placed at Schwab itself; one that is not a single-leg order (an
    OCO or trigger parent carries no legs of its own, only childOrderStrategies) is never ours."""
    legs, wanted = order.get("orderLegCollection") or [], body["orderLegCollection"][0]
    if len(legs) != 1:
        return False
    leg = legs[0]
    return (order.get("orderType") == body["orderType"] and leg.get("instruction") == wanted["instruction"]
            and (leg.get("instrument") or {}).get("symbol") == wanted["instrument"]["symbol"]
            and _decimal_or_none(order.get("quantity")) == Decimal(str(wanted["quantity"]))
            and _decimal_or_none(order.get("price")) == _decimal_or_none(body.get("price"))
            and _decimal_or_none(order.get("stopPrice")) == _decimal_or_none(body.get("stopPrice")))


def _decimal_or_none(value) -> Decimal | None:
    return None if value in (None, "") else Decimal(str(value))


def _to_order(body: dict, client_order_id: str | None) -> BrokerOrder:
    quantity, filled = Decimal(str(body.get("quantity", 0))), Decimal(str(body.get("filledQuantity", 0)))
    fills = tuple(_fills(body))
    status = STATUS_MAP.get(body.get("status"), "partially_filled" if 0 < filled < quantity else "submitted")
    listed = sum((fill.quantity for fill in fills), Decimal("0"))
    average = (sum(f.quantity * f.price for f in fills) / listed) if listed and listed == filled else None
    replaced_by = (body.get("replacingOrderCollection") or [{}])[0].get("orderId")
    return BrokerOrder(broker_order_id=str(body["orderId"]), client_order_id=client_order_id, status=status,
                       symbol=_our_symbol(body["orderLegCollection"][0]["instrument"]), quantity=quantity,
                       filled_quantity=filled, average_fill_price=average, fills=fills,
                       reject_reason=body.get("statusDescription") if status == "rejected" else None,
                       replaced_by=str(replaced_by) if replaced_by else None)


def _fills(body: dict):
    """Each execution leg; Schwab gives executions no id, so one is made from the order id and the
    execution's place in the order's activity list (Schwab only ever appends to that list)."""
    for number, activity in enumerate(body.get("orderActivityCollection") or []):
        if activity.get("activityType") != "EXECUTION":
            continue
        for index, leg in enumerate(activity.get("executionLegs") or []):
            yield BrokerFill(execution_id=f"{body['orderId']}-{number}-{index}",
                             quantity=Decimal(str(leg["quantity"])), price=Decimal(str(leg["price"])),
                             fee=Decimal("0"), executed_at=_parse_time(leg.get("time")))


def _parse_time(value: str | None) -> datetime:
    if not value:
        return datetime.now(timezone.utc)
    return datetime.fromisoformat(value).astimezone(timezone.utc)  # e.g. 2021-01-01T12:01:01.123+0000


def _to_quote(symbol: str, item: dict) -> Quote | None:
    """Schwab's quote, or None when it lacks a bid, an ask or its own time (never a made-up price or time)."""
    quote = item["quote"]
    millis = quote.get("quoteTime") or quote.get("tradeTime")
    as_of = datetime.fromtimestamp(int(millis) / 1000, timezone.utc) if millis else None
    return market_data.broker_quote(symbol, quote.get("bidPrice"), quote.get("askPrice"),
                                    quote.get("lastPrice", quote.get("mark")), as_of)


def _message(response) -> str:
    try:
        body = json.loads(response.text or "{}")
    except ValueError:
        return f"Schwab answered HTTP {response.status_code}."
    if isinstance(body.get("errors"), list) and body["errors"] and isinstance(body["errors"][0], dict):
        return str(body["errors"][0].get("detail") or body["errors"][0].get("title"))[:240]
    return str(body.get("message") or f"Schwab answered HTTP {response.status_code}.")[:240]


def _order_error(response):
    """Schwab's ServiceError bodies → our domain errors."""
    message = _message(response)
    if response.status_code == 404:
        return OrderNotFound(message)
    lowered = message.lower()
    if "insufficient" in lowered or "buying power" in lowered:
        return InsufficientFunds(message)
    if "symbol" in lowered and ("not valid" in lowered or "invalid" in lowered):
        return InvalidSymbol(message)
    return BrokerRejected(message)


class SchwabQuoteSource:
    """MARKET_DATA_SOURCE=schwab: quotes read through a linked Schwab account.

    Rule: the oldest connected Schwab link of an admin user. Raises DependencyUnavailable when none exists.
    """

    name = "schwab"

    def fetch(self, symbols: list[str]) -> dict[str, Quote]:
        from utils.market_data import asset_type_of, occ_padded
        wire = {(occ_padded(s) if asset_type_of(s) == "option" else s): s for s in symbols}
        quotes = SchwabBroker(_quote_connection()).get_quotes(list(wire))
        return {wire[key]: Quote(wire[key], q.bid, q.ask, q.last, q.as_of) for key, q in quotes.items() if key in wire}


def _quote_connection():
    from sqlalchemy import select

    from models import BrokerConnection, ConnectionStatus, User
    from models import Broker as BrokerName
    from utils.errors import DependencyUnavailable
    from utils.extensions import db
    connection = db.session.scalar(
        select(BrokerConnection).join(User, User.id == BrokerConnection.user_id)
        .where(BrokerConnection.broker == BrokerName.SCHWAB, BrokerConnection.status == ConnectionStatus.CONNECTED,
               User.is_admin.is_(True)).order_by(BrokerConnection.id).limit(1))
    if connection is None:
        raise DependencyUnavailable("MARKET_DATA_SOURCE=schwab needs an admin to link a Schwab account.",
                                    code="market_data_unavailable")
    return connection
