"""Fake Charles Schwab: OAuth 2.0 (authlib, PKCE S256 required, 30-min access, 7-day refresh cap,
no rotation) plus the Trader API and market-data quotes in Schwab's wire format."""
from __future__ import annotations

import itertools
import threading
import uuid
from collections import Counter
from datetime import datetime, timezone

from flask import Flask, Response, jsonify, request

from tests.fakes.common import FailureScript, mount_control
from tests.fakes.oauth2_provider import FakeOAuth2Provider

CLIENT_ID, CLIENT_SECRET = "schwab-fake-app-key", "schwab-fake-app-secret"
ACCOUNTS = [{"accountNumber": "123456789", "hashValue": "E5B3F0A1C2D4HASH"},
            {"accountNumber": "987654321", "hashValue": "A9C8B7D6E5F4HASH"}]
PRICES = {"AAPL": "190.00", "MSFT": "410.00", "SPY": "520.00"}
TERMINAL = {"FILLED", "CANCELED", "REJECTED", "EXPIRED", "REPLACED"}


class SchwabState:
    def __init__(self):
        self.lock = threading.RLock()
        self.failures = FailureScript()
        self.lost_answers = FailureScript()  # calls that are carried out, then answered with this status
        self.reset()

    def reset(self):
        with self.lock:
            self.orders: dict[int, dict] = {}
            self.ids = itertools.count(1000000001)
            self.api_calls: Counter = Counter()


def service_error(status: int, message: str) -> Response:
    response = jsonify({"message": message, "errors": [message]})
    response.status_code = status
    response.headers["Schwab-Client-CorrelId"] = str(uuid.uuid4())
    return response


def create_app(redirect_uris: list[str]) -> Flask:
    app = Flask("fake_schwab")
    provider = FakeOAuth2Provider(
        app, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=redirect_uris,
        auth_methods=("client_secret_basic",), access_ttl=1800, rotate_refresh=False,
        refresh_cap_seconds=7 * 86400, refresh_cap_error="invalid_client", id_token=True,
        paths={"authorize": "/v1/oauth/authorize", "token": "/v1/oauth/token", "revoke": "/v1/oauth/revoke"})
    state = SchwabState()
    app.config.update(provider=provider, state=state)
    mount_control(app, provider, state)

    @app.before_request
    def guard():
        if not request.path.startswith(("/trader/", "/marketdata/")):
            return None
        state.api_calls[request.method + " " + request.url_rule.rule if request.url_rule else request.path] += 1
        scripted = state.failures.take()
        if scripted:
            response = service_error(scripted, "Scripted failure")
            response.headers["Retry-After"] = "0"
            return response
        if not provider.bearer_valid(request.headers.get("Authorization")):
            return jsonify({"errors": [{"id": str(uuid.uuid4()), "status": 401, "title": "Unauthorized",
                                        "detail": "Client not authorized"}]}), 401
        return None

    @app.after_request
    def lose_answer(response):
        """A gateway error after Schwab acted (the order exists, the caller hears 5xx): `lost_answers`."""
        if request.path.startswith("/trader/"):
            lost = state.lost_answers.take()
            if lost:
                return service_error(lost, "Gateway timeout")
        return response

    @app.get("/trader/v1/accounts/accountNumbers")
    def account_numbers():
        return jsonify(ACCOUNTS)

    @app.get("/trader/v1/accounts/<account_hash>")
    def account(account_hash):
        number = _number_for(account_hash)
        if not number:
            return service_error(404, "Account not found")
        return jsonify({"securitiesAccount": {
            "type": "MARGIN", "accountNumber": number, "roundTrips": 0, "isDayTrader": False,
            "positions": [{"shortQuantity": 0, "longQuantity": 10, "averagePrice": 150.1, "marketValue": 1900.0,
                           "instrument": {"assetType": "EQUITY", "symbol": "AAPL", "cusip": "037833100"}},
                          {"shortQuantity": 0, "longQuantity": 2, "averagePrice": 3.15, "marketValue": 700.0,
                           "instrument": {"assetType": "OPTION", "symbol": "AAPL  240517P00190000",
                                          "putCall": "PUT", "underlyingSymbol": "AAPL"}}],
            "currentBalances": {"buyingPower": 50000, "availableFunds": 25000, "equity": 100000,
                                "cashBalance": 25000}}})

    @app.post("/trader/v1/accounts/<account_hash>/orders")
    def place(account_hash):
        if not _number_for(account_hash):
            return service_error(400, "Account key does not belong to user")
        return _accept(account_hash, request.get_json(force=True), replaces=None)

    @app.get("/trader/v1/accounts/<account_hash>/orders/<int:order_id>")
    def get_order(account_hash, order_id):
        order = state.orders.get(order_id)
        if not order or order["_hash"] != account_hash:
            return service_error(404, "Order not found")
        return jsonify(_public(order))

    @app.get("/trader/v1/accounts/<account_hash>/orders")
    def list_orders(account_hash):
        if not request.args.get("fromEnteredTime") or not request.args.get("toEnteredTime"):
            return service_error(400, "fromEnteredTime and toEnteredTime are required")
        return jsonify([_public(o) for o in state.orders.values() if o["_hash"] == account_hash])

    @app.delete("/trader/v1/accounts/<account_hash>/orders/<int:order_id>")
    def cancel(account_hash, order_id):
        with state.lock:
            order = state.orders.get(order_id)
            if not order or order["_hash"] != account_hash:
                return service_error(404, "Order not found")
            if order["status"] in TERMINAL:
                return service_error(400, f"Order {order_id} cannot be canceled in status {order['status']}")
            order.update(status="CANCELED", cancelable=False, closeTime=_now())
        return Response(status=200)

    @app.put("/trader/v1/accounts/<account_hash>/orders/<int:order_id>")
    def replace(account_hash, order_id):
        with state.lock:
            order = state.orders.get(order_id)
            if not order or order["_hash"] != account_hash:
                return service_error(404, "Order not found")
            if order["status"] in TERMINAL:
                return service_error(400, f"Order {order_id} cannot be replaced in status {order['status']}")
            return _accept(account_hash, request.get_json(force=True), replaces=order)

    @app.get("/marketdata/v1/quotes")
    def quotes():
        symbols = [s.strip().upper() for s in request.args.get("symbols", "").split(",") if s.strip()]
        body, invalid = {}, []
        for symbol in symbols:
            if symbol in PRICES:
                price = float(PRICES[symbol])
                body[symbol] = {"assetMainType": "EQUITY", "symbol": symbol, "realtime": True,
                                "quote": {"lastPrice": price, "bidPrice": price - 0.01, "askPrice": price + 0.01,
                                          "mark": price, "quoteTime": _epoch_ms(), "tradeTime": _epoch_ms()}}
            else:
                invalid.append(symbol)
        if invalid:
            body["errors"] = {"invalidSymbols": invalid}
        return jsonify(body)

    def _accept(account_hash, body, replaces):
        error = _validate(body)
        if error:
            return error
        leg = body["orderLegCollection"][0]
        symbol, quantity = leg["instrument"]["symbol"], float(leg["quantity"])
        with state.lock:
            order_id = next(state.ids)
            order = {"_hash": account_hash, "orderId": order_id, "accountNumber": int(_number_for(account_hash)),
                     "status": "WORKING", "enteredTime": _now(), "quantity": quantity, "filledQuantity": 0.0,
                     "remainingQuantity": quantity, "orderType": body["orderType"], "duration": body.get("duration"),
                     "price": body.get("price"), "stopPrice": body.get("stopPrice"), "cancelable": True,
                     "editable": True, "orderLegCollection": [{"legId": 1, **leg}], "orderActivityCollection": []}
            if body["orderType"] == "MARKET":
                _fill(order, float(PRICES[symbol]))
            state.orders[order_id] = order
            if replaces:
                replaces.update(status="REPLACED", cancelable=False, closeTime=_now())
                replaces["replacingOrderCollection"] = [{"orderId": order_id}]
        response = Response(status=201)
        if not (body["orderType"] == "MARKET" and symbol == "SPY"):  # an instant fill may omit Location
            response.headers["Location"] = f"{request.host_url}trader/v1/accounts/{account_hash}/orders/{order_id}"
        return response

    def _validate(body):
        try:
            leg = body["orderLegCollection"][0]
            symbol, quantity = leg["instrument"]["symbol"], float(leg["quantity"])
            order_type = body["orderType"]
        except (KeyError, IndexError, TypeError, ValueError):
            return service_error(400, "Invalid order body")
        if symbol not in PRICES:
            return service_error(400, f"Symbol {symbol} is not valid")
        if order_type in ("LIMIT", "STOP_LIMIT") and not isinstance(body.get("price"), str):
            return service_error(400, "price is required as a string")
        if quantity * float(PRICES[symbol]) > 1_000_000:
            return service_error(400, "Order rejected: insufficient buying power")
        return None

    def _number_for(account_hash):
        return next((a["accountNumber"] for a in ACCOUNTS if a["hashValue"] == account_hash), None)

    return app


def _fill(order: dict, price: float) -> None:
    """Fill a market order in two executions (to exercise fill aggregation)."""
    quantity = order["quantity"]
    first = quantity // 2 or quantity
    legs = [first, quantity - first] if quantity - first else [first]
    for index, part in enumerate(legs):
        order["orderActivityCollection"].append({
            "activityType": "EXECUTION", "executionType": "FILL",
            "quantity": part, "orderRemainingQuantity": quantity - sum(legs[:index + 1]),
            "executionLegs": [{"legId": 1, "quantity": part, "mismarkedQuantity": 0.0, "price": price,
                               "time": _now()}]})
    order.update(status="FILLED", filledQuantity=quantity, remainingQuantity=0.0, cancelable=False,
                 editable=False, closeTime=_now())


def _public(order: dict) -> dict:
    return {key: value for key, value in order.items() if not key.startswith("_")}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+0000")


def _epoch_ms() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1000)


# --- a connection linked before the test starts ----------------------------------------------------

LINKED_ACCESS_TOKEN, LINKED_REFRESH_TOKEN = "linked-access-token", "linked-refresh-token"


def settings_for(base_url: str) -> dict:
    """Tradewarden's SCHWAB_* settings pointing at a fake Schwab served at `base_url`."""
    return {"SCHWAB_CLIENT_ID": CLIENT_ID, "SCHWAB_CLIENT_SECRET": CLIENT_SECRET,
            "SCHWAB_AUTHORIZE_URL": f"{base_url}/v1/oauth/authorize", "SCHWAB_TOKEN_URL": f"{base_url}/v1/oauth/token",
            "SCHWAB_API_BASE_URL": base_url, "PUBLIC_BASE_URL": "http://localhost"}


def linked_server(port: int):
    """The fake Schwab on `port` (not started), already knowing the LINKED_* token pair."""
    from tests.fakes.oauth2_provider import FakeToken
    from tests.fakes.runner import ThreadedServer
    fake_app = create_app(["http://localhost/brokers/schwab/callback"])
    provider = fake_app.config["provider"]
    provider.tokens.append(FakeToken(CLIENT_ID, LINKED_ACCESS_TOKEN, LINKED_REFRESH_TOKEN, "", provider.now(), 3600,
                                     provider.now()))
    return ThreadedServer(fake_app, port=port)


def add_oco_order(state, account_hash: str, order_id: int) -> None:
    """An OCO pair the account holder placed at Schwab themselves, as Schwab lists it: the parent carries
    no orderLegCollection of its own, only two childOrderStrategies (a take-profit limit and a stop)."""
    def child(order_type: str, price_field: str, price: float, child_id: int) -> dict:
        return {"orderId": child_id, "orderStrategyType": "SINGLE", "orderType": order_type, "session": "NORMAL",
                "duration": "GOOD_TILL_CANCEL", "status": "WORKING", "quantity": 5.0, price_field: price,
                "enteredTime": _now(), "orderLegCollection": [{"legId": 1, "instruction": "SELL", "quantity": 5.0,
                                                               "instrument": {"symbol": "MSFT", "assetType": "EQUITY"}}]}
    with state.lock:
        state.orders[order_id] = {"_hash": account_hash, "orderId": order_id, "orderStrategyType": "OCO",
                                  "status": "WORKING", "enteredTime": _now(), "cancelable": True, "editable": False,
                                  "childOrderStrategies": [child("LIMIT", "price", 450.0, order_id + 1),
                                                           child("STOP", "stopPrice", 380.0, order_id + 2)]}


def add_unreadable_order(state, account_hash: str, order_id: int) -> None:
    """A listed order whose quantity is not a number, and otherwise like a market buy of AAPL: an answer
    Tradewarden cannot read, so it cannot tell whether this is its own lost order."""
    with state.lock:
        state.orders[order_id] = {"_hash": account_hash, "orderId": order_id, "orderStrategyType": "SINGLE",
                                  "orderType": "MARKET", "status": "WORKING", "enteredTime": _now(),
                                  "quantity": "ten", "orderLegCollection": [
                                      {"legId": 1, "instruction": "BUY", "quantity": "ten",
                                       "instrument": {"symbol": "AAPL", "assetType": "EQUITY"}}]}
