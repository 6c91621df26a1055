"""The stop-loss guard over HTTP: PUT /api/v1/trades/<id>/stop-loss, the trade page form, the dashboard card,
/health/ready and /health/metrics."""
from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import update

from tests.conftest import csrf_token_from
from tests.stoploss.conftest import fresh


@pytest.fixture
def api_headers(db, user):
    from utils.api_auth import create_api_key
    _key, secret = create_api_key(user, "stop-loss tests")
    db.session.commit()
    return {"Authorization": f"Bearer {secret}"}


def test_put_stop_loss_sets_trailing_and_take_profit(db, client, celery_worker, open_trade, api_headers):
    from models import Trade
    trade = open_trade("100", stop_loss_price="95")
    response = client.put(f"/api/v1/trades/{trade.id}/stop-loss", headers=api_headers,
                          json={"stop_loss_price": "96", "take_profit_price": "130", "trailing_stop_percent": "5"})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["take_profit_price"], body["trailing_stop_percent"]) == ("130", "5")
    assert Decimal(body["stop_loss_price"]) == Decimal("96")  # 5 % under 100 is 95, so the fixed 96 holds
    row = fresh(db, Trade, trade.id)
    assert row.water_mark_price == Decimal("100")


@pytest.mark.parametrize("body, field", [
    ({"stop_loss_price": "101"}, "stop_loss_price"),       # a long's stop above the current bid
    ({"take_profit_price": "99"}, "take_profit_price"),     # a long's target below it
    ({"trailing_stop_percent": "100"}, "trailing_stop_percent"),
    ({"stop_loss_price": "abc"}, "stop_loss_price"),
])
def test_put_stop_loss_refuses_prices_on_the_wrong_side(db, client, celery_worker, open_trade, api_headers, body,
                                                        field):
    trade = open_trade("100", stop_loss_price="95")
    response = client.put(f"/api/v1/trades/{trade.id}/stop-loss", headers=api_headers, json=body)
    assert response.status_code == 422
    assert response.get_json()["error"]["details"]["field"] == field
    assert fresh(db, type(trade), trade.id).stop_loss_price == Decimal("95")


def test_put_stop_loss_checks_a_short_the_other_way(db, client, celery_worker, open_trade, api_headers):
    trade = open_trade("100", side="sell", stop_loss_price="105")
    assert client.put(f"/api/v1/trades/{trade.id}/stop-loss", headers=api_headers,
                      json={"stop_loss_price": "99"}).status_code == 422
    assert client.put(f"/api/v1/trades/{trade.id}/stop-loss", headers=api_headers,
                      json={"stop_loss_price": "104"}).status_code == 200


def test_put_stop_loss_on_someone_elses_or_a_closed_trade(db, client, celery_worker, open_trade, api_headers,
                                                          other_user):
    from models import Trade
    from utils.api_auth import create_api_key
    trade = open_trade("100", stop_loss_price="95")
    _key, secret = create_api_key(other_user, "other")
    db.session.commit()
    response = client.put(f"/api/v1/trades/{trade.id}/stop-loss", headers={"Authorization": f"Bearer {secret}"},
                          json={"stop_loss_price": "90"})
    assert response.status_code == 404
    db.session.execute(update(Trade).where(Trade.id == trade.id).values(status="closed"))
    db.session.commit()
    response = client.put(f"/api/v1/trades/{trade.id}/stop-loss", headers=api_headers, json={"stop_loss_price": "90"})
    assert response.status_code == 409
    assert client.put(f"/api/v1/trades/{trade.id}/stop-loss", headers=api_headers, data="[1]",
                      content_type="application/json").status_code == 400


def test_the_trade_page_form_moves_the_stop(db, client, login, user, celery_worker, open_trade):
    trade = open_trade("100", stop_loss_price="95")
    login(user)
    page = client.get(f"/trades/{trade.id}/stop-loss")
    assert page.status_code == 200 and 'name="trailing_stop_percent"' in page.get_data(as_text=True)
    data = {"csrf_token": csrf_token_from(page.get_data(as_text=True)), "stop_loss_price": "97",
            "trailing_stop_percent": "", "take_profit_price": "125"}
    assert client.post(f"/trades/{trade.id}/stop-loss", data=data).status_code == 302
    row = fresh(db, type(trade), trade.id)
    assert (row.stop_loss_price, row.take_profit_price) == (Decimal("97"), Decimal("125"))
    data["stop_loss_price"] = "150"
    response = client.post(f"/trades/{trade.id}/stop-loss", data=data)
    assert response.status_code == 200 and "must be below the current price" in response.get_data(as_text=True)
    assert fresh(db, type(trade), trade.id).stop_loss_price == Decimal("97")


def test_the_dashboard_shows_the_last_sweep_and_quote_miss_warnings(db, client, login, user, make_user,
                                                                    celery_worker, open_trade, run_sweep):
    from models import Trade
    login(user)
    assert "has not run yet" in client.get("/").get_data(as_text=True)
    trade = open_trade("100", stop_loss_price="95")
    run_sweep()
    html = client.get("/").get_data(as_text=True)
    assert "Stop-loss guard" in html and "It guards 1 of your open" in html and "stoploss-warning" not in html
    stranger = client.application.test_client()
    login(make_user(email="stranger@example.com"), test_client=stranger)
    theirs = stranger.get("/").get_data(as_text=True)  # the sweep's counts cover every user: not shown
    assert "It guards 0 of your open" in theirs and "1 checked" not in theirs
    db.session.execute(update(Trade).where(Trade.id == trade.id).values(quote_misses=3))
    db.session.commit()
    html = client.get("/").get_data(as_text=True)
    assert f"Trade #{trade.id} (AAPL)" in html and "stoploss-warning" in html


def test_health_ready_and_metrics_report_the_sweep(db, client, celery_worker, open_trade, set_price, run_sweep,
                                                   broker_stops):
    from tests.conftest import wait_for
    assert client.get("/health/ready").get_json().get("stoploss_last_sweep") is None
    trade = open_trade("100", stop_loss_price="95")
    wait_for(lambda: [order for order in broker_stops(trade.id) if order.status == "submitted"],
             message="the broker-side stop resting")  # a stop still being sent makes the sweep retry later
    set_price("AAPL", "90")
    run_sweep()
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    sweep = ready.get_json()["stoploss_last_sweep"]
    assert set(sweep) == {"finished_at", "age_seconds"} and sweep["age_seconds"] >= 0  # counts: metrics only
    metrics = client.get("/health/metrics").get_data(as_text=True)
    for line in ("stoploss_checked_total 1.0", "stoploss_triggered_total 1.0", "stoploss_quote_unavailable_total 0.0",
                 "stoploss_last_sweep_timestamp_seconds ", "stoploss_sweep_duration_seconds "):
        assert line in metrics, line


def test_the_order_ticket_sets_a_trailing_stop_at_entry(db, client, login, user, set_price):
    import re

    from models import Trade
    set_price("AAPL", "100")
    login(user)
    page = client.get("/orders/new").get_data(as_text=True)
    client_order_id = re.search(r'name="client_order_id"[^>]*value="([^"]+)"', page) or \
        re.search(r'value="([^"]+)"[^>]*name="client_order_id"', page)
    data = {"csrf_token": csrf_token_from(page), "client_order_id": client_order_id.group(1), "symbol": "AAPL",
            "side": "buy", "quantity": "5", "order_type": "market", "time_in_force": "day",
            "trailing_stop_percent": "7.5"}
    assert client.post("/orders/new", data=data).status_code == 302
    db.session.expire_all()
    assert db.session.query(Trade).one().trailing_stop_percent == Decimal("7.5")
