"""The trading operations are fully described in /api/v1/openapi.json, and real responses match it."""
from __future__ import annotations

import jsonschema
import pytest

from tests.trading_http.conftest import market_buy

TRADING_OPERATIONS = {
    ("/orders", "post"): {"202", "200", "400", "401", "404", "409", "413", "422", "429", "503"},
    ("/orders", "get"): {"200", "400", "401", "422", "429"},
    ("/orders/{order_id}", "get"): {"200", "401", "404", "429"},
    ("/orders/{order_id}", "delete"): {"200", "202", "401", "404", "409", "429"},
    ("/orders/{order_id}", "patch"): {"202", "400", "401", "404", "409", "413", "422", "429"},
    ("/positions", "get"): {"200", "401", "429"},
    ("/trades", "get"): {"200", "400", "401", "422", "429"},
    ("/trades/{trade_id}", "get"): {"200", "401", "404", "429"},
    ("/trades/{trade_id}/close", "post"): {"202", "401", "404", "409", "429"},
    ("/quotes", "get"): {"200", "400", "401", "422", "429"},
    ("/settings/risk", "get"): {"200", "401", "429"},
    ("/settings/risk", "put"): {"200", "400", "401", "413", "422", "429"},
}


@pytest.fixture
def spec(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def response_schema(spec: dict, path: str, method: str, status: int) -> dict:
    response = spec["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:
        response = spec["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return response["content"]["application/json"]["schema"]


def assert_conforms(spec: dict, path: str, method: str, response) -> None:
    """The response's status is documented for the operation and its body matches the documented schema."""
    schema = response_schema(spec, path, method, response.status_code)
    # The components ride along in the root, so "#/components/schemas/…" references resolve.
    root = {**schema, "components": spec["components"]}
    jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker()).validate(response.get_json())


def test_every_trading_operation_documents_its_statuses_and_integer_ids(spec):
    for (path, method), statuses in TRADING_OPERATIONS.items():
        operation = spec["paths"][path][method]
        assert statuses <= set(operation["responses"]), (path, method, statuses - set(operation["responses"]))
        parameters = spec["paths"][path].get("parameters", []) + operation.get("parameters", [])
        for parameter in parameters:
            if parameter["in"] == "path":
                assert parameter["schema"]["type"] == "integer" and parameter["schema"]["minimum"] == 1
    for name in ("Order", "OrderRequest", "OrderList", "Trade", "TradeList", "Position", "PositionList", "Quote",
                 "QuoteList", "RiskLimits", "RiskLimitsUpdate"):
        assert name in spec["components"]["schemas"], name


def test_real_responses_match_the_documented_schemas(spec, api, set_price):
    set_price("AAPL", "100")
    placed = api.post("/orders", json=market_buy("AAPL", "2", client_order_id="spec-1", stop_loss_price="95"))
    order_id = placed.get_json()["id"]
    calls = [
        ("/orders", "post", placed),
        ("/orders", "post", api.post("/orders", json=market_buy("AAPL", "2", client_order_id="spec-1",
                                                                 stop_loss_price="95"))),
        ("/orders", "post", api.post("/orders", json={"symbol": "AAPL"})),
        ("/orders", "post", api.post("/orders", data="{", content_type="application/json")),
        ("/orders", "get", api.get("/orders")),
        ("/orders/{order_id}", "get", api.get(f"/orders/{order_id}")),
        ("/orders/{order_id}", "get", api.get("/orders/999999")),
        ("/orders/{order_id}", "delete", api.delete(f"/orders/{order_id}")),
        ("/orders/{order_id}", "delete", api.delete(f"/orders/{order_id}")),
        ("/orders/{order_id}", "patch", api.patch(f"/orders/{order_id}", json={"quantity": "1"})),
        ("/positions", "get", api.get("/positions")),
        ("/trades", "get", api.get("/trades")),
        ("/trades/{trade_id}/close", "post", api.post("/trades/999999/close")),
        ("/quotes", "get", api.get("/quotes?symbols=AAPL,ZZZZ")),
        ("/quotes", "get", api.get("/quotes?symbols=,")),
        ("/settings/risk", "get", api.get("/settings/risk")),
        ("/settings/risk", "put", api.put("/settings/risk", json={"daily_trade_limit": 5})),
        ("/settings/risk", "put", api.put("/settings/risk", json={"daily_trade_limit": -5})),
    ]
    for path, method, response in calls:
        documented = spec["paths"][path][method]["responses"]
        assert str(response.status_code) in documented, (path, method, response.status_code)
        assert_conforms(spec, path, method, response)


def test_filled_order_trade_and_position_match_their_schemas(spec, api, set_price, celery_worker):
    from tests.trading_http.conftest import wait_for_order
    set_price("AAPL", "100")
    order = api.post("/orders", json=market_buy("AAPL", "3", stop_loss_price="95", take_profit_price="120")).get_json()
    filled = wait_for_order(api, order["id"], {"filled"})
    trade_id = filled["trade_id"]
    calls = [
        ("/orders/{order_id}", "get", api.get(f"/orders/{order['id']}")),
        ("/positions", "get", api.get("/positions")),
        ("/trades/{trade_id}", "get", api.get(f"/trades/{trade_id}")),
        ("/trades/{trade_id}/close", "post", api.post(f"/trades/{trade_id}/close")),
        ("/trades/{trade_id}/close", "post", api.post(f"/trades/{trade_id}/close")),
        ("/trades", "get", api.get("/trades")),
    ]
    assert [response.status_code for _, _, response in calls] == [200, 200, 200, 202, 409, 200]
    assert calls[1][2].get_json()["items"][0]["take_profit_price"] == "120"
    for path, method, response in calls:
        assert_conforms(spec, path, method, response)
