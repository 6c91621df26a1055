"""API: the caller's linked broker connections (no tokens, account numbers masked) (DESIGN §7)."""
from __future__ import annotations

from flask import Blueprint, g, jsonify

from models import ConnectionStatus
from utils import broker_links
from utils.openapi import error_responses, json_response, ref

bp = Blueprint("brokers", __name__)


@bp.get("/broker-connections")
def index():
    connections = broker_links.list_connections(g.api_user)
    return jsonify({"items": [broker_links.connection_to_dict(c) for c in connections], "next_cursor": None})


# --- OpenAPI --------------------------------------------------------------------------------------

_TIME = {"type": ["string", "null"], "format": "date-time"}

OPENAPI_SCHEMAS = {
    "BrokerAccount": {
        "type": "object",
        "required": ["id", "masked_number", "last4", "name", "account_type"],
        "properties": {"id": {"type": "integer"}, "masked_number": {"type": "string", "examples": ["••••6789"]},
                       "last4": {"type": "string"}, "name": {"type": ["string", "null"]},
                       "account_type": {"type": ["string", "null"]}},
    },
    "BrokerConnection": {
        "type": "object",
        "required": ["id", "broker", "status", "status_detail", "token_expires_at", "last_refreshed_at",
                     "created_at", "accounts"],
        "properties": {
            "id": {"type": "integer"},
            "broker": {"type": "string", "enum": ["schwab", "coinbase", "etrade"]},
            "status": {"type": "string", "enum": [status.value for status in ConnectionStatus]},
            "status_detail": {"type": ["string", "null"]},
            "token_expires_at": _TIME, "last_refreshed_at": _TIME,
            "created_at": {"type": "string", "format": "date-time"},
            "accounts": {"type": "array", "items": ref("BrokerAccount")},
        },
    },
    "BrokerConnectionList": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {"items": {"type": "array", "items": ref("BrokerConnection")}, "next_cursor": {"type": "null"}},
    },
}

OPENAPI_PATHS = {
    "/broker-connections": {
        "get": {
            "tags": ["brokers"], "operationId": "listBrokerConnections",
            "summary": "Your linked broker connections with status, token expiry and masked accounts.",
            "responses": {"200": json_response("Every linked connection, newest first.", ref("BrokerConnectionList")),
                          **error_responses(401, 429)},
        },
    },
}
