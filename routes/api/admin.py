"""API: admin operations — `PUT /admin/prices/<symbol>` sets a manual price (MARKET_DATA_SOURCE=manual)."""
from __future__ import annotations

from flask import Blueprint, g, jsonify

from routes.api.orders import DECIMAL, DECIMAL_INPUT, TIME
from utils import market_data
from utils.api_auth import json_object_body
from utils.dbtypes import iso_utc
from utils.errors import Forbidden
from utils.extensions import db
from utils.openapi import error_responses, json_body, json_response, ref

bp = Blueprint("admin", __name__)


@bp.put("/admin/prices/<symbol>")
def set_price(symbol: str):
    if not g.api_user.is_admin:
        raise Forbidden("Administrators only.")
    unsafe_body = json_object_body({"price"})
    row = market_data.set_manual_price(symbol, unsafe_body.get("price"), set_by_id=g.api_user.id)
    db.session.commit()
    return jsonify(manual_price_to_dict(row))


def manual_price_to_dict(row) -> dict:
    return {"symbol": row.symbol, "price": format(row.price, "f"), "as_of": iso_utc(row.as_of),
            "source": row.source}


OPENAPI_SCHEMAS = {
    "ManualPrice": {
        "type": "object",
        "required": ["symbol", "price", "as_of", "source"],
        "properties": {"symbol": {"type": "string", "description": "Canonical symbol (options as unpadded OCC)."},
                       "price": DECIMAL, "as_of": {**TIME, "description": "When the price was set (UTC)."},
                       "source": {"type": "string", "enum": ["manual"]}},
    },
    "ManualPriceUpdate": {
        "type": "object",
        "required": ["price"],
        "additionalProperties": False,
        "properties": {"price": {**DECIMAL_INPUT, "description": "A positive price, at most 8 decimal places."}},
    },
}

OPENAPI_PATHS = {
    "/admin/prices/{symbol}": {
        "put": {
            "tags": ["admin"], "operationId": "setManualPrice",
            "summary": "Set a symbol's price (admins only; only when MARKET_DATA_SOURCE=manual).",
            "description": "Resting paper orders of the symbol are matched against the new price right after.",
            "parameters": [{"name": "symbol", "in": "path", "required": True,
                            "description": "Equity (AAPL), crypto (BTC-USD) or OCC option (AAPL240517P00190000).",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 32}}],
            "requestBody": json_body(ref("ManualPriceUpdate")),
            "responses": {"200": json_response("The stored price.", ref("ManualPrice")),
                          **error_responses(400, 401, 403, 404, 409, 413, 422, 429)},
        },
    },
}
