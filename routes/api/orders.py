"""API: place, list, read, cancel and replace orders (DESIGN §7).

Thin views: parse the request, call one service in utils/orders.py, commit, answer JSON. The
OpenAPI description of every operation lives next to it in `OPENAPI_PATHS` / `OPENAPI_SCHEMAS`.
"""
from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from models import OrderStatus
from utils import orders
from utils.api_auth import json_object_body
from utils.database import ID_RULE
from utils.errors import ValidationFailed
from utils.extensions import db
from utils.openapi import error_responses, json_body, json_response, path_id, ref

bp = Blueprint("orders", __name__)

PAGE_DEFAULT, PAGE_MAX = 50, 200
ORDER_REQUEST_FIELDS = {"symbol", "side", "quantity", "type", "limit_price", "stop_price", "time_in_force",
                        "client_order_id", "stop_loss_price", "take_profit_price", "trailing_stop_percent",
                        "instruction", "broker_connection_id", "trade_id"}
REPLACE_REQUEST_FIELDS = {"quantity", "limit_price", "stop_price", "time_in_force", "client_order_id"}


# --- request parsing shared by the trading API modules ------------------------------------------

def page_params(allowed_statuses: set[str]) -> dict:
    """`status`, `cursor` and `limit` from the query string, validated; raises ValidationFailed."""
    unsafe_status = request.args.get("status")
    if unsafe_status is not None and unsafe_status not in allowed_statuses:
        raise ValidationFailed("Unknown status filter.", details={"field": "status",
                                                                   "allowed": sorted(allowed_statuses)})
    return {"status": unsafe_status, "cursor": _cursor(request.args.get("cursor")),
            "limit": _limit(request.args.get("limit"))}


def _is_small_number(unsafe_text: str, max_digits: int) -> bool:
    # isdigit() alone accepts "²", which int() refuses: ASCII digits only.
    return unsafe_text.isascii() and unsafe_text.isdigit() and len(unsafe_text) <= max_digits


def _cursor(unsafe_cursor: str | None) -> str | None:
    if not unsafe_cursor:
        return None
    if not _is_small_number(unsafe_cursor, 18):
        raise ValidationFailed("The cursor is not valid; use next_cursor from the previous page.",
                               details={"field": "cursor"})
    return unsafe_cursor


def _limit(unsafe_limit: str | None) -> int:
    if unsafe_limit is None:
        return PAGE_DEFAULT
    if not _is_small_number(unsafe_limit, 4) or not 1 <= int(unsafe_limit) <= PAGE_MAX:
        raise ValidationFailed(f"limit must be an integer from 1 to {PAGE_MAX}.", details={"field": "limit"})
    return int(unsafe_limit)


# --- views ----------------------------------------------------------------------------------------

@bp.post("/orders")
def place():
    order, created = orders.place_order(g.api_user, json_object_body(ORDER_REQUEST_FIELDS))  # commits itself
    response = jsonify(orders.order_to_dict(order))
    response.status_code = 202 if created else 200
    response.headers["Location"] = f"/api/v1/orders/{order.id}"
    return response


@bp.get("/orders")
def index():
    params = page_params({status.value for status in OrderStatus})
    items, next_cursor = orders.list_orders(g.api_user, **params)
    return jsonify({"items": [orders.order_to_dict(order) for order in items], "next_cursor": next_cursor})


@bp.get(f"/orders/<{ID_RULE}:order_id>")
def show(order_id: int):
    return jsonify(orders.order_to_dict(orders.get_order(g.api_user, order_id)))


@bp.delete(f"/orders/<{ID_RULE}:order_id>")
def cancel(order_id: int):
    order = orders.cancel_order(g.api_user, order_id)
    db.session.commit()
    done = order.status == OrderStatus.CANCELLED
    return jsonify(orders.order_to_dict(order)), 200 if done else 202


@bp.patch(f"/orders/<{ID_RULE}:order_id>")
def replace(order_id: int):
    new_order = orders.replace_order(g.api_user, order_id, json_object_body(REPLACE_REQUEST_FIELDS))
    db.session.commit()
    response = jsonify(orders.order_to_dict(new_order))
    response.status_code = 202
    response.headers["Location"] = f"/api/v1/orders/{new_order.id}"
    return response


# --- OpenAPI --------------------------------------------------------------------------------------

DECIMAL = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$", "description": "A decimal number as a string."}
NULLABLE_DECIMAL = {"type": ["string", "null"], "pattern": r"^-?\d+(\.\d+)?$"}
DECIMAL_INPUT = {"type": ["string", "number"], "description": "A positive decimal, preferably as a string."}
TIME = {"type": "string", "format": "date-time"}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
ORDER_STATUSES = [status.value for status in OrderStatus]


def page_query_params(statuses: list[str]) -> list[dict]:
    """The `status`, `cursor` and `limit` query parameters of a list operation."""
    return [
        {"name": "status", "in": "query", "required": False, "description": "Only objects in this status.",
         "schema": {"type": "string", "enum": statuses}},
        {"name": "cursor", "in": "query", "required": False,
         "description": "`next_cursor` from the previous page.",
         "schema": {"type": "string", "pattern": r"^[0-9]{1,18}$"}},
        {"name": "limit", "in": "query", "required": False, "description": f"Page size (default {PAGE_DEFAULT}).",
         "schema": {"type": "integer", "minimum": 1, "maximum": PAGE_MAX}},
    ]


OPENAPI_SCHEMAS = {
    "OrderRequest": {
        "type": "object",
        "required": ["symbol", "side", "quantity", "type"],
        "properties": {
            "symbol": {"type": "string", "minLength": 1, "maxLength": 32, "examples": ["AAPL"]},
            "side": {"type": "string", "enum": ["buy", "sell"]},
            "quantity": DECIMAL_INPUT,
            "type": {"type": "string", "enum": ["market", "limit", "stop", "stop_limit"]},
            "limit_price": {**DECIMAL_INPUT, "description": "Required for limit and stop_limit."},
            "stop_price": {**DECIMAL_INPUT, "description": "Required for stop and stop_limit."},
            "time_in_force": {"type": "string", "enum": ["day", "gtc"], "default": "day"},
            "client_order_id": {"type": "string", "minLength": 1, "maxLength": 64,
                                "description": "Idempotency key: the same id again returns the same order (200)."},
            "stop_loss_price": DECIMAL_INPUT,
            "take_profit_price": DECIMAL_INPUT,
            "trailing_stop_percent": DECIMAL_INPUT,
            "instruction": {"type": "string", "description": "Options: BUY_TO_OPEN, SELL_TO_CLOSE, …"},
            "broker_connection_id": {"type": "integer", "minimum": 1,
                                     "description": "Default: the paper account."},
            "trade_id": {"type": "integer", "minimum": 1, "description": "For an exit: the trade it closes."},
        },
        "additionalProperties": False,
    },
    "OrderReplaceRequest": {
        "type": "object",
        "description": "Fields to change; the old order becomes `replaced` and a new order is returned.",
        "properties": {
            "quantity": DECIMAL_INPUT,
            "limit_price": DECIMAL_INPUT,
            "stop_price": DECIMAL_INPUT,
            "time_in_force": {"type": "string", "enum": ["day", "gtc"]},
            "client_order_id": {"type": "string", "minLength": 1, "maxLength": 64},
        },
        "additionalProperties": False,
    },
    "OrderEvent": {
        "type": "object",
        "required": ["to_status", "created_at"],
        "properties": {
            "from_status": {"type": ["string", "null"]},
            "to_status": {"type": "string"},
            "detail": {"type": ["string", "null"]},
            "created_at": TIME,
        },
    },
    "Fill": {
        "type": "object",
        "required": ["quantity", "price", "executed_at"],
        "properties": {"quantity": DECIMAL, "price": DECIMAL, "fee": DECIMAL, "executed_at": TIME},
    },
    "Order": {
        "type": "object",
        "required": ["id", "client_order_id", "symbol", "side", "quantity", "type", "time_in_force", "status",
                     "filled_quantity", "created_at"],
        "properties": {
            "id": {"type": "integer"},
            "client_order_id": {"type": "string"},
            "symbol": {"type": "string"},
            "asset_type": {"type": "string", "enum": ["equity", "option", "crypto"]},
            "side": {"type": "string", "enum": ["buy", "sell"]},
            "instruction": {"type": "string"},
            "quantity": DECIMAL,
            "type": {"type": "string", "enum": ["market", "limit", "stop", "stop_limit"]},
            "limit_price": NULLABLE_DECIMAL,
            "stop_price": NULLABLE_DECIMAL,
            "time_in_force": {"type": "string", "enum": ["day", "gtc"]},
            "status": {"type": "string", "enum": ORDER_STATUSES},
            "filled_quantity": DECIMAL,
            "average_fill_price": NULLABLE_DECIMAL,
            "fees": DECIMAL,
            "purpose": {"type": "string", "enum": ["entry", "exit", "stop_loss", "take_profit"]},
            "broker_connection_id": {"type": "integer"},
            "stop_loss_price": NULLABLE_DECIMAL,
            "take_profit_price": NULLABLE_DECIMAL,
            "trailing_stop_percent": NULLABLE_DECIMAL,
            "updated_at": TIME,
            "reject_reason": {"type": ["string", "null"]},
            "notice": {"type": ["string", "null"],
                       "description": "Why the order is not at its broker yet: still waiting for the worker, "
                                      "or unconfirmed after a retry (null otherwise). Still `submitting` after "
                                      "a retry, it may already be at the broker: check there before placing it "
                                      "again."},
            "trade_id": {"type": ["integer", "null"]},
            "replaces_order_id": {"type": ["integer", "null"]},
            "created_at": TIME,
            "events": {"type": "array", "items": ref("OrderEvent")},
            "fills": {"type": "array", "items": ref("Fill")},
        },
    },
    "OrderList": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {"items": {"type": "array", "items": ref("Order")},
                       "next_cursor": {"type": ["string", "null"]}},
    },
}

_ORDER_ID = path_id("order_id", "The order id.")

OPENAPI_PATHS = {
    "/orders": {
        "post": {
            "tags": ["orders"], "operationId": "placeOrder", "summary": "Place an order (executed by the worker).",
            "requestBody": json_body(ref("OrderRequest")),
            "responses": {
                "202": json_response("Accepted: the order is pending and the worker will submit it.", ref("Order")),
                "200": json_response("An order with this client_order_id already exists; it is returned unchanged.",
                          ref("Order")),
                **error_responses(400, 401, 404, 409, 413, 415, 422, 429, 503),
            },
        },
        "get": {
            "tags": ["orders"], "operationId": "listOrders", "summary": "Your orders, newest first.",
            "parameters": page_query_params(ORDER_STATUSES),
            "responses": {"200": json_response("A page of orders.", ref("OrderList")),
                          **error_responses(400, 401, 422, 429)},
        },
    },
    "/orders/{order_id}": {
        "parameters": [_ORDER_ID],
        "get": {
            "tags": ["orders"], "operationId": "getOrder", "summary": "One order with its events and fills.",
            "responses": {"200": json_response("The order.", ref("Order")), **error_responses(401, 404, 429)},
        },
        "delete": {
            "tags": ["orders"], "operationId": "cancelOrder", "summary": "Cancel an open order.",
            "responses": {
                "200": json_response("Cancelled at once (it had not reached the broker).", ref("Order")),
                "202": json_response("Cancel requested (`pending_cancel`); the worker confirms it.", ref("Order")),
                **error_responses(401, 404, 409, 422, 429, 503),
            },
        },
        "patch": {
            "tags": ["orders"], "operationId": "replaceOrder",
            "summary": "Replace an open order; returns the new order (the old one becomes `replaced`).",
            "requestBody": json_body(ref("OrderReplaceRequest")),
            "responses": {"202": json_response("The replacement order.", ref("Order")),
                          **error_responses(400, 401, 404, 409, 413, 415, 422, 429, 503)},
        },
    },
}
