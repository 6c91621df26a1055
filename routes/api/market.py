"""API: quotes for up to 50 symbols in one call (`GET /quotes?symbols=A,B`)."""
from __future__ import annotations

import re

from flask import Blueprint, jsonify, request

from routes.api.orders import DECIMAL, TIME
from utils import market_data
from utils.dbtypes import iso_utc
from utils.errors import ValidationFailed
from utils.openapi import error_responses, json_response, ref

bp = Blueprint("market", __name__)

MAX_SYMBOLS = 50
SYMBOL_PATTERN = r"[A-Za-z0-9][A-Za-z0-9./-]{0,31}"
SYMBOLS_PATTERN = rf"^{SYMBOL_PATTERN}(,{SYMBOL_PATTERN}){{0,{MAX_SYMBOLS - 1}}}$"
_SYMBOL = re.compile(rf"^{SYMBOL_PATTERN}$")


def parse_symbols(unsafe_symbols: str | None) -> list[str]:
    """1–50 distinct upper-case symbols from a comma-separated list; raises ValidationFailed."""
    unsafe_parts = [part.strip() for part in (unsafe_symbols or "").split(",")]
    if not unsafe_symbols or not all(unsafe_parts):
        raise ValidationFailed("Give 1 to 50 comma-separated symbols, e.g. ?symbols=AAPL,MSFT.",
                               details={"field": "symbols"})
    bad = [part for part in unsafe_parts if not _SYMBOL.match(part)]
    if bad or len(unsafe_parts) > MAX_SYMBOLS:
        raise ValidationFailed("Some symbols are not valid, or there are more than 50.",
                               details={"field": "symbols", "invalid": bad[:10]})
    return list(dict.fromkeys(part.upper() for part in unsafe_parts))


@bp.get("/quotes")
def quotes():
    symbols = parse_symbols(request.args.get("symbols"))
    found = market_data.get_quotes(symbols)
    return jsonify({"items": [quote_to_dict(found[symbol]) for symbol in symbols if symbol in found],
                    "missing": [symbol for symbol in symbols if symbol not in found],
                    "next_cursor": None})


def quote_to_dict(quote) -> dict:
    return {"symbol": quote.symbol, "bid": format(quote.bid, "f"), "ask": format(quote.ask, "f"),
            "last": format(quote.last, "f"), "as_of": iso_utc(quote.as_of)}


OPENAPI_SCHEMAS = {
    "Quote": {
        "type": "object",
        "required": ["symbol", "bid", "ask", "last", "as_of"],
        "properties": {"symbol": {"type": "string"}, "bid": DECIMAL, "ask": DECIMAL, "last": DECIMAL,
                       "as_of": {**TIME, "description": "The quote's own time (UTC), to judge staleness."}},
    },
    "QuoteList": {
        "type": "object",
        "required": ["items", "missing", "next_cursor"],
        "properties": {"items": {"type": "array", "items": ref("Quote")},
                       "missing": {"type": "array", "items": {"type": "string"},
                                   "description": "Requested symbols with no price available."},
                       "next_cursor": {"type": "null"}},
    },
}

OPENAPI_PATHS = {
    "/quotes": {
        "get": {
            "tags": ["market"], "operationId": "getQuotes", "summary": "Latest quotes for 1–50 symbols (cached).",
            "parameters": [{"name": "symbols", "in": "query", "required": True,
                            "description": "Comma-separated symbols, 1 to 50.",
                            "schema": {"type": "string", "pattern": SYMBOLS_PATTERN, "examples": ["AAPL,MSFT"]}}],
            "responses": {"200": json_response("Quotes for the symbols that have a price.", ref("QuoteList")),
                          **error_responses(400, 401, 422, 429, 503)},
        },
    },
}
