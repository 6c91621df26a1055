"""POST /api/v1/trades/<id>/closed-at-broker (and the Trades page form): a position the user closed at the broker
directly is recorded as closed at the price they give. Its broker-side stop is cancelled first, so nothing is
left at the broker to sell again; no order is sent; the realized P&L follows from that price."""
from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import func, select

from tests.conftest import csrf_token_from
from tests.trading_http.conftest import bought_with_resting_stop, market_buy, wait_for_order


def guarded_long(api, set_price, quantity: str = "10") -> dict:
    """A long AAPL bought at market (about 100) with its broker-side stop at 90 resting at the paper broker."""
    set_price("AAPL", "100")
    return bought_with_resting_stop(api, "AAPL", quantity, "90")


def test_a_trade_closed_at_the_broker_is_recorded_at_its_price_and_its_stop_cancelled(db, api, set_price,
                                                                                     celery_worker):
    from models import AuditEvent, Order, PaperOrder
    opened = guarded_long(api, set_price)
    orders_before = db.session.scalar(select(func.count(Order.id)))
    answer = api.post(f"/trades/{opened['id']}/closed-at-broker", json={"exit_price": "104.50"})
    assert answer.status_code == 200, answer.get_json()
    trade = answer.get_json()
    assert (trade["status"], trade["close_reason"], trade["exit_price"], trade["exit_quantity"]) == (
        "closed", "broker", "104.5", "10")
    entry, fees = Decimal(opened["entry_price"]), Decimal(opened["fees"])
    assert Decimal(trade["realized_pnl"]) == (Decimal("104.50") - entry) * 10 - fees
    assert db.session.scalar(select(func.count(Order.id))) == orders_before  # no order was sent
    statuses = {order["purpose"]: order["status"] for order in api.get("/orders").get_json()["items"]}
    assert statuses == {"stop_loss": "cancelled", "entry": "filled"}
    assert [order.status for order in db.session.scalars(select(PaperOrder).order_by(PaperOrder.id))] == [
        "filled", "cancelled"]  # the entry, and the stop: nothing is left working at the broker
    assert api.get("/positions").get_json()["items"] == []
    [event] = db.session.scalars(select(AuditEvent).where(AuditEvent.event_type == "trade.closed_at_broker"))
    assert event.details["exit_price"] == "104.5" and event.details["quantity"] == "10"


def test_a_short_closed_at_the_broker_gains_when_covered_lower(db, client, login, user, api, set_price,
                                                             celery_worker):
    set_price("AAPL", "100")
    placed = api.post("/orders", json={**market_buy("AAPL", "5"), "side": "sell", "instruction": "SELL_SHORT"})
    trade_id = wait_for_order(api, placed.get_json()["id"], {"filled"})["trade_id"]
    opened = api.get(f"/trades/{trade_id}").get_json()
    login(user)
    assert "Bought back 5 AAPL at the broker yourself?" in client.get("/trades").get_data(as_text=True)
    trade = api.post(f"/trades/{trade_id}/closed-at-broker", json={"exit_price": 95}).get_json()
    entry, fees = Decimal(opened["entry_price"]), Decimal(opened["fees"])
    assert Decimal(trade["realized_pnl"]) == (entry - Decimal(95)) * 5 - fees > 0


@pytest.mark.parametrize("body, status", [
    ({}, 422), ({"exit_price": "0"}, 422), ({"exit_price": "-3"}, 422), ({"exit_price": "abc"}, 422),
    ({"exit_price": True}, 422), ({"exit_price": "1e400"}, 422), ({"exit_price": "5", "quantity": "1"}, 422),
    ([1, 2], 400),
])
def test_a_bad_body_is_refused_and_the_trade_stays_open_and_guarded(db, api, set_price, celery_worker, body,
                                                                    status):
    opened = guarded_long(api, set_price)
    answer = api.post(f"/trades/{opened['id']}/closed-at-broker", json=body)
    assert answer.status_code == status, answer.get_json()
    assert api.get(f"/trades/{opened['id']}").get_json()["status"] == "open"
    assert [order["status"] for order in api.get("/orders").get_json()["items"]] == ["submitted", "filled"]


def test_only_an_open_trade_of_ones_own(db, api, api_client_for, new_user, set_price, celery_worker):
    opened = guarded_long(api, set_price)
    stranger = api_client_for(new_user())
    assert stranger.post(f"/trades/{opened['id']}/closed-at-broker", json={"exit_price": "1"}).status_code == 404
    assert api.post(f"/trades/{opened['id']}/closed-at-broker", json={"exit_price": "101"}).status_code == 200
    again = api.post(f"/trades/{opened['id']}/closed-at-broker", json={"exit_price": "101"})
    assert (again.status_code, again.get_json()["error"]["code"]) == (409, "trade.not_open")


def test_the_trades_page_form(db, client, login, user, api, set_price, celery_worker):
    opened = guarded_long(api, set_price)
    login(user)
    page = client.get("/trades").get_data(as_text=True)
    assert f"/trades/{opened['id']}/closed-at-broker" in page and "Sold 10 AAPL at the broker yourself?" in page
    refused = client.post(f"/trades/{opened['id']}/closed-at-broker",
                          data={"csrf_token": csrf_token_from(page), "exit_price": "nope"}, follow_redirects=True)
    assert "exit_price must be a number" in refused.get_data(as_text=True)
    done = client.post(f"/trades/{opened['id']}/closed-at-broker",
                       data={"csrf_token": csrf_token_from(page), "exit_price": "99"}, follow_redirects=True)
    assert f"Trade #{opened['id']} (AAPL) is recorded as closed at the broker." in done.get_data(as_text=True)
    assert api.get(f"/trades/{opened['id']}").get_json()["close_reason"] == "broker"
