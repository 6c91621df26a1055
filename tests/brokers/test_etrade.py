"""E*TRADE over OAuth 1.0a: request token (oob), authorize with key & token, verifier form, access token,
renew after inactivity, midnight-ET expiry, and the preview-then-place adapter."""
from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import g
from sqlalchemy import select, update

from models import AuditEvent, BrokerAccount, BrokerConnection, Trade
from tests.conftest import csrf_token_from, sent_order
from tests.brokers.conftest import start_connect
from utils import broker_links
from utils.brokers import get_broker
from utils.brokers.base import OrderRequest
from utils.dbtypes import utcnow
from utils.errors import BrokerAuthExpired, BrokerUnavailable, InsufficientFunds, OrderNotCancelable


def _verifier_page(client):
    assert start_connect(client, "etrade").headers["Location"].endswith("/brokers/etrade/verify")
    g.pop("csrf_token", None)
    html = client.get("/brokers/etrade/verify").get_data(as_text=True)
    authorize = re.search(r'href="([^"]*/e/t/etws/authorize[^"]*)"', html).group(1).replace("&amp;", "&")
    return html, authorize


def _link(client, login, user, wrong=False):
    login(user)
    html, authorize = _verifier_page(client)
    consent = requests.get(authorize, timeout=5).text
    verifier = re.search(r'id="verifier" value="([A-Z0-9]+)"', consent).group(1)
    return client.post("/brokers/etrade/verify", data={"csrf_token": csrf_token_from(html),
                                                       "verifier": "WRONG1" if wrong else verifier})


@pytest.fixture
def etrade(client, login, user, db):
    assert _link(client, login, user).status_code == 302
    return get_broker(db.session.scalar(select(BrokerConnection)))


def test_authorize_url_carries_key_and_token(client, login, user):
    login(user)
    _, authorize = _verifier_page(client)
    query = parse_qs(urlsplit(authorize).query)
    assert set(query) == {"key", "token"} and query["key"] == ["etrade-fake-consumer-key"]


def test_full_link_stores_access_token_and_account(client, login, user, db, fake_servers):
    response = _link(client, login, user)
    assert response.status_code == 302
    connection = db.session.scalar(select(BrokerConnection))
    assert connection.broker.value == "etrade" and connection.status.value == "connected"
    assert set(json.loads(connection.token_set)) >= {"oauth_token", "oauth_token_secret"}
    assert connection.token_expires_at > utcnow()
    assert db.session.scalar(select(BrokerAccount)).last4 == "4290"
    assert "••••4290" in client.get("/brokers").get_data(as_text=True)


def test_wrong_verifier_stores_nothing_and_is_audited(client, login, user, db):
    response = _link(client, login, user, wrong=True)
    assert response.status_code == 302
    assert "did not accept that verification code" in client.get("/brokers").get_data(as_text=True)
    assert db.session.scalar(select(BrokerConnection)) is None
    assert db.session.scalar(select(AuditEvent).where(AuditEvent.event_type == "broker.link_failed"))


def _order(order_type="market", quantity="10", limit=None, cid=None):
    return OrderRequest(client_order_id=cid or uuid.uuid4().hex, symbol="AAPL", asset_type="equity", side="buy",
                        instruction="BUY", order_type=order_type, quantity=Decimal(quantity),
                        limit_price=Decimal(limit) if limit else None)


def test_preview_then_place_fills_market_order_once(etrade, fakes):
    request = _order()
    order = etrade.place_order(request)
    assert order.status == "filled" and order.filled_quantity == Decimal("10") and order.fills == ()  # totals only
    assert etrade.place_order(request).broker_order_id == order.broker_order_id  # no double
    calls = fakes["etrade"].stats()["api_calls"]
    assert calls["POST /v1/accounts/<key>/orders/preview.json"] == 1
    assert calls["POST /v1/accounts/<key>/orders/place.json"] == 1


def test_change_and_cancel(etrade):
    order = etrade.place_order(_order("limit", "5", limit="180.00"))
    new = etrade.replace_order(order.broker_order_id, _order("limit", "5", limit="181.00"))
    assert new.broker_order_id != order.broker_order_id and new.status == "submitted"
    assert etrade.get_order(order.broker_order_id).status == "cancelled"
    assert etrade.cancel_order(new.broker_order_id).status == "cancelled"
    with pytest.raises(OrderNotCancelable):
        etrade.cancel_order(new.broker_order_id)


def test_business_error_and_html_rate_limit(etrade, fakes):
    with pytest.raises(InsufficientFunds):
        etrade.place_order(_order(quantity="1000"))
    fakes["etrade"].control(fail_next=[400])  # "Number of requests exceeded the rate limit set" (HTML)
    assert etrade.get_quotes(["AAPL", "NOPE"])["AAPL"].last == Decimal("190.0")
    assert fakes["etrade"].stats()["api_calls"]["GET /v1/market/quote/<symbols>.json"] == 2


def test_a_failed_preview_is_retried_and_never_counts_as_an_order_that_may_have_arrived(etrade, fakes):
    """A preview places nothing: a 5xx on it is retried like a read, and when it keeps failing the order is
    known not to be at E*TRADE (it can be failed, not kept waiting for a lookup). A 5xx on the place call
    that follows may come after E*TRADE placed the order, so that one is in doubt."""
    preview, place = "POST /v1/accounts/<key>/orders/preview.json", "POST /v1/accounts/<key>/orders/place.json"
    fakes["etrade"].control(fail_next=[0, 503, 503, 503])  # the lookup by client id answers; every preview fails
    with pytest.raises(BrokerUnavailable) as raised:
        etrade.place_order(_order())
    assert raised.value.may_have_arrived is False
    calls = fakes["etrade"].stats()["api_calls"]
    assert (calls[preview], calls.get(place, 0)) == (3, 0)

    fakes["etrade"].control(fail_next=[0, 0, 503])  # lookup and preview answer; the place call gets 503
    with pytest.raises(BrokerUnavailable) as raised:
        etrade.place_order(_order())
    assert raised.value.may_have_arrived is True


def test_renews_after_two_hours_idle(etrade, fakes, db):
    connection = db.session.scalar(select(BrokerConnection))
    token = json.loads(connection.token_set)
    token["last_used_at"] -= 3 * 3600
    connection.token_set = json.dumps(token)
    db.session.commit()
    fakes["etrade"].control(idle_seconds=3 * 3600)
    assert etrade.get_account().equity == Decimal("60000.0")
    assert fakes["etrade"].counter("renew") == 1


def test_midnight_eastern_expires_the_link_with_relink_prompt(etrade, db, client):
    db.session.execute(update(BrokerConnection).values(token_expires_at=utcnow() - timedelta(minutes=1)))
    db.session.commit()
    assert broker_links.keep_links_alive()["expired"] == 1
    db.session.commit()
    connection = db.session.scalar(select(BrokerConnection))
    assert connection.status.value == "expired" and connection.token_set is None
    with pytest.raises(BrokerAuthExpired):
        get_broker(connection).get_account()
    assert "link it again" in client.get("/brokers").get_data(as_text=True)


def test_disconnect_revokes_access_token(etrade, client, db, fakes):
    connection = db.session.scalar(select(BrokerConnection))
    g.pop("csrf_token", None)
    page = client.get("/brokers").get_data(as_text=True)
    assert client.post(f"/brokers/{connection.id}/disconnect", data={"csrf_token": csrf_token_from(page)}).status_code == 302
    assert fakes["etrade"].counter("revoked") == 1
    db.session.expire_all()
    assert db.session.get(BrokerConnection, connection.id).status.value == "revoked"


@pytest.fixture
def etrade_order(etrade, db):
    """A 10-share limit buy sent through the order service to the fake E*TRADE (resting, `submitted`)."""
    order = sent_order(db, etrade.connection.user_id, etrade.connection.id, order_type="limit",
                       limit_price=Decimal("180.00"), quantity=Decimal("10"))
    assert order.status == "submitted" and order.broker_order_id
    return order


def _execute_and_sync(fakes, db, order, quantity: str, price: str):
    from utils import orders
    fakes["etrade"].control(execute={"order_id": int(order.broker_order_id), "quantity": quantity, "price": price})
    orders.sync_order(order.id)
    db.session.commit()
    return order


def test_partial_fills_reported_as_running_totals_are_recorded_once_each(etrade_order, fakes, db):
    from utils import orders
    order = _execute_and_sync(fakes, db, etrade_order, "4", "179.50")
    assert order.status == "partially_filled" and order.filled_quantity == Decimal("4")
    assert [(fill.quantity, fill.price) for fill in order.fills] == [(Decimal("4"), Decimal("179.5"))]

    order = _execute_and_sync(fakes, db, order, "6", "179.75")
    orders.sync_order(order.id)  # asking again adds nothing
    db.session.commit()
    assert order.status == "filled" and order.filled_quantity == Decimal("10")
    assert [fill.quantity for fill in order.fills] == [Decimal("4"), Decimal("6")]
    assert order.fills[1].price == Decimal("179.75") and order.average_fill_price == Decimal("179.65")
    assert db.session.get(Trade, order.trade_id).quantity == Decimal("10")


def test_a_partly_filled_order_cancelled_at_etrade_keeps_its_fill(etrade_order, etrade, fakes, db):
    from utils import orders
    order = _execute_and_sync(fakes, db, etrade_order, "3", "179.90")
    etrade.cancel_order(order.broker_order_id)
    orders.sync_order(order.id)
    db.session.commit()
    assert order.status == "cancelled" and order.filled_quantity == Decimal("3")
    trade = db.session.get(Trade, order.trade_id)
    assert trade.quantity == Decimal("3") and trade.status == "open"


def test_an_order_beyond_the_first_page_of_the_listing_is_still_found_by_its_client_id(etrade):
    """E*TRADE lists orders newest first, 100 a page: the lookup that keeps a resend from doubling an order
    must follow the marker to older pages."""
    request = _order("limit", "1", limit="150.00")
    target = etrade.place_order(request)
    for _ in range(120):  # newer orders push the target onto the second page
        etrade.place_order(_order("limit", "1", limit="150.00"))
    found = etrade.find_order_by_client_id(request.client_order_id)
    assert found is not None and found.broker_order_id == target.broker_order_id
    assert etrade.place_order(request).broker_order_id == target.broker_order_id  # no second order


def test_positions_carry_our_symbols_and_an_option_its_occ_symbol(etrade):
    positions = {position.symbol: position for position in etrade.get_positions()}
    assert set(positions) == {"AAPL", "AAPL240621C00192500"}  # an OPTN product names only its underlying
    assert (positions["AAPL"].asset_type, positions["AAPL"].quantity) == ("equity", Decimal("20"))
    option = positions["AAPL240621C00192500"]
    assert (option.asset_type, option.quantity) == ("option", Decimal("-3"))
