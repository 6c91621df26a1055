"""Orders the account holder placed at Schwab themselves sit in the same order list Tradewarden reads to find
its own orders. An OCO pair there (a parent with no legs of its own) must not stop that search: a lost send
is still found and adopted, and an instant fill without a Location is still read back."""
from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from tests.fakes import schwab as fake_schwab
from tests.trading.linked_schwab import app_config, schwab_order, schwab_port  # noqa: F401

# One pair listed before every order the fake gives an id to, one after: a search from either end meets one first.
OCO_IDS = (1000, 2_000_000_000)


@pytest.fixture
def schwab_with_an_oco_pair(schwab_port):
    server = fake_schwab.linked_server(schwab_port).start()
    state = server.server.app.config["state"]
    for oco_id in OCO_IDS:
        fake_schwab.add_oco_order(state, fake_schwab.ACCOUNTS[0]["hashValue"], oco_id)
    yield state
    server.stop()


def test_a_lost_send_is_found_past_an_oco_pair_the_user_placed_at_schwab(db, schwab_order, schwab_with_an_oco_pair):
    from utils import orders
    broker, request = orders.broker_for(schwab_order), orders.broker_request(schwab_order)
    lost = broker.place_order(request)  # Schwab took it; say its answer never reached us

    found = broker.find_sent_order(request, schwab_order.created_at, frozenset())

    assert found is not None and found.broker_order_id == lost.broker_order_id
    assert (found.symbol, found.quantity) == ("AAPL", Decimal("10"))


def test_an_instant_fill_without_location_is_read_back_past_an_oco_pair(db, schwab_order, schwab_with_an_oco_pair):
    from utils import orders
    request = dataclasses.replace(orders.broker_request(schwab_order), symbol="SPY")

    order = orders.broker_for(schwab_order).place_order(request)  # the fake omits Location for an SPY fill

    assert (order.status, order.symbol, order.filled_quantity) == ("filled", "SPY", Decimal("10"))
    assert int(order.broker_order_id) not in OCO_IDS
