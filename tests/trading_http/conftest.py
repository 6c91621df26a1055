"""Fixtures for the trading pages and API: API-key clients, manual prices, order placement, polling."""
from __future__ import annotations

import time

import pytest



class ApiClient:
    """The Flask test client with a Bearer API key on every request."""

    def __init__(self, client, secret: str):
        self.client, self.headers = client, {"Authorization": f"Bearer {secret}"}

    def __getattr__(self, method):
        def call(path, **kwargs):
            headers = {**self.headers, **kwargs.pop("headers", {})}
            return getattr(self.client, method)(f"/api/v1{path}", headers=headers, **kwargs)
        return call


@pytest.fixture
def api_client_for(app, db):
    """api_client_for(user) → an ApiClient authenticated with a fresh API key of that user."""
    from utils.api_auth import create_api_key

    def factory(user):
        _key, secret = create_api_key(user, "tests")
        db.session.commit()
        return ApiClient(app.test_client(), secret)

    return factory


@pytest.fixture
def new_user(make_user):
    """new_user(is_admin=False) → a committed user with a unique, deliverable-looking email."""
    counter = iter(range(1, 10_000))

    def factory(is_admin: bool = False):
        return make_user(email=f"trader{next(counter)}@example.com", is_admin=is_admin)

    return factory


@pytest.fixture
def user(new_user):
    return new_user()


@pytest.fixture
def api(api_client_for, user):
    return api_client_for(user)


def wait_for(fetch, accept, timeout: float = 20.0, interval: float = 0.1):
    """Call fetch() until accept(result) is true; fail with the last result after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    result = fetch()
    while not accept(result):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last result: {result!r}")
        time.sleep(interval)
        result = fetch()
    return result


def wait_for_order(api, order_id: int, statuses: set[str], timeout: float = 20.0, sync: bool = False) -> dict:
    """Poll GET /orders/<id> until its status is one of `statuses`; return the order JSON.

    `sync=True` also sends the beat's `orders.sync` to the worker before each look, as beat would on its
    schedule (fills of resting orders reach our records through that sync).
    """
    from utils import jobs

    def fetch():
        if sync:
            jobs.send_now(jobs.ORDERS_SYNC)
        return api.get(f"/orders/{order_id}").get_json()

    return wait_for(fetch, lambda order: order.get("status") in statuses, timeout=timeout, interval=0.2)


def market_buy(symbol: str = "AAPL", quantity: str = "10", **extra) -> dict:
    return {"symbol": symbol, "side": "buy", "quantity": quantity, "type": "market", "time_in_force": "day", **extra}



def bought_with_resting_stop(api, symbol: str, quantity: str, stop_loss_price: str, **extra) -> dict:
    """A market buy of `symbol`, filled, with its broker-side stop resting at the paper broker; returns the
    trade's JSON."""
    placed = api.post("/orders", json=market_buy(symbol, quantity, stop_loss_price=stop_loss_price, **extra))
    assert placed.status_code == 202, placed.get_json()
    trade_id = wait_for_order(api, placed.get_json()["id"], {"filled"})["trade_id"]
    stop = wait_for(lambda: api.get("/orders").get_json()["items"], lambda items: len(items) == 2)[0]
    assert stop["purpose"] == "stop_loss"
    wait_for_order(api, stop["id"], {"submitted"})
    return api.get(f"/trades/{trade_id}").get_json()
