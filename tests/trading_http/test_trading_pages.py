"""The trading pages: dashboard, order ticket (inline and risk errors), orders, status poll, trades, risk settings."""
from __future__ import annotations

import re

from sqlalchemy import func, select

from tests.conftest import csrf_token_from
from tests.trading_http.conftest import wait_for


def ticket_data(page_html: str, **fields) -> dict:
    """The order ticket's hidden fields (CSRF, client_order_id) plus a market buy, overridden by `fields`."""
    client_order_id = re.search(r'name="client_order_id"[^>]*value="([^"]+)"', page_html) or \
        re.search(r'value="([^"]+)"[^>]*name="client_order_id"', page_html)
    data = {"csrf_token": csrf_token_from(page_html), "client_order_id": client_order_id.group(1),
            "symbol": "AAPL", "side": "buy", "quantity": "5", "order_type": "market", "time_in_force": "day"}
    return {**data, **fields}


def place_from_ticket(client, **fields):
    page = client.get("/orders/new").get_data(as_text=True)
    return client.post("/orders/new", data=ticket_data(page, **fields))


def test_dashboard_of_a_new_user_shows_balances_and_an_empty_state(client, login, user):
    login(user)
    html = client.get("/").get_data(as_text=True)
    assert "<h1>Dashboard</h1>" in html
    assert "Equity" in html and "Buying power" in html and "100,000.00" in html
    assert "No open positions." in html and "Place your first order" in html
    assert "No orders yet." in html


def test_dashboard_after_orders_but_without_positions_names_each_type_by_its_prices(client, login, user,
                                                                                    set_price):
    login(user)
    set_price("AAPL", "100")
    place_from_ticket(client, order_type="limit", limit_price="90")
    place_from_ticket(client, order_type="stop_limit", stop_price="110", limit_price="111")
    html = client.get("/").get_data(as_text=True)
    assert "No open positions." in html and "Place your first order" not in html  # not a first order any more
    assert ">limit 90.00<" in html and ">stop 110.00, limit 111.00<" in html
    assert ">market<" not in html and " @ " not in html and "· exit" not in html  # entries carry no purpose mark


def test_dashboard_lists_recent_orders_and_open_positions(client, login, user, set_price, celery_worker):
    login(user)
    set_price("AAPL", "100")
    order_url = place_from_ticket(client).headers["Location"]
    wait_for(lambda: client.get(order_url + "/status.json").get_json(), lambda s: s["status"] == "filled")
    set_price("AAPL", "104")
    html = client.get("/").get_data(as_text=True)
    assert "No open positions." not in html
    assert re.search(r'class="symbol">AAPL<', html)
    assert re.search(r'class="num pos">\+\d+\.\d\d<', html)  # unrealized gain after the price rose
    assert order_url.rsplit("/", 1)[1] in html


def test_order_ticket_places_an_order_and_shows_it(client, login, user, set_price, db):
    from models import Order
    login(user)
    set_price("AAPL", "100")
    page = client.get("/orders/new")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for name in ("symbol", "side", "quantity", "order_type", "limit_price", "stop_price", "time_in_force",
                 "stop_loss_price", "take_profit_price"):
        assert f'name="{name}"' in html, name
    data = ticket_data(html, symbol="aapl", quantity="3", stop_loss_price="95")
    response = client.post("/orders/new", data=data)
    assert response.status_code == 302
    detail = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "AAPL" in detail and "Cancel order" in detail and "Events" in detail and "Fills" in detail
    again = client.post("/orders/new", data=data)  # a double submit of the same ticket
    assert again.headers["Location"] == response.headers["Location"]
    assert db.session.scalar(select(func.count(Order.id))) == 1


def test_order_ticket_shows_field_errors_inline(client, login, user):
    login(user)
    response = place_from_ticket(client, order_type="limit", quantity="-2", symbol="")
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert html.count('class="error"') >= 3
    assert "A limit price is required" in html and "Must be greater than zero." in html
    assert 'aria-invalid="true"' in html


def test_order_ticket_shows_a_service_validation_error_on_its_field(client, login, user, set_price):
    login(user)
    set_price("AAPL", "100")
    response = place_from_ticket(client, quantity="1.5")
    assert response.status_code == 422
    assert re.search(r'has-error.*?name="quantity".*?class="error">[^<]*whole number', response.get_data(as_text=True),
                     re.S)


def test_order_ticket_shows_a_stale_price_on_the_symbol(app, db, client, login, user, set_price):
    from tests.market.conftest import age_the_price
    login(user)
    set_price("AAPL", "100")
    age_the_price(app, db, "AAPL")
    response = place_from_ticket(client, quantity="1")
    assert response.status_code == 422
    assert re.search(r'has-error.*?name="symbol".*?class="error">No current price for AAPL',
                     response.get_data(as_text=True), re.S)


def test_order_ticket_shows_a_risk_denial_inline_with_its_numbers(client, login, user, set_price, api_client_for):
    api_client_for(user).put("/settings/risk", json={"max_concentration_pct": "1"})
    login(user)
    set_price("AAPL", "100")
    response = place_from_ticket(client, quantity="20", stop_loss_price="99")
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert 'id="risk-error"' in html and "risk.concentration" in html
    assert "Exposure after" in html and "<dd>1,000</dd>" in html and "<dd>1 %</dd>" in html  # limit: 1 % of 100,000
    assert 'value="20"' in html  # the ticket keeps what was typed


def test_orders_list_status_poll_and_cancel(client, login, user, set_price, new_user):
    login(user)
    set_price("AAPL", "100")
    order_url = place_from_ticket(client, order_type="limit", limit_price="90").headers["Location"]
    order_id = int(order_url.rsplit("/", 1)[1])
    listing = client.get("/orders").get_data(as_text=True)
    assert f'data-status-url="/orders/{order_id}/status.json"' in listing and 'data-open="true"' in listing
    status = client.get(f"/orders/{order_id}/status.json")
    assert status.get_json() == {"id": order_id, "status": "pending", "filled_quantity": "0",
                                 "average_fill_price": None, "open": True, "notice": None}

    detail = client.get(order_url).get_data(as_text=True)
    response = client.post(f"/orders/{order_id}/cancel", data={"csrf_token": csrf_token_from(detail)})
    assert response.status_code == 302
    assert client.get(f"/orders/{order_id}/status.json").get_json()["status"] == "cancelled"
    assert "Cancel order" not in client.get(order_url).get_data(as_text=True)
    assert client.get("/orders?status=cancelled").get_data(as_text=True).count("data-order-id=") == 1

    stranger_client = client.application.test_client()
    login(new_user(), test_client=stranger_client)
    assert stranger_client.get(order_url).status_code == 404
    assert stranger_client.get(f"/orders/{order_id}/status.json").status_code == 404


def test_trades_page_shows_open_trade_and_closes_it(client, login, user, set_price, celery_worker):
    login(user)
    set_price("AAPL", "100")
    order_url = place_from_ticket(client, quantity="2").headers["Location"]
    wait_for(lambda: client.get(order_url + "/status.json").get_json(), lambda s: s["status"] == "filled")
    html = client.get("/trades").get_data(as_text=True)
    assert "AAPL" in html and ">Close</button>" in html
    close_action = re.search(r'action="(/trades/\d+/close)"', html).group(1)
    response = client.post(close_action, data={"csrf_token": csrf_token_from(html)})
    assert response.status_code == 302
    closed = wait_for(lambda: client.get("/trades?status=closed").get_data(as_text=True),
                      lambda page: 'class="symbol">AAPL<' in page)
    assert "manual" in closed
    assert "No open trades." in client.get("/trades").get_data(as_text=True)
    assert ">market <span class=\"muted\">· exit</span><" in client.get("/orders").get_data(as_text=True)


def test_risk_settings_page_shows_saves_and_validates(client, login, user, api_client_for):
    login(user)
    html = client.get("/settings/risk").get_data(as_text=True)
    for name in ("max_risk_per_trade_pct", "default_stop_pct", "daily_trade_limit", "daily_notional_limit",
                 "max_concentration_pct", "daily_loss_limit_pct"):
        assert f'name="{name}"' in html, name
    data = {"csrf_token": csrf_token_from(html), "max_risk_per_trade_pct": "1.5", "default_stop_pct": "4",
            "daily_trade_limit": "12", "daily_notional_limit": "25000", "max_concentration_pct": "20",
            "daily_loss_limit_pct": "3"}
    assert client.post("/settings/risk", data=data).status_code == 302
    assert api_client_for(user).get("/settings/risk").get_json()["daily_trade_limit"] == 12

    bad = client.post("/settings/risk", data={**data, "max_concentration_pct": "250", "daily_trade_limit": "x"})
    assert bad.status_code == 422
    assert "Enter a percentage" in bad.get_data(as_text=True)
    assert api_client_for(user).get("/settings/risk").get_json()["max_concentration_pct"] == "20"


def test_trading_pages_need_sign_in_and_have_no_inline_script_or_style(client, login, user):
    for path in ("/", "/orders", "/orders/new", "/trades", "/settings/risk"):
        assert client.get(path).status_code == 302, path
    login(user)
    for path in ("/", "/orders", "/orders/new", "/trades", "/trades?status=closed", "/settings/risk"):
        html = client.get(path).get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path
        assert " style=" not in html, path
