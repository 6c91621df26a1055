"""Setting prices by hand: `PUT /api/v1/admin/prices/<symbol>` and `flask prices set`."""
from __future__ import annotations

from decimal import Decimal

import pytest

from tests.market.conftest import order_request


@pytest.fixture
def bearer(db):
    """bearer(user) → Authorization header with a fresh API key of that user."""
    from utils import api_auth

    def header(owner) -> dict:
        _key, secret = api_auth.create_api_key(owner, "prices")
        db.session.commit()
        return {"Authorization": f"Bearer {secret}"}

    return header


@pytest.fixture
def admin(make_user):
    return make_user(email="prices-admin@example.com", is_admin=True)


def test_admin_sets_a_price_that_quotes_return(client, admin, bearer):
    from utils import market_data
    response = client.put("/api/v1/admin/prices/aapl", json={"price": "190.25"}, headers=bearer(admin))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["symbol"], body["price"], body["source"]) == ("AAPL", "190.25", "manual")
    assert body["as_of"].endswith("Z") and "+00:00" not in body["as_of"]
    assert market_data.get_quotes(["AAPL"])["AAPL"].last == Decimal("190.25")


def test_price_set_is_audited(client, admin, bearer, db):
    from models import AuditEvent
    client.put("/api/v1/admin/prices/MSFT", json={"price": "420"}, headers=bearer(admin))
    event = db.session.query(AuditEvent).filter_by(event_type="market.price_set").one()
    assert event.details == {"symbol": "MSFT", "price": "420"} and event.actor_id == admin.id


def test_a_price_with_trailing_zeros_is_accepted(client, admin, bearer):
    response = client.put("/api/v1/admin/prices/AAPL", json={"price": "190.2500000000"}, headers=bearer(admin))
    assert response.status_code == 200, response.get_json()
    assert Decimal(response.get_json()["price"]) == Decimal("190.25")


def test_non_admin_gets_403(client, user, bearer):
    from utils import market_data
    response = client.put("/api/v1/admin/prices/AAPL", json={"price": "1"}, headers=bearer(user))
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "forbidden"
    assert market_data.get_quotes(["AAPL"]) == {}


def test_without_a_credential_401(client):
    assert client.put("/api/v1/admin/prices/AAPL", json={"price": "1"}).status_code == 401


@pytest.mark.parametrize("body", [{"price": "-1"}, {"price": "0"}, {"price": "abc"}, {"price": 1.5},
                                  {"price": "1.123456789"}, {}, {"price": "1", "extra": 1}])
def test_bad_price_is_422(client, admin, bearer, body):
    response = client.put("/api/v1/admin/prices/AAPL", json=body, headers=bearer(admin))
    assert response.status_code == 422, response.get_json()


def test_bad_symbol_is_422(client, admin, bearer):
    response = client.put("/api/v1/admin/prices/not%20a%20symbol", json={"price": "1"}, headers=bearer(admin))
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "invalid_symbol"


def test_non_json_body_is_400(client, admin, bearer):
    response = client.put("/api/v1/admin/prices/AAPL", data="price=1", headers=bearer(admin))
    assert response.status_code == 400


class TestSimulatedSource:
    @pytest.fixture
    def market_settings(self):
        return {"MARKET_DATA_SOURCE": "simulated"}

    def test_setting_a_price_is_409_unless_the_source_is_manual(self, client, admin, bearer):
        response = client.put("/api/v1/admin/prices/AAPL", json={"price": "1"}, headers=bearer(admin))
        assert response.status_code == 409 and response.get_json()["error"]["code"] == "market_data_not_manual"

    def test_cli_refuses_too(self, app):
        result = app.test_cli_runner().invoke(args=["prices", "set", "AAPL", "1"])
        assert result.exit_code != 0 and "MARKET_DATA_SOURCE=manual" in result.output


def test_openapi_documents_the_operation_and_its_statuses(app):
    from routes.api import admin
    operation = admin.OPENAPI_PATHS["/admin/prices/{symbol}"]["put"]
    assert {"200", "401", "403", "409", "422"} <= set(operation["responses"])


def test_cli_sets_a_price(app):
    from utils import market_data
    result = app.test_cli_runner().invoke(args=["prices", "set", "AAPL", "190.25"])
    assert result.exit_code == 0, result.output
    assert "AAPL = 190.25" in result.output
    assert market_data.get_quotes(["AAPL"])["AAPL"].last == Decimal("190.25")


def test_cli_rejects_a_bad_price(app):
    result = app.test_cli_runner().invoke(args=["prices", "set", "AAPL", "abc"])
    assert result.exit_code != 0 and "positive" in result.output


def test_a_price_set_through_the_api_fills_a_resting_order_via_the_worker(client, admin, bearer, broker, db,
                                                                          celery_worker):
    """The admin API enqueues `market.match` after commit; a real worker fills the crossing limit order."""
    import time
    from utils import market_data
    client.put("/api/v1/admin/prices/AAPL", json={"price": "100"}, headers=bearer(admin))
    order = broker.place_order(order_request(order_type="limit", limit_price="95", quantity="4"))
    db.session.commit()
    assert order.status == "submitted"
    client.put("/api/v1/admin/prices/AAPL", json={"price": "90"}, headers=bearer(admin))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and broker.get_order(order.broker_order_id).status != "filled":
        db.session.rollback()
        time.sleep(0.05)
    filled = broker.get_order(order.broker_order_id)
    assert filled.status == "filled" and filled.average_fill_price == market_data.get_quotes(["AAPL"])["AAPL"].ask
