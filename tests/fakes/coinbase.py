"""Fake Coinbase: OAuth 2.0 (authlib, PKCE S256 required, 1-h access, single-use rotating refresh tokens,
RFC 7009 revocation) plus Advanced Trade v3 brokerage endpoints in Coinbase's wire format."""
from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import datetime, timezone
from decimal import Decimal

from flask import Flask, jsonify, request

from tests.fakes.common import FailureScript, mount_control
from tests.fakes.oauth2_provider import FakeOAuth2Provider

CLIENT_ID, CLIENT_SECRET = "coinbase-fake-client", "coinbase-fake-secret"
PRICES = {"BTC-USD": Decimal("60000.00"), "ETH-USD": Decimal("3000.00")}
ACCOUNTS = [{"uuid": "8bfc20d7-f7c6-4422-bf07-8243ca4169fe", "name": "USD Wallet", "currency": "USD",
             "available_balance": {"value": "25000.00", "currency": "USD"}, "hold": {"value": "0", "currency": "USD"},
             "default": True, "active": True, "type": "ACCOUNT_TYPE_FIAT", "ready": True},
            {"uuid": "5a1b9c3e-0d2f-4e6a-9b8c-7d6e5f4a3b2c", "name": "BTC Wallet", "currency": "BTC",
             "available_balance": {"value": "0.5", "currency": "BTC"}, "hold": {"value": "0", "currency": "BTC"},
             "default": False, "active": True, "type": "ACCOUNT_TYPE_CRYPTO", "ready": True}]


class CoinbaseState:
    def __init__(self):
        self.lock = threading.RLock()
        self.failures = FailureScript()
        self.reset()

    def reset(self):
        with self.lock:
            self.orders: dict[str, dict] = {}
            self.fills: list[dict] = []
            self.api_calls: Counter = Counter()


def create_app(redirect_uris: list[str]) -> Flask:
    app = Flask("fake_coinbase")
    provider = FakeOAuth2Provider(
        app, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=redirect_uris,
        auth_methods=("client_secret_post", "client_secret_basic"), access_ttl=3600, rotate_refresh=True,
        refresh_cap_seconds=None, paths={"authorize": "/oauth2/auth", "token": "/oauth2/token",
                                         "revoke": "/oauth2/revoke"})
    state = CoinbaseState()
    app.config.update(provider=provider, state=state)
    mount_control(app, provider, state)
    prefix = "/api/v3/brokerage"

    @app.before_request
    def guard():
        if not request.path.startswith(prefix):
            return None
        state.api_calls[request.method + " " + request.path[len(prefix):]] += 1
        scripted = state.failures.take()
        if scripted:
            response = jsonify({"errors": [{"id": "rate_limit_exceeded", "message": "Too many requests"}]})
            response.status_code, response.headers["Retry-After"] = scripted, "0"
            return response
        if not provider.bearer_valid(request.headers.get("Authorization")):
            return jsonify({"error": "UNAUTHENTICATED", "message": "invalid or expired token"}), 401
        return None

    @app.get(prefix + "/accounts")
    def accounts():
        return jsonify({"accounts": ACCOUNTS, "has_next": False, "cursor": "", "size": len(ACCOUNTS)})

    @app.post(prefix + "/orders")
    def place():
        body = request.get_json(force=True) or {}
        with state.lock:
            for order in state.orders.values():
                if order["client_order_id"] == body.get("client_order_id"):
                    return jsonify(_success(order))  # Coinbase answers a repeated client_order_id with the order
            failure = _reject_reason(body)
            if failure:
                return jsonify({"success": False, "failure_reason": "UNKNOWN_FAILURE_REASON",
                                "error_response": failure, "order_configuration": body.get("order_configuration")})
            order = _new_order(body)
            state.orders[order["order_id"]] = order
            if order["order_type"] == "MARKET":
                _fill(state, order)
        return jsonify(_success(order))

    @app.get(prefix + "/orders/historical/<order_id>")
    def get_order(order_id):
        order = state.orders.get(order_id)
        if not order:
            return jsonify({"error": "NOT_FOUND", "error_details": "order not found", "message": "order not found"}), 404
        return jsonify({"order": order})

    @app.get(prefix + "/orders/historical/batch")
    def list_orders():
        orders = list(state.orders.values())
        if request.args.get("order_status"):
            orders = [o for o in orders if o["status"] in request.args.getlist("order_status")]
        return jsonify({"orders": orders, "sequence": "0", "has_next": False, "cursor": ""})

    @app.post(prefix + "/orders/batch_cancel")
    def batch_cancel():
        results = []
        with state.lock:
            for order_id in (request.get_json(force=True) or {}).get("order_ids", []):
                order = state.orders.get(order_id)
                if not order:
                    results.append({"success": False, "failure_reason": "UNKNOWN_CANCEL_ORDER", "order_id": order_id})
                elif order["status"] != "OPEN":
                    results.append({"success": False, "failure_reason": "INVALID_CANCEL_REQUEST", "order_id": order_id})
                else:
                    order["status"] = "CANCELLED"
                    results.append({"success": True, "failure_reason": "UNKNOWN_CANCEL_FAILURE_REASON",
                                    "order_id": order_id})
        return jsonify({"results": results})

    @app.post(prefix + "/orders/edit")
    def edit():
        body = request.get_json(force=True) or {}
        with state.lock:
            order = state.orders.get(body.get("order_id"))
            config = (order or {}).get("order_configuration", {}).get("limit_limit_gtc")
            if not order or order["status"] != "OPEN" or not config:
                return jsonify({"success": False, "errors": [{"edit_failure_reason": "ORDER_NOT_EDITABLE"}]})
            config.update(limit_price=str(body["price"]), base_size=str(body["size"]))
            order.setdefault("edit_history", []).append({"price": body["price"], "size": body["size"]})
        return jsonify({"success": True, "errors": []})

    @app.get(prefix + "/orders/historical/fills")
    def fills():
        wanted = set(request.args.getlist("order_ids"))
        matching = [f for f in state.fills if not wanted or f["order_id"] in wanted]
        start, limit = int(request.args.get("cursor") or 0), int(request.args.get("limit") or 100)
        following = str(start + limit) if start + limit < len(matching) else ""
        return jsonify({"fills": matching[start:start + limit], "cursor": following})

    @app.get(prefix + "/best_bid_ask")
    def best_bid_ask():
        books = [{"product_id": p, "bids": [{"price": str(PRICES[p] - 1), "size": "1"}],
                  "asks": [{"price": str(PRICES[p] + 1), "size": "1"}], "time": _now()}
                 for p in request.args.getlist("product_ids") if p in PRICES]
        return jsonify({"pricebooks": books})

    return app


def _reject_reason(body: dict) -> dict | None:
    product = body.get("product_id")
    config = body.get("order_configuration") or {}
    if product not in PRICES:
        return {"error": "INVALID_PRODUCT_ID", "message": "Invalid product_id", "error_details": "",
                "preview_failure_reason": "PREVIEW_INVALID_PRODUCT_ID"}
    if len(config) != 1:
        return {"error": "INVALID_ORDER_CONFIGURATION", "message": "Invalid order configuration",
                "error_details": ""}
    values = next(iter(config.values()))
    size = Decimal(values.get("base_size") or "0") * PRICES[product] + Decimal(values.get("quote_size") or "0")
    if size > Decimal("25000"):
        return {"error": "INSUFFICIENT_FUND", "message": "Insufficient balance in source account",
                "error_details": "", "preview_failure_reason": "PREVIEW_INSUFFICIENT_FUND"}
    return None


def _new_order(body: dict) -> dict:
    kind = next(iter(body["order_configuration"]))
    order_type = "MARKET" if kind.startswith("market") else "STOP_LIMIT" if kind.startswith("stop") else "LIMIT"
    return {"order_id": str(uuid.uuid4()), "product_id": body["product_id"], "user_id": "fake-user-1",
            "order_configuration": body["order_configuration"], "side": body["side"],
            "client_order_id": body.get("client_order_id"), "status": "OPEN",
            "time_in_force": "IMMEDIATE_OR_CANCEL" if order_type == "MARKET" else "GOOD_UNTIL_CANCELLED",
            "created_time": _now(), "completion_percentage": "0", "filled_size": "0", "average_filled_price": "0",
            "number_of_fills": "0", "filled_value": "0", "pending_cancel": False, "total_fees": "0",
            "order_type": order_type, "reject_reason": "", "edit_history": []}


def _fill(state: CoinbaseState, order: dict) -> None:
    values = order["order_configuration"]["market_market_ioc"]
    price = PRICES[order["product_id"]]
    size = Decimal(values["base_size"]) if values.get("base_size") else Decimal(values["quote_size"]) / price
    fee = (size * price * Decimal("0.006")).quantize(Decimal("0.01"))
    state.fills.append({"entry_id": str(uuid.uuid4()), "trade_id": str(uuid.uuid4()), "order_id": order["order_id"],
                        "trade_time": _now(), "trade_type": "FILL", "price": str(price), "size": str(size),
                        "commission": str(fee), "product_id": order["product_id"], "side": order["side"],
                        "liquidity_indicator": "TAKER", "size_in_quote": False})
    order.update(status="FILLED", filled_size=str(size), average_filled_price=str(price), number_of_fills="1",
                 completion_percentage="100", total_fees=str(fee))


def _success(order: dict) -> dict:
    return {"success": True, "success_response": {"order_id": order["order_id"], "product_id": order["product_id"],
                                                  "side": order["side"], "client_order_id": order["client_order_id"]},
            "order_configuration": order["order_configuration"]}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
