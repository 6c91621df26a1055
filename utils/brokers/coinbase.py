"""Coinbase Advanced Trade v3 adapter (wire format: /work/shared/reference/brokers.md §2).

Business rejections arrive as HTTP 200 with `success: false`; cancel is `batch_cancel`; `edit` only
amends good-til-cancelled limit orders (same order id); there is no stop-market order and no options,
so those are refused up front with BrokerRejected (422).
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from flask import current_app

from utils import market_data
from utils.brokers import oauth
from utils.brokers.base import AccountSnapshot, Broker, BrokerFill, BrokerOrder, OrderRequest, Position
from utils.brokers.transport import BrokerHttp
from utils.errors import (BrokerRejected, BrokerUnavailable, InsufficientFunds, InvalidSymbol, OrderNotCancelable,
                          OrderNotFound)
from utils.market_data import Quote

STATUS_MAP = {"FILLED": "filled", "CANCELLED": "cancelled", "EXPIRED": "expired", "FAILED": "rejected",
              "CANCEL_QUEUED": "pending_cancel"}
FIAT = {"USD", "USDC"}


def _json(response):
    return json.loads(response.text or "null", parse_float=Decimal)


class CoinbaseBroker(Broker):
    supports_stop_orders = False  # no stop-market at Coinbase: stops are watched by our sweep

    def __init__(self, connection, account=None):
        self.connection = connection
        self.account = account
        self.http = BrokerHttp(current_app.config["COINBASE_API_BASE_URL"], self._auth, "Coinbase")

    def _auth(self) -> dict:
        return {"Authorization": f"Bearer {oauth.fresh_access_token(self.connection)}"}

    def _get(self, path: str, **params):
        response = self.http.request("GET", path, params=params)
        if response.status_code == 404:
            raise OrderNotFound(_message(response))
        if not response.ok:
            raise BrokerRejected(_message(response))
        return _json(response)

    def linked_accounts(self) -> list[oauth.LinkedAccount]:
        """Coinbase wallets; the wallet uuid is the account number."""
        return [oauth.LinkedAccount(item["uuid"], None, item.get("name"), item.get("currency"))
                for item in self._get("/accounts", limit=250).get("accounts", [])]

    # --- orders -------------------------------------------------------------------------------

    def order_configuration(self, request: OrderRequest) -> dict:
        """The one `order_configuration` variant for our request; raises BrokerRejected for what Coinbase lacks."""
        if request.asset_type == "option":
            raise BrokerRejected("Coinbase does not trade options.", status=422)
        if request.order_type == "stop":
            raise BrokerRejected("Coinbase has no stop-market orders; use a stop-limit order instead.", status=422)
        size = format(request.quantity, "f")
        if request.order_type == "market":
            return {"market_market_ioc": {"base_size": size}}
        if request.order_type == "limit" and request.time_in_force == "gtc":
            return {"limit_limit_gtc": {"base_size": size, "limit_price": format(request.limit_price, "f"), "post_only": False}}
        if request.order_type == "limit":
            return {"limit_limit_gtd": {"base_size": size, "limit_price": format(request.limit_price, "f"),
                                        "end_time": _end_of_day(), "post_only": False}}
        direction = "STOP_DIRECTION_STOP_UP" if request.side == "buy" else "STOP_DIRECTION_STOP_DOWN"
        return {"stop_limit_stop_limit_gtc": {"base_size": size, "limit_price": format(request.limit_price, "f"),
                                              "stop_price": format(request.stop_price, "f"), "stop_direction": direction}}

    def place_order(self, request: OrderRequest) -> BrokerOrder:
        body = {"client_order_id": request.client_order_id, "product_id": request.symbol,
                "side": request.side.upper(), "order_configuration": self.order_configuration(request)}
        # Coinbase dedupes on client_order_id, so a retry after a lost answer cannot double the order.
        response = self.http.request("POST", "/orders", json=body, retry_unsafe=True)
        answer = _json(response) if response.ok else None
        if not answer or not answer.get("success"):
            raise _reject(answer or {}, response)
        return self.read_back(lambda: self.get_order(answer["success_response"]["order_id"]))

    def get_order(self, broker_order_id: str) -> BrokerOrder:
        order = self._get(f"/orders/historical/{broker_order_id}")["order"]
        return _to_order(order, self._all_fills(broker_order_id))

    def _all_fills(self, broker_order_id: str) -> list[dict]:
        """Every fill of the order, page by page (Coinbase pages fills with a cursor)."""
        fills, cursor = [], ""
        for _page in range(MAX_FILL_PAGES):
            page = self._get("/orders/historical/fills", order_ids=broker_order_id, limit=FILL_PAGE_SIZE,
                             **({"cursor": cursor} if cursor else {}))
            fills.extend(page.get("fills", []))
            cursor = page.get("cursor") or ""
            if not cursor:
                return fills
        raise BrokerUnavailable(f"Coinbase listed more than {MAX_FILL_PAGES} pages of fills for one order.")

    def find_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        for order in self._get("/orders/historical/batch", limit=250).get("orders", []):
            if order.get("client_order_id") == client_order_id:
                return self.get_order(order["order_id"])
        return None

    def cancel_order(self, broker_order_id: str) -> BrokerOrder:
        response = self.http.request("POST", "/orders/batch_cancel", json={"order_ids": [broker_order_id]},
                                     retry_unsafe=True)
        result = ((_json(response) or {}).get("results") or [{}])[0] if response.ok else {}
        if not result.get("success"):
            if result.get("failure_reason") == "UNKNOWN_CANCEL_ORDER":
                raise OrderNotFound()
            raise OrderNotCancelable(f"Coinbase refused the cancel ({result.get('failure_reason', 'unknown')}).")
        return self.get_order(broker_order_id)

    def replace_order(self, broker_order_id: str, request: OrderRequest) -> BrokerOrder:
        """Coinbase edits GTC limit orders in place: the returned order keeps its id."""
        if request.order_type != "limit" or request.time_in_force != "gtc":
            raise BrokerRejected("Coinbase can only change good-til-cancelled limit orders.", status=422)
        response = self.http.request("POST", "/orders/edit", json={
            "order_id": broker_order_id, "price": format(request.limit_price, "f"), "size": format(request.quantity, "f")})
        answer = _json(response) if response.ok else {}
        if not answer.get("success"):
            reason = ((answer.get("errors") or [{}])[0]).get("edit_failure_reason", "unknown")
            raise BrokerRejected(f"Coinbase refused the change ({reason}).", status=422)
        return self.get_order(broker_order_id)

    # --- market data and account --------------------------------------------------------------

    def get_quotes(self, symbols: list[str]) -> dict[str, Quote]:
        if not symbols:
            return {}
        books = self._get("/best_bid_ask", product_ids=list(symbols)).get("pricebooks", [])
        quotes = {book["product_id"]: _to_quote(book) for book in books if book.get("bids") and book.get("asks")}
        return {symbol: quote for symbol, quote in quotes.items() if quote is not None}

    def _wallets(self) -> list[dict]:
        return self._get("/accounts", limit=250).get("accounts", [])

    def get_account(self) -> AccountSnapshot:
        cash = sum((Decimal(w["available_balance"]["value"]) for w in self._wallets() if w["currency"] in FIAT),
                   Decimal("0"))
        return AccountSnapshot(cash=cash, buying_power=cash, equity=cash)

    def get_positions(self) -> list[Position]:
        return [Position(symbol=f"{w['currency']}-USD", asset_type="crypto",
                         quantity=Decimal(w["available_balance"]["value"]), average_price=Decimal("0"))
                for w in self._wallets()
                if w["currency"] not in FIAT and Decimal(w["available_balance"]["value"]) > 0]


FILL_PAGE_SIZE = 100
MAX_FILL_PAGES = 50  # 5,000 executions for one order; more is an answer we do not trust


def _to_order(order: dict, fills: list[dict]) -> BrokerOrder:
    config = next(iter(order.get("order_configuration", {}).values()), {})
    quantity = Decimal(str(config.get("base_size") or order.get("filled_size") or "0"))
    filled = Decimal(str(order.get("filled_size") or "0"))
    status = STATUS_MAP.get(order.get("status"), "partially_filled" if filled > 0 else "submitted")
    average = Decimal(str(order["average_filled_price"])) if filled > 0 else None
    return BrokerOrder(broker_order_id=order["order_id"], client_order_id=order.get("client_order_id"),
                       status=status, symbol=order["product_id"], quantity=quantity or filled,
                       filled_quantity=filled, average_fill_price=average,
                       fills=tuple(_to_fill(f) for f in fills),
                       reject_reason=(order.get("reject_message") or order.get("reject_reason")) or None
                       if status == "rejected" else None)


def _to_fill(fill: dict) -> BrokerFill:
    return BrokerFill(execution_id=str(fill.get("entry_id") or fill["trade_id"]), quantity=Decimal(str(fill["size"])),
                      price=Decimal(str(fill["price"])), fee=Decimal(str(fill.get("commission") or "0")),
                      executed_at=datetime.fromisoformat(fill["trade_time"].replace("Z", "+00:00")))


def _to_quote(book: dict) -> Quote | None:
    """The best bid and ask, or None without both or without the book's own time."""
    as_of = datetime.fromisoformat(book["time"].replace("Z", "+00:00")) if book.get("time") else None
    return market_data.broker_quote(book["product_id"], book["bids"][0]["price"], book["asks"][0]["price"], None, as_of)


def _reject(answer: dict, response):
    """An HTTP 200 `success:false` (or an HTTP error) → our domain error."""
    error = answer.get("error_response") or {}
    code, message = error.get("error", ""), error.get("message") or _message(response)
    if "INSUFFICIENT_FUND" in code:
        return InsufficientFunds(message)
    if "PRODUCT" in code:
        return InvalidSymbol(message)
    return BrokerRejected(f"Coinbase rejected the order: {message}")


def _message(response) -> str:
    try:
        body = json.loads(response.text or "{}")
    except ValueError:
        return f"Coinbase answered HTTP {response.status_code}."
    if isinstance(body.get("errors"), list) and body["errors"]:
        return str(body["errors"][0].get("message"))[:240]
    return str(body.get("message") or body.get("error") or f"Coinbase answered HTTP {response.status_code}.")[:240]


def _end_of_day() -> str:
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return tomorrow.strftime("%Y-%m-%dT%H:%M:%SZ")
