"""GET /api/v1/broker-connections and MARKET_DATA_SOURCE=schwab."""
from __future__ import annotations

from decimal import Decimal

import pytest

from tests.conftest import TEST_PASSWORD
from utils.errors import DependencyUnavailable


def _bearer(client, user) -> dict:
    answer = client.post("/api/v1/auth/token", json={"email": user.email, "password": TEST_PASSWORD})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return {"Authorization": f"Bearer {answer.get_json()['access_token']}"}


def test_api_lists_connections_without_tokens_and_with_masked_numbers(link, client, user):
    link("schwab")
    headers = _bearer(client, user)
    body = client.get("/api/v1/broker-connections", headers=headers).get_json()
    assert len(body["items"]) == 1 and body["next_cursor"] is None
    item = body["items"][0]
    assert item["broker"] == "schwab" and item["status"] == "connected"
    assert {a["masked_number"] for a in item["accounts"]} == {"••••6789", "••••4321"}
    assert "token" not in str(body).replace("token_expires_at", "") and "123456789" not in str(body)


def test_api_requires_auth(client):
    assert client.get("/api/v1/broker-connections").status_code == 401


@pytest.fixture
def app_config(app_config):
    return {**app_config, "MARKET_DATA_SOURCE": "schwab"}


def test_schwab_market_data_source_reads_through_an_admins_link(app, client, login, make_user, fakes):
    from tests.brokers.conftest import consent, start_connect
    from utils import market_data
    with pytest.raises(DependencyUnavailable):
        market_data.current_source().fetch(["AAPL"])
    admin = make_user(is_admin=True)
    login(admin)
    client.get(consent(start_connect(client, "schwab").headers["Location"]))
    quotes = market_data.current_source().fetch(["AAPL", "ZZZZ"])
    assert set(quotes) == {"AAPL"} and quotes["AAPL"].last == Decimal("190.0")
