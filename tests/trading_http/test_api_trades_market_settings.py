"""Trades, positions, quotes and risk settings through the JSON API."""
from __future__ import annotations

import re
from decimal import Decimal

from tests.trading_http.conftest import market_buy, wait_for, wait_for_order


UTC_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def open_trade(api, set_price, symbol="AAPL", quantity="10", price="100") -> dict:
    """Buy at market through the API and return the trade once it is open (needs the worker)."""
    set_price(symbol, price)
    order = api.post("/orders", json=market_buy(symbol, quantity, stop_loss_price="95")).get_json()
    filled = wait_for_order(api, order["id"], {"filled"})
    return api.get(f"/trades/{filled['trade_id']}").get_json()


def test_filled_entry_shows_as_trade_and_position_then_closes_with_pnl(api, set_price, celery_worker):
    trade = open_trade(api, set_price)
    assert trade["status"] == "open" and trade["quantity"] == "10" and trade["stop_loss_price"] == "95"
    assert [item["id"] for item in api.get("/trades?status=open").get_json()["items"]] == [trade["id"]]

    set_price("AAPL", "110")
    position = api.get("/positions").get_json()["items"][0]
    assert position["symbol"] == "AAPL" and position["open_quantity"] == "10"
    assert Decimal(position["unrealized_pnl"]) > 0

    response = api.post(f"/trades/{trade['id']}/close")
    assert response.status_code == 202
    assert response.get_json()["status"] == "closing"
    closed = wait_for(lambda: api.get(f"/trades/{trade['id']}").get_json(), lambda t: t["status"] == "closed")
    assert closed["close_reason"] == "manual"
    assert Decimal(closed["realized_pnl"]) > 0
    assert api.get("/positions").get_json()["items"] == []
    assert api.post(f"/trades/{trade['id']}/close").status_code == 409


def test_another_users_trade_is_404(api, api_client_for, new_user, set_price, celery_worker):
    trade = open_trade(api, set_price, quantity="1")
    stranger = api_client_for(new_user())
    assert stranger.get(f"/trades/{trade['id']}").status_code == 404
    assert stranger.post(f"/trades/{trade['id']}/close").status_code == 404
    assert stranger.get("/trades").get_json() == {"items": [], "next_cursor": None}
    assert stranger.get("/positions").get_json()["items"] == []
    assert api.get(f"/trades/{trade['id']}").get_json()["status"] == "open"


def test_trade_list_validates_its_filters(api):
    assert api.get("/trades?status=bogus").status_code == 422
    assert api.get("/trades?limit=500").status_code == 422
    assert api.get("/trades/999999").status_code == 404
    assert api.get("/trades?status=closed").get_json() == {"items": [], "next_cursor": None}


def test_quotes_for_known_and_unknown_symbols(api, set_price):
    set_price("AAPL", "101.5")
    set_price("BTC-USD", "60000")
    body = api.get("/quotes?symbols=AAPL,btc-usd,NOPE").get_json()
    assert {quote["symbol"]: quote["last"] for quote in body["items"]} == {"AAPL": "101.5", "BTC-USD": "60000"}
    assert body["missing"] == ["NOPE"]
    # UTC with a Z, as every other time in the API (it used to be "+00:00" here alone)
    assert all(UTC_TIME.fullmatch(quote["as_of"]) for quote in body["items"]), body["items"]


def test_quotes_validate_the_symbol_list(api):
    too_many = ",".join(f"S{number}" for number in range(51))
    for query in ("", "symbols=", "symbols=AAPL,,MSFT", f"symbols={too_many}", "symbols=AA%20PL", "symbols=%24%24"):
        response = api.get(f"/quotes?{query}")
        assert response.status_code == 422, query
        assert response.get_json()["error"]["details"]["field"] == "symbols"


def test_risk_settings_read_update_and_validate(api):
    limits = api.get("/settings/risk").get_json()
    assert set(limits) == {"max_risk_per_trade_pct", "default_stop_pct", "daily_trade_limit",
                           "daily_notional_limit", "max_concentration_pct", "daily_loss_limit_pct"}
    updated = api.put("/settings/risk", json={"daily_trade_limit": 7, "max_risk_per_trade_pct": "1.5"})
    assert updated.status_code == 200
    assert (updated.get_json()["daily_trade_limit"], updated.get_json()["max_risk_per_trade_pct"]) == (7, "1.5")
    assert api.get("/settings/risk").get_json()["daily_trade_limit"] == 7

    assert api.put("/settings/risk", json={"daily_trade_limit": "lots"}).status_code == 422
    assert api.put("/settings/risk", json={"max_concentration_pct": "150"}).status_code == 422
    assert api.put("/settings/risk", json={"nope": 1}).status_code == 422
    assert api.put("/settings/risk", data="[]", content_type="application/json").status_code == 400
    assert api.get("/settings/risk").get_json()["max_risk_per_trade_pct"] == "1.5"
