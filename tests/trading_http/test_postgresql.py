"""The order path on PostgreSQL, the production database: its NUMERIC(28, 10) reads every amount back with ten
decimal places (1.0000000000), which SQLite's canonical text never shows. Orders placed through the API, executed
by a real worker and filled by the paper broker, a trade partly closed, a risk denial, an idempotent resend.
Also what differs on PostgreSQL: amounts come back as written ("101.5"), and ids beyond its 32-bit INTEGER
are refused as unknown instead of failing the query ("integer out of range").

`TEST_DATABASE=postgresql` runs the whole suite on PostgreSQL; these run on it in every run."""
from __future__ import annotations

from decimal import Decimal

import pytest
from flask_migrate import upgrade

from tests.conftest import ROOT, base_config
from tests.trading_http.conftest import market_buy, wait_for_order
# The same API tests again, here on PostgreSQL (this module's database_url).
from tests.trading_http.test_api_orders import (  # noqa: F401
    test_limit_order_rests_then_fills_when_the_manual_price_crosses, test_market_order_via_api_is_filled_by_the_worker,
    test_risk_denial_is_422_with_its_code_and_numbers, test_same_client_order_id_twice_gives_one_order)
from tests.trading_http.test_api_trades_market_settings import test_quotes_for_known_and_unknown_symbols  # noqa: F401

BEYOND_INTEGER = 2**31  # one more than PostgreSQL's INTEGER holds


@pytest.fixture
def database_url(postgres_server, redis_server) -> str:
    """A new PostgreSQL database migrated to head."""
    from main import create_app
    from utils.extensions import db
    url = postgres_server.new_database()
    migrating = create_app(base_config(redis_server.url, url))
    with migrating.app_context():
        upgrade(directory=str(ROOT / "migrations"))
        db.engine.dispose()
    return url


def test_a_market_order_is_filled_and_its_trade_partly_closed_on_postgresql(api, db, set_price, celery_worker):
    assert db.engine.dialect.name == "postgresql"
    set_price("AAPL", "100")
    placed = api.post("/orders", json=market_buy("AAPL", "10", stop_loss_price="90"))
    assert placed.status_code == 202, placed.get_json()

    filled = wait_for_order(api, placed.get_json()["id"], {"filled", "rejected", "failed"})
    assert filled["status"] == "filled", filled["reject_reason"]
    assert filled["quantity"] == filled["filled_quantity"] == "10" and filled["stop_loss_price"] == "90"

    exit_order = api.post("/orders", json={"symbol": "AAPL", "side": "sell", "quantity": "4", "type": "market",
                                           "trade_id": filled["trade_id"]})
    assert exit_order.status_code == 202, exit_order.get_json()
    sold = wait_for_order(api, exit_order.get_json()["id"], {"filled", "rejected", "failed"})
    assert sold["status"] == "filled", sold["reject_reason"]
    trade = api.get(f"/trades/{filled['trade_id']}").get_json()
    assert Decimal(trade["quantity"]) - Decimal(trade["exit_quantity"]) == Decimal("6")


def test_ids_beyond_the_integer_column_are_unknown_not_a_server_error(api, db):
    assert db.engine.dialect.name == "postgresql"
    for path in (f"/orders/{BEYOND_INTEGER}", f"/trades/{BEYOND_INTEGER}", f"/export-jobs/{BEYOND_INTEGER}",
                 f"/export-jobs/{2**63 - 2}/download"):
        assert api.get(path).status_code == 404, path
    assert api.post(f"/api-keys/{BEYOND_INTEGER}/revoke").status_code == 404
    placed = api.post("/orders", json=market_buy("AAPL", "1", trade_id=BEYOND_INTEGER))
    assert placed.status_code == 422 and placed.get_json()["error"]["details"]["field"] == "trade_id"
    listed = api.get(f"/orders?cursor={BEYOND_INTEGER}")
    assert listed.status_code == 422 and listed.get_json()["error"]["details"]["field"] == "cursor"

