"""Fake E*TRADE: an OAuth 1.0a provider (authlib's rfc5849 server: request token with `oob`, authorize with
`key` & `token`, verifier, access token, renew, revoke; 2-h inactivity; midnight-ET expiry) and the v1
accounts/orders/quotes API with `.json` responses, mandatory preview, and a 400-with-HTML rate limit."""
from __future__ import annotations

import itertools
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from authlib.common.security import generate_token
from authlib.oauth1 import ClientMixin, TemporaryCredentialMixin, TokenCredentialMixin
from authlib.oauth1.rfc5849 import AuthorizationServer, ResourceProtector
from authlib.oauth1.rfc5849.errors import OAuth1Error
from flask import Flask, Response, jsonify, request

from tests.fakes.common import FailureScript, html_rate_limit

os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")

CONSUMER_KEY, CONSUMER_SECRET = "etrade-fake-consumer-key", "etrade-fake-consumer-secret"
EASTERN = ZoneInfo("America/New_York")
ACCOUNTS = [{"accountId": "840104290", "accountIdKey": "JIdOIAcSpwR1Jva7RQBraQ", "accountMode": "MARGIN",
             "accountDesc": "INDIVIDUAL", "accountName": "Brokerage", "accountType": "INDIVIDUAL",
             "institutionType": "BROKERAGE", "accountStatus": "ACTIVE"}]
PRICES = {"AAPL": 190.0, "MSFT": 410.0}


@dataclass
class Consumer(ClientMixin):
    key: str
    secret: str

    def get_default_redirect_uri(self):
        return "oob"

    def get_client_secret(self):
        return self.secret

    def get_rsa_public_key(self):
        return None


@dataclass
class Credential(TemporaryCredentialMixin, TokenCredentialMixin):
    client_id: str
    oauth_token: str
    oauth_token_secret: str
    created: float
    verifier: str | None = None
    last_used: float = 0.0
    revoked: bool = False
    extra: dict = field(default_factory=dict)

    def get_client_id(self):
        return self.client_id

    def get_redirect_uri(self):
        return "oob"

    def check_verifier(self, verifier):
        return bool(self.verifier) and verifier == self.verifier

    def get_oauth_token(self):
        return self.oauth_token

    def get_oauth_token_secret(self):
        return self.oauth_token_secret

    def get_user_id(self):
        return 1


class FakeETradeState:
    def __init__(self):
        self.lock = threading.RLock()
        self.failures = FailureScript()
        self.reset()

    def reset(self):
        with self.lock:
            self.temporary: dict[str, Credential] = {}
            self.tokens: dict[str, Credential] = {}
            self.orders: dict[int, dict] = {}
            self.previews: dict[int, dict] = {}
            self.ids = itertools.count(501)
            self.preview_ids = itertools.count(168321663200)
            self.counters: Counter = Counter()
            self.api_calls: Counter = Counter()
            self.clock_offset = 0.0

    def now(self) -> float:
        return time.time() + self.clock_offset


def _flask_oauth_request_args():
    body = request.form.to_dict() if request.mimetype == "application/x-www-form-urlencoded" else None
    return request.method, request.url, body, dict(request.headers)


def create_app() -> Flask:
    app = Flask("fake_etrade")
    state = FakeETradeState()
    consumer = Consumer(CONSUMER_KEY, CONSUMER_SECRET)

    class Server(AuthorizationServer):
        def create_oauth1_request(self, req):
            from authlib.oauth1.rfc5849.wrapper import OAuth1Request
            return OAuth1Request(*_flask_oauth_request_args())

        def handle_response(self, status_code, payload, headers):
            from urllib.parse import urlencode
            body = urlencode(payload) if isinstance(payload, (dict, list)) else payload
            return Response(body, status=status_code, headers=headers,
                            mimetype="application/x-www-form-urlencoded")

        def get_client_by_id(self, client_id):
            return consumer if client_id == CONSUMER_KEY else None

        def exists_nonce(self, nonce, req):
            return False

        def create_temporary_credential(self, req):
            credential = Credential(CONSUMER_KEY, generate_token(24), generate_token(24), state.now())
            state.temporary[credential.oauth_token] = credential
            return credential

        def get_temporary_credential(self, req):
            credential = state.temporary.get(req.token)
            return credential if credential and state.now() - credential.created < 300 else None  # 5-min life

        def delete_temporary_credential(self, req):
            state.temporary.pop(req.token, None)

        def create_authorization_verifier(self, req):
            raise NotImplementedError  # E*TRADE's authorize page is its own (key & token), below

        def create_token_credential(self, req):
            credential = Credential(CONSUMER_KEY, generate_token(24), generate_token(24), state.now(),
                                    last_used=state.now())
            state.tokens[credential.oauth_token] = credential
            state.counters["access_tokens"] += 1
            return credential

    class Protector(ResourceProtector):
        def get_client_by_id(self, client_id):
            return consumer if client_id == CONSUMER_KEY else None

        def get_token_credential(self, req):
            credential = state.tokens.get(req.token)
            return credential if credential and not credential.revoked else None

        def exists_nonce(self, nonce, req):
            return False

    server, protector = Server(), Protector()
    app.config.update(state=state)

    @app.route("/oauth/request_token", methods=["GET", "POST"])
    def request_token():
        state.counters["request_token"] += 1
        return server.create_temporary_credentials_response(request)

    @app.get("/e/t/etws/authorize")
    def authorize():
        """The consent page: auto-approved for the fake user; shows the verifier to copy (oob)."""
        credential = state.temporary.get(request.args.get("token", ""))
        if request.args.get("key") != CONSUMER_KEY or not credential:
            return Response("<html><body><p>Invalid request</p></body></html>", status=400, mimetype="text/html")
        credential.verifier = generate_token(5).upper()
        return Response(f"<html><body><p>Enter this code in the application:</p>"
                        f"<input id=\"verifier\" value=\"{credential.verifier}\"></body></html>", mimetype="text/html")

    @app.route("/oauth/access_token", methods=["GET", "POST"])
    def access_token():
        return server.create_token_response(request)

    @app.route("/oauth/renew_access_token", methods=["GET", "POST"])
    def renew():
        credential = _authenticate(allow_inactive=True)
        if isinstance(credential, Response):
            return credential
        credential.last_used = state.now()
        state.counters["renew"] += 1
        return Response("Access Token has been renewed", mimetype="text/plain")

    @app.route("/oauth/revoke_access_token", methods=["GET", "POST"])
    def revoke():
        credential = _authenticate(allow_inactive=True)
        if isinstance(credential, Response):
            return credential
        credential.revoked = True
        state.counters["revoked"] += 1
        return Response("Revoked Access Token", mimetype="text/plain")

    def _authenticate(allow_inactive: bool = False):
        try:
            credential = protector.validate_request(*_flask_oauth_request_args()).credential
        except OAuth1Error as error:
            return _error(401, 10, f"oauth_problem={error.error}")
        created = datetime.fromtimestamp(credential.created, EASTERN)
        midnight = datetime.combine(created.date() + timedelta(days=1), datetime.min.time(), EASTERN)
        if state.now() >= midnight.timestamp():
            return _error(401, 10, "Token is invalid, or has expired")
        if not allow_inactive and state.now() - credential.last_used > 2 * 3600:
            return _error(401, 10, "Token is inactive; renew it")
        return credential

    @app.before_request
    def guard():
        if not request.path.startswith("/v1/"):
            return None
        state.api_calls[request.method + " " + (request.url_rule.rule if request.url_rule else request.path)] += 1
        scripted = state.failures.take()
        if scripted:
            return html_rate_limit() if scripted == 400 else Response("busy", status=scripted)
        credential = _authenticate()
        if isinstance(credential, Response):
            return credential
        credential.last_used = state.now()
        return None

    @app.get("/v1/accounts/list.json")
    def accounts():
        return jsonify({"AccountListResponse": {"Accounts": {"Account": ACCOUNTS}}})

    @app.get("/v1/accounts/<key>/balance.json")
    def balance(key):
        return jsonify({"BalanceResponse": {"accountId": ACCOUNTS[0]["accountId"], "Computed": {
            "cashAvailableForInvestment": 20000.0, "cashBuyingPower": 20000.0, "marginBuyingPower": 40000.0,
            "RealTimeValues": {"totalAccountValue": 60000.0, "netMv": 40000.0}}}})

    @app.get("/v1/accounts/<key>/portfolio.json")
    def portfolio(key):
        return jsonify({"PortfolioResponse": {"AccountPortfolio": [{"accountId": ACCOUNTS[0]["accountId"], "Position": [
            {"symbolDescription": "AAPL", "quantity": 20, "positionType": "LONG", "pricePaid": 150.0,
             "marketValue": 3800.0, "Product": {"symbol": "AAPL", "securityType": "EQ"},
             "Quick": {"lastTrade": 190.0}},
            {"symbolDescription": "AAPL Jun 21 '24 $192.50 Call", "quantity": 3, "positionType": "SHORT",
             "pricePaid": 4.1, "marketValue": -1230.0,
             "Product": {"symbol": "AAPL", "securityType": "OPTN", "callPut": "CALL", "expiryYear": 2024,
                         "expiryMonth": 6, "expiryDay": 21, "strikePrice": 192.5}}]}]}})

    @app.post("/v1/accounts/<key>/orders/preview.json")
    def preview(key):
        return _preview(key, request.get_json(force=True).get("PreviewOrderRequest"), "PreviewOrderResponse")

    @app.put("/v1/accounts/<key>/orders/<int:order_id>/change/preview.json")
    def change_preview(key, order_id):
        if order_id not in state.orders or state.orders[order_id]["status"] != "OPEN":
            return _error(400, 5001, "This order cannot be changed")
        return _preview(key, request.get_json(force=True).get("PreviewOrderRequest"), "PreviewOrderResponse")

    def _preview(key, body, wrapper):
        problem = _check(key, body)
        if problem:
            return problem
        with state.lock:
            preview_id = next(state.preview_ids)
            state.previews[preview_id] = body
        return jsonify({wrapper: {"orderType": body["orderType"], "clientOrderId": body["clientOrderId"],
                                  "PreviewIds": [{"previewId": preview_id}], "Order": body["Order"]}})

    @app.post("/v1/accounts/<key>/orders/place.json")
    def place(key):
        return _place(key, request.get_json(force=True).get("PlaceOrderRequest"), replaces=None)

    @app.put("/v1/accounts/<key>/orders/<int:order_id>/change/place.json")
    def change_place(key, order_id):
        return _place(key, request.get_json(force=True).get("PlaceOrderRequest"), replaces=order_id)

    def _place(key, body, replaces):
        with state.lock:
            preview_id = ((body or {}).get("PreviewIds") or [{}])[0].get("previewId")
            previewed = state.previews.pop(preview_id, None)
            if not previewed or previewed["clientOrderId"] != body.get("clientOrderId") \
                    or previewed["Order"] != body.get("Order"):
                return _error(400, 1033, "The order was not previewed with the same parameters")
            if any(o["clientOrderId"] == body["clientOrderId"] for o in state.orders.values()):
                return _error(400, 1023, "Duplicate clientOrderId for this account")
            if replaces is not None:
                if state.orders.get(replaces, {}).get("status") != "OPEN":
                    return _error(400, 5001, "This order cannot be changed")
                _set_status(state.orders[replaces], "CANCELLED")
            order_id = next(state.ids)
            state.orders[order_id] = _new_order(order_id, key, body)
        return jsonify({"PlaceOrderResponse": {"orderType": body["orderType"], "clientOrderId": body["clientOrderId"],
                                               "OrderIds": [{"orderId": order_id}], "Order": body["Order"]}})

    @app.get("/v1/accounts/<key>/orders.json")
    def list_orders(key):
        """Newest first, `count` a page (at most 100); `marker` continues where the last page stopped."""
        mine = sorted((o for o in state.orders.values() if o["_key"] == key), key=lambda o: -o["orderId"])
        start, count = int(request.args.get("marker") or 0), min(int(request.args.get("count") or 25), 100)
        page = {"Order": mine[start:start + count]}
        if start + count < len(mine):
            page.update(marker=str(start + count), next=f"{request.base_url}?marker={start + count}")
        return jsonify({"OrdersResponse": page})

    @app.get("/v1/accounts/<key>/orders/<int:order_id>.json")
    def get_order(key, order_id):
        order = state.orders.get(order_id)
        if not order or order["_key"] != key:
            return _error(404, 100, "Order not found")
        return jsonify({"OrdersResponse": {"Order": [order]}})

    @app.put("/v1/accounts/<key>/orders/cancel.json")
    def cancel(key):
        order_id = (request.get_json(force=True).get("CancelOrderRequest") or {}).get("orderId")
        with state.lock:
            order = state.orders.get(order_id)
            if not order or order["_key"] != key:
                return _error(404, 100, "Order not found")
            if order["status"] != "OPEN":
                return _error(400, 5001, "This order cannot be cancelled")
            _set_status(order, "CANCELLED")
        return jsonify({"CancelOrderResponse": {"accountId": ACCOUNTS[0]["accountId"], "orderId": order_id,
                                                "cancelTime": int(state.now() * 1000),
                                                "Messages": {"Message": [{"code": 5011, "type": "WARNING",
                                                                          "description": "Your request to cancel "
                                                                          "your order is being processed."}]}}})

    @app.get("/v1/market/quote/<symbols>.json")
    def quote(symbols):
        data, messages = [], []
        for symbol in symbols.split(",")[:25]:
            if symbol in PRICES:
                price = PRICES[symbol]
                data.append({"dateTimeUTC": int(state.now()), "quoteStatus": "REALTIME",
                             "All": {"lastTrade": price, "bid": price - 0.02, "ask": price + 0.02},
                             "Product": {"symbol": symbol, "securityType": "EQ"}})
            else:
                messages.append({"description": f"{symbol} is not a valid symbol", "code": 1002, "type": "WARNING"})
        body = {"QuoteData": data}
        if messages:
            body["Messages"] = {"Message": messages}
        return jsonify({"QuoteResponse": body})

    @app.get("/_fake/stats")
    def fake_stats():
        return jsonify({"counters": dict(state.counters), "api_calls": dict(state.api_calls)})

    @app.post("/_fake/control")
    def fake_control():
        body = request.get_json(force=True) or {}
        if body.get("reset"):
            state.reset()
        state.failures.push(body.get("fail_next", []))
        if body.get("execute"):  # {"order_id", "quantity", "price"}: one execution; E*TRADE shows only totals
            with state.lock:
                _execute(state.orders[body["execute"]["order_id"]], float(body["execute"]["quantity"]),
                         float(body["execute"]["price"]), int(state.now() * 1000))
        state.clock_offset += float(body.get("advance_seconds", 0))
        for credential in state.tokens.values():  # make every access token look idle this long
            credential.last_used -= float(body.get("idle_seconds", 0))
        return jsonify({"clock_offset": state.clock_offset})

    def _check(key, body):
        if key != ACCOUNTS[0]["accountIdKey"]:
            return _error(400, 100, "Account key does not belong to user")
        try:
            instrument = body["Order"][0]["Instrument"][0]
            symbol, quantity = instrument["Product"]["symbol"], float(instrument["quantity"])
            client_id = body["clientOrderId"]
        except (KeyError, IndexError, TypeError, ValueError):
            return _error(400, 101, "Invalid order request")
        if not (1 <= len(client_id) <= 20 and client_id.isalnum()):
            return _error(400, 1019, "clientOrderId must be 1-20 alphanumeric characters")
        if symbol not in PRICES:
            return _error(400, 1002, f"{symbol} is not a valid symbol")
        if quantity * PRICES[symbol] > 40000:
            return _error(400, 1024, "Insufficient funds: the order exceeds your buying power")
        return None

    def _new_order(order_id, key, body):
        detail = body["Order"][0]
        instrument = dict(detail["Instrument"][0])
        market = detail["priceType"] == "MARKET"
        price = PRICES[instrument["Product"]["symbol"]]
        instrument.update(orderedQuantity=instrument["quantity"],
                          filledQuantity=instrument["quantity"] if market else 0.0,
                          averageExecutionPrice=price if market else 0.0, estimatedCommission=0.0)
        if market:
            instrument["executedTime"] = int(state.now() * 1000)
        return {"_key": key, "orderId": order_id, "clientOrderId": body["clientOrderId"],
                "details": f"{request.host_url}v1/accounts/{key}/orders/{order_id}.json", "orderType": "EQ",
                "status": "EXECUTED" if market else "OPEN",
                "OrderDetail": [{**{k: v for k, v in detail.items() if k != "Instrument"},
                                 "placedTime": int(state.now() * 1000), "status": "EXECUTED" if market else "OPEN",
                                 "Instrument": [instrument]}]}

    return app


def _execute(order: dict, quantity: float, price: float, millis: int) -> None:
    """Add one execution to the running totals (filled quantity, average price), as E*TRADE reports them."""
    instrument = order["OrderDetail"][0]["Instrument"][0]
    before = instrument["filledQuantity"]
    filled = before + quantity
    instrument["averageExecutionPrice"] = (instrument["averageExecutionPrice"] * before + price * quantity) / filled
    instrument["filledQuantity"], instrument["executedTime"] = filled, millis
    if filled >= float(instrument["orderedQuantity"]):
        _set_status(order, "EXECUTED")


def _set_status(order: dict, status: str) -> None:
    order["status"] = order["OrderDetail"][0]["status"] = status


def _error(status: int, code: int, message: str) -> Response:
    response = jsonify({"Error": {"code": code, "message": message}})
    response.status_code = status
    return response
