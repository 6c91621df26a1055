"""API: trades (one position from entry to exit), closing a trade, and open positions (DESIGN §7)."""
from __future__ import annotations

from flask import Blueprint, g, jsonify

from models import TradeStatus
from routes.api.orders import DECIMAL, ID_RULE, NULLABLE_DECIMAL, NULLABLE_TIME, page_params, page_query_params
from utils import trades
from utils.extensions import db
from utils.openapi import error_responses, json_response, path_id, ref

bp = Blueprint("trades", __name__)

TRADE_STATUSES = [status.value for status in TradeStatus]


@bp.get("/trades")
def index():
    items, next_cursor = trades.list_trades(g.api_user, **page_params(set(TRADE_STATUSES)))
    return jsonify({"items": [trades.trade_to_dict(trade) for trade in items], "next_cursor": next_cursor})


@bp.get(f"/trades/<{ID_RULE}:trade_id>")
def show(trade_id: int):
    return jsonify(trades.trade_to_dict(trades.get_trade(g.api_user, trade_id)))


@bp.post(f"/trades/<{ID_RULE}:trade_id>/close")
def close(trade_id: int):
    trade = trades.close_trade(g.api_user, trade_id)
    db.session.commit()
    return jsonify(trades.trade_to_dict(trade)), 202


@bp.post(f"/trades/<{ID_RULE}:trade_id>/closed-at-broker")
def closed_at_broker(trade_id: int):
    from utils.api_auth import json_object_body
    trade = trades.record_closed_at_broker(g.api_user, trade_id, json_object_body({"exit_price"}))
    db.session.commit()
    return jsonify(trades.trade_to_dict(trade))


# Stop-loss guard (issue 5, stop-loss engineer): change an open trade's stop, trailing percent and take-profit.
@bp.put(f"/trades/<{ID_RULE}:trade_id>/stop-loss")
def update_stop_loss(trade_id: int):
    from utils import stoploss
    from utils.api_auth import json_object_body
    trade = stoploss.update_protection(g.api_user, trade_id, json_object_body(set(stoploss.PROTECTION_FIELDS)))
    db.session.commit()
    return jsonify(trades.trade_to_dict(trade))


@bp.get("/positions")
def positions():
    return jsonify({"items": trades.positions(g.api_user), "next_cursor": None})


# --- OpenAPI --------------------------------------------------------------------------------------

OPENAPI_SCHEMAS = {
    "Trade": {
        "type": "object",
        "required": ["id", "symbol", "side", "quantity", "status"],
        "properties": {
            "id": {"type": "integer"},
            "symbol": {"type": "string"},
            "asset_type": {"type": "string"},
            "side": {"type": "string", "enum": ["long", "short"]},
            "quantity": DECIMAL,
            "exit_quantity": DECIMAL,
            "status": {"type": "string", "enum": TRADE_STATUSES},
            "entry_price": NULLABLE_DECIMAL,
            "exit_price": NULLABLE_DECIMAL,
            "stop_loss_price": NULLABLE_DECIMAL,
            "trailing_stop_percent": NULLABLE_DECIMAL,
            "take_profit_price": NULLABLE_DECIMAL,
            "close_reason": {"type": ["string", "null"]},
            "fees": DECIMAL,
            "realized_pnl": NULLABLE_DECIMAL,
            "opened_at": NULLABLE_TIME,
            "closed_at": NULLABLE_TIME,
            "exit_refusals": {"type": "integer", "minimum": 0, "description":
                              "Automatic exits (stop-loss, take-profit, expiry) the broker refused in a row."},
            "exit_retry_at": {**NULLABLE_TIME, "description":
                              "When the next automatic exit may go after a refusal (null: at once)."},
        },
    },
    "TradeList": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {"items": {"type": "array", "items": ref("Trade")},
                       "next_cursor": {"type": ["string", "null"]}},
    },
    "Position": {
        "description": "An open trade with its latest quote (market fields are null when there is no quote).",
        "allOf": [ref("Trade"), {
            "type": "object",
            "required": ["open_quantity", "market_price", "market_value", "unrealized_pnl"],
            "properties": {
                "open_quantity": {**DECIMAL, "description": "Quantity still held (entry minus exits)."},
                "market_price": NULLABLE_DECIMAL,
                "quote_as_of": NULLABLE_TIME,
                "market_value": NULLABLE_DECIMAL,
                "unrealized_pnl": NULLABLE_DECIMAL,
            },
        }],
    },
    "PositionList": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {"items": {"type": "array", "items": ref("Position")}, "next_cursor": {"type": "null"}},
    },
}

_TRADE_ID = path_id("trade_id", "The trade id.")

OPENAPI_PATHS = {
    "/trades": {
        "get": {
            "tags": ["trades"], "operationId": "listTrades", "summary": "Your trades, newest first.",
            "parameters": page_query_params(TRADE_STATUSES),
            "responses": {"200": json_response("A page of trades.", ref("TradeList")),
                          **error_responses(400, 401, 422, 429)},
        },
    },
    "/trades/{trade_id}": {
        "parameters": [_TRADE_ID],
        "get": {
            "tags": ["trades"], "operationId": "getTrade", "summary": "One trade.",
            "responses": {"200": json_response("The trade.", ref("Trade")), **error_responses(401, 404, 429)},
        },
    },
    "/trades/{trade_id}/close": {
        "parameters": [_TRADE_ID],
        "post": {
            "tags": ["trades"], "operationId": "closeTrade",
            "summary": "Close an open trade with a market exit order (the worker executes it).",
            "responses": {"202": json_response("Closing: the exit order is queued.", ref("Trade")),
                          **error_responses(401, 404, 409, 422, 429, 503)},
        },
    },
    "/trades/{trade_id}/closed-at-broker": {
        "parameters": [_TRADE_ID],
        "post": {
            "tags": ["trades"], "operationId": "recordTradeClosedAtBroker",
            "summary": "Record that you closed an open trade at the broker directly, at exit_price.",
            "description": "For a position sold (or covered) outside Tradewarden. The trade's working exits, "
                           "its broker-side stop included, are cancelled at the broker first; then the trade "
                           "closes with close_reason 'broker' and the realized P&L of exit_price for all that "
                           "is still held. No order is sent. 409 when the trade is not open or one of its exits "
                           "is being sent.",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "required": ["exit_price"],
                "properties": {"exit_price": {"type": ["string", "number"],
                                              "description": "The price per unit the broker paid (or charged)."}}}}}},
            "responses": {"200": json_response("The closed trade.", ref("Trade")),
                          **error_responses(400, 401, 404, 409, 413, 422, 429, 503)},
        },
    },
    # Stop-loss guard (issue 5, stop-loss engineer).
    "/trades/{trade_id}/stop-loss": {
        "parameters": [_TRADE_ID],
        "put": {
            "tags": ["trades"], "operationId": "updateTradeStopLoss",
            "summary": "Set or clear an open trade's stop-loss, trailing stop percent and take-profit.",
            "description": "Fields left out keep their value; null clears one. A long's stop must be below the "
                           "current bid and its take-profit above it (a short's the other way round), else 422. "
                           "The broker-side stop order is replaced to match.",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "minProperties": 1,
                "properties": {"stop_loss_price": {"type": ["string", "number", "null"]},
                               "trailing_stop_percent": {"type": ["string", "number", "null"],
                                                         "description": "0 < percent <= 99"},
                               "take_profit_price": {"type": ["string", "number", "null"]}}}}}},
            "responses": {"200": json_response("The trade with its new protection.", ref("Trade")),
                          **error_responses(400, 401, 404, 409, 413, 422, 429, 503)},
        },
    },
    "/positions": {
        "get": {
            "tags": ["trades"], "operationId": "listPositions",
            "summary": "Open positions with market value and unrealized P&L.",
            "responses": {"200": json_response("Every open position.", ref("PositionList")),
                          **error_responses(401, 429, 503)},
        },
    },
}
