"""API: the caller's risk limits (`GET|PUT /settings/risk`)."""
from __future__ import annotations

from flask import Blueprint, g, jsonify

from routes.api.orders import DECIMAL, DECIMAL_INPUT
from utils import risk
from utils.api_auth import json_object_body
from utils.extensions import db
from utils.openapi import error_responses, json_body, json_response, ref

bp = Blueprint("settings", __name__)


@bp.get("/settings/risk")
def show_risk():
    return jsonify(risk.limits_to_dict(risk.get_limits(g.api_user)))


@bp.put("/settings/risk")
def update_risk():
    limits = risk.update_limits(g.api_user, json_object_body(set(risk.LIMIT_FIELDS)))
    db.session.commit()
    return jsonify(risk.limits_to_dict(limits))


PERCENT = {**DECIMAL, "description": "A percentage, e.g. \"2\" for 2 %."}
PERCENT_INPUT = {**DECIMAL_INPUT, "description": "A percentage from 0 to 100."}

OPENAPI_SCHEMAS = {
    "RiskLimits": {
        "type": "object",
        "required": ["max_risk_per_trade_pct", "default_stop_pct", "daily_trade_limit", "daily_notional_limit",
                     "max_concentration_pct", "daily_loss_limit_pct"],
        "properties": {
            "max_risk_per_trade_pct": PERCENT,
            "default_stop_pct": PERCENT,
            "daily_trade_limit": {"type": "integer", "minimum": 0},
            "daily_notional_limit": DECIMAL,
            "max_concentration_pct": PERCENT,
            "daily_loss_limit_pct": PERCENT,
        },
    },
    "RiskLimitsUpdate": {
        "type": "object",
        "description": "Any subset of the limits; omitted ones keep their value.",
        "properties": {
            "max_risk_per_trade_pct": PERCENT_INPUT,
            "default_stop_pct": PERCENT_INPUT,
            "daily_trade_limit": {"type": ["integer", "string"], "description": "Orders per UTC day."},
            "daily_notional_limit": {**DECIMAL_INPUT, "description": "Order value per UTC day."},
            "max_concentration_pct": PERCENT_INPUT,
            "daily_loss_limit_pct": PERCENT_INPUT,
        },
    },
}

OPENAPI_PATHS = {
    "/settings/risk": {
        "get": {
            "tags": ["settings"], "operationId": "getRiskLimits", "summary": "Your risk limits.",
            "responses": {"200": json_response("The limits.", ref("RiskLimits")), **error_responses(401, 429)},
        },
        "put": {
            "tags": ["settings"], "operationId": "updateRiskLimits", "summary": "Change your risk limits.",
            "requestBody": json_body(ref("RiskLimitsUpdate")),
            "responses": {"200": json_response("The limits after the change.", ref("RiskLimits")),
                          **error_responses(400, 401, 413, 415, 422, 429)},
        },
    },
}
