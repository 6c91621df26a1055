"""No order is accepted that the paper broker is sure to reject for its price: a stale or missing quote is
a 422 on the symbol when the order is placed, replaced or a trade closed by hand, and nothing is stored.
A price that goes stale after the order was accepted is still caught by the paper broker in the worker."""
from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import func, select

from tests.market.conftest import age_the_price
from tests.trading.linked_schwab import app_config, schwab_order, schwab_port  # noqa: F401
from tests.trading_http.conftest import market_buy, wait_for, wait_for_order


def _stored_orders(db) -> int:
    from models import Order, Trade
    db.session.expire_all()
    return db.session.scalar(select(func.count(Order.id))) + db.session.scalar(select(func.count(Trade.id)))


def _refused_for_price(response, code: str = "stale_quote") -> dict:
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == code and error["details"]["field"] == "symbol"
    return error


@pytest.mark.parametrize("extra", [{}, {"type": "limit", "limit_price": "99"}], ids=["market", "limit"])
def test_an_order_on_a_stale_price_is_refused_when_placed_and_nothing_is_stored(app, db, api, set_price, extra):
    set_price("AAPL", "100")
    age_the_price(app, db, "AAPL")
    error = _refused_for_price(api.post("/orders", json=market_buy(**extra)))
    assert "No current price for AAPL" in error["message"]
    assert error["details"]["max_age_seconds"] == app.config["QUOTE_MAX_AGE_SECONDS"]
    assert _stored_orders(db) == 0


def test_an_order_in_a_symbol_without_any_price_is_refused_when_placed(db, api, set_price):
    set_price("AAPL", "100")
    _refused_for_price(api.post("/orders", json=market_buy("MSFT", type="limit", limit_price="10")), "invalid_symbol")
    assert _stored_orders(db) == 0


def test_a_price_that_goes_stale_after_acceptance_is_still_rejected_by_the_worker(app, db, api, set_price, request):
    from models import Trade
    set_price("AAPL", "100")
    placed = api.post("/orders", json=market_buy())
    assert placed.status_code == 202
    age_the_price(app, db, "AAPL")
    request.getfixturevalue("celery_worker")  # the worker starts only now, on the stale price
    order = wait_for_order(api, placed.get_json()["id"], {"rejected", "filled"})
    assert order["status"] == "rejected" and "No current price for AAPL" in order["reject_reason"]
    assert db.session.get(Trade, order["trade_id"]).status == "cancelled"


def test_a_replace_on_a_stale_price_is_refused_and_the_old_order_stays(app, db, api, set_price, celery_worker):
    set_price("AAPL", "100")
    placed = api.post("/orders", json=market_buy(type="limit", limit_price="90", time_in_force="gtc"))
    resting = wait_for_order(api, placed.get_json()["id"], {"submitted"})
    age_the_price(app, db, "AAPL")
    _refused_for_price(api.patch(f"/orders/{resting['id']}", json={"limit_price": "91"}))
    assert api.get(f"/orders/{resting['id']}").get_json()["status"] == "submitted"
    assert api.get("/orders").get_json()["items"] == [api.get(f"/orders/{resting['id']}").get_json()]


def test_a_manual_close_on_a_stale_price_is_refused_and_the_trade_stays_open(app, db, api, set_price, celery_worker):
    set_price("AAPL", "100")
    placed = api.post("/orders", json=market_buy(stop_loss_price="90"))
    trade_id = wait_for_order(api, placed.get_json()["id"], {"filled"})["trade_id"]
    stop = wait_for(lambda: api.get("/orders").get_json()["items"], lambda items: len(items) == 2)[0]
    assert stop["purpose"] == "stop_loss"
    wait_for_order(api, stop["id"], {"submitted"})  # the broker-side stop guards the position
    age_the_price(app, db, "AAPL")
    _refused_for_price(api.post(f"/trades/{trade_id}/close"))
    trade = api.get(f"/trades/{trade_id}").get_json()
    assert (trade["status"], trade["stop_loss_price"]) == ("open", "90")
    orders = api.get("/orders").get_json()["items"]
    assert [(order["purpose"], order["status"]) for order in orders] == [("stop_loss", "submitted"),
                                                                        ("entry", "filled")]


def test_an_order_at_schwab_is_left_to_schwab_whatever_the_age_of_our_price(app, db, user, set_price, schwab_order,
                                                                          schwab_port):
    """Only the paper broker's refusal is certain: Schwab's own quotes are old after hours while it still
    takes orders, so an order there is accepted (and sent) however old the price we hold."""
    from tests.fakes import schwab as fake_schwab
    from utils import orders
    set_price("AAPL", "100")
    age_the_price(app, db, "AAPL")
    server = fake_schwab.linked_server(schwab_port).start()
    try:
        order, created = orders.place_order(user, {**market_buy(type="limit", limit_price="99"),
                                                   "broker_connection_id": schwab_order.broker_connection_id})
    finally:
        server.stop()
    assert created and (order.status, order.symbol, order.limit_price) == ("pending", "AAPL", Decimal("99"))
