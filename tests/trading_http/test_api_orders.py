"""The orders JSON API: place (idempotent), list with a cursor, read, cancel, replace, errors, scoping."""
from __future__ import annotations

from sqlalchemy import func, select

from tests.trading_http.conftest import market_buy, wait_for_order


def test_market_order_via_api_is_filled_by_the_worker(api, set_price, celery_worker):
    set_price("AAPL", "100")
    response = api.post("/orders", json=market_buy("AAPL", "10"))
    assert response.status_code == 202, response.get_json()
    order = response.get_json()
    assert order["status"] in {"pending", "submitting", "submitted", "filled"}
    assert response.headers["Location"] == f"/api/v1/orders/{order['id']}"

    filled = wait_for_order(api, order["id"], {"filled", "rejected", "failed"})
    assert filled["status"] == "filled"
    assert filled["filled_quantity"] == "10"
    assert filled["fills"] and sum(float(fill["quantity"]) for fill in filled["fills"]) == 10
    assert [event["to_status"] for event in filled["events"]][-1] == "filled"


def test_limit_order_rests_then_fills_when_the_manual_price_crosses(api, set_price, celery_worker):
    set_price("MSFT", "200")
    order = api.post("/orders", json={**market_buy("MSFT", "5"), "type": "limit", "limit_price": "190"}).get_json()
    resting = wait_for_order(api, order["id"], {"submitted", "filled", "rejected", "failed"})
    assert resting["status"] == "submitted"
    assert resting["filled_quantity"] == "0"

    set_price("MSFT", "189")
    filled = wait_for_order(api, order["id"], {"filled"}, sync=True)
    assert filled["filled_quantity"] == "5"
    assert float(filled["average_fill_price"]) <= 190


def test_same_client_order_id_twice_gives_one_order(api, db, set_price):
    from models import Order
    set_price("AAPL", "100")
    body = market_buy("AAPL", "1", client_order_id="my-key-1")
    first = api.post("/orders", json=body)
    second = api.post("/orders", json=body)
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.get_json()["id"] == second.get_json()["id"]
    assert second.get_json()["client_order_id"] == "my-key-1"
    assert db.session.scalar(select(func.count(Order.id)).where(Order.client_order_id == "my-key-1")) == 1


def test_a_client_order_id_taken_between_the_lookup_and_the_insert_is_409_and_nothing_is_kept(api, db, set_price):
    """The lookup of a client_order_id runs under the user's lock, but another user's order may take the id
    before our INSERT: stood in for here by the same INSERT run once more just before ours."""
    from sqlalchemy import event

    from models import Order, Trade
    set_price("AAPL", "100")
    taken = []

    def take_the_id_first(_connection, cursor, statement, parameters, _context, _executemany):
        if statement.startswith("INSERT INTO orders") and not taken:
            taken.append(True)
            cursor.execute(statement, parameters)

    event.listen(db.engine, "before_cursor_execute", take_the_id_first)
    try:
        response = api.post("/orders", json=market_buy("AAPL", "1", client_order_id="raced-key"))
    finally:
        event.remove(db.engine, "before_cursor_execute", take_the_id_first)
    assert taken
    assert response.status_code == 409, response.get_json()
    assert response.get_json()["error"]["code"] == "order.client_order_id_taken"
    assert db.session.scalar(select(func.count(Order.id))) == 0
    assert db.session.scalar(select(func.count(Trade.id))) == 0


def test_a_placement_reads_the_quote_of_a_symbol_it_holds_once(app, api, db, set_price):
    """The tradability check reads the symbol's quote; the account's equity, priced for the risk checks, needs
    the same quote for the position already held: one cache read serves both."""
    import redis as redis_lib

    from tests.conftest import execute_in_process
    set_price("AAPL", "100")
    execute_in_process(db, api.post("/orders", json=market_buy("AAPL", "1")).get_json()["id"])
    cache = redis_lib.Redis.from_url(app.config["CACHE_REDIS_URL"])

    def mget_calls() -> int:
        return int(cache.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))

    before = mget_calls()
    response = api.post("/orders", json=market_buy("AAPL", "1"))
    assert response.status_code == 202, response.get_json()
    assert mget_calls() - before == 1


def test_an_order_the_worker_has_not_taken_up_says_so_in_its_notice(api, db, set_price):
    """No worker runs in this test: the order waits in the queue, as when the worker is down."""
    from datetime import timedelta

    from sqlalchemy import update

    from models import Order
    from utils.dbtypes import utcnow
    set_price("AAPL", "100")
    placed = api.post("/orders", json=market_buy("AAPL", "1"))
    assert placed.status_code == 202 and placed.get_json()["notice"] is None  # just placed: nothing to say
    placed_at = utcnow() - timedelta(minutes=2)
    db.session.execute(update(Order).where(Order.id == placed.get_json()["id"]).values(created_at=placed_at))
    db.session.commit()

    order = api.get(f"/orders/{placed.get_json()['id']}").get_json()
    listed = api.get("/orders").get_json()["items"][0]

    deadline = placed_at + timedelta(seconds=300)
    assert order["status"] == "pending" and order["notice"] == (
        f"Waiting for Tradewarden's worker since {placed_at:%H:%M:%S} UTC; nothing has been sent to the broker "
        f"yet, and you can still cancel it. If it is still unsent at {deadline:%H:%M:%S} UTC it is not sent at all.")
    assert listed["notice"] == order["notice"]


def test_list_orders_pages_with_next_cursor(api, set_price):
    set_price("AAPL", "100")
    ids = [api.post("/orders", json=market_buy("AAPL", "1")).get_json()["id"] for _ in range(3)]
    first = api.get("/orders?limit=2").get_json()
    assert [order["id"] for order in first["items"]] == ids[::-1][:2]
    assert first["next_cursor"]
    second = api.get(f"/orders?limit=2&cursor={first['next_cursor']}").get_json()
    assert [order["id"] for order in second["items"]] == [ids[0]]
    assert second["next_cursor"] is None
    assert api.get("/orders?status=filled").get_json()["items"] == []


def test_cancel_a_pending_order_then_cancel_again_is_409(api, set_price):
    set_price("AAPL", "100")
    order = api.post("/orders", json=market_buy("AAPL", "1")).get_json()  # no worker: it stays pending
    cancelled = api.delete(f"/orders/{order['id']}")
    assert cancelled.status_code == 200
    assert cancelled.get_json()["status"] == "cancelled"
    again = api.delete(f"/orders/{order['id']}")
    assert again.status_code == 409
    assert again.get_json()["error"]["code"] == "order.not_cancelable"


def test_cancel_a_resting_order_at_the_broker(api, set_price, celery_worker):
    set_price("AAPL", "100")
    order = api.post("/orders", json={**market_buy("AAPL", "2"), "type": "limit", "limit_price": "50"}).get_json()
    wait_for_order(api, order["id"], {"submitted"})
    response = api.delete(f"/orders/{order['id']}")
    assert response.status_code == 202
    assert response.get_json()["status"] == "pending_cancel"
    assert wait_for_order(api, order["id"], {"cancelled"}, sync=True)["filled_quantity"] == "0"


def test_replace_returns_a_new_order_pointing_back(api, set_price):
    set_price("AAPL", "100")
    old = api.post("/orders", json={**market_buy("AAPL", "2"), "type": "limit", "limit_price": "90"}).get_json()
    response = api.patch(f"/orders/{old['id']}", json={"limit_price": "95", "quantity": "3"})
    assert response.status_code == 202, response.get_json()
    new = response.get_json()
    assert new["id"] != old["id"] and new["replaces_order_id"] == old["id"]
    assert (new["limit_price"], new["quantity"]) == ("95", "3")
    assert api.get(f"/orders/{old['id']}").get_json()["status"] == "replaced"


def test_replace_at_the_broker_with_the_worker(api, set_price, celery_worker):
    set_price("AAPL", "100")
    old = api.post("/orders", json={**market_buy("AAPL", "2"), "type": "limit", "limit_price": "80"}).get_json()
    wait_for_order(api, old["id"], {"submitted"})
    new = api.patch(f"/orders/{old['id']}", json={"limit_price": "101"}).get_json()
    assert wait_for_order(api, new["id"], {"filled"}, sync=True)["replaces_order_id"] == old["id"]
    assert wait_for_order(api, old["id"], {"replaced"}, sync=True)["filled_quantity"] == "0"


def test_another_users_order_is_404(api, api_client_for, new_user, set_price):
    set_price("AAPL", "100")
    order = api.post("/orders", json=market_buy("AAPL", "1")).get_json()
    stranger = api_client_for(new_user())
    assert stranger.get(f"/orders/{order['id']}").status_code == 404
    assert stranger.delete(f"/orders/{order['id']}").status_code == 404
    assert stranger.patch(f"/orders/{order['id']}", json={"quantity": "2"}).status_code == 404
    assert stranger.get("/orders").get_json()["items"] == []
    assert api.get(f"/orders/{order['id']}").get_json()["status"] == "pending"


def test_risk_denial_is_422_with_its_code_and_numbers(api, set_price):
    set_price("AAPL", "100")
    assert api.put("/settings/risk", json={"max_concentration_pct": "1"}).status_code == 200
    response = api.post("/orders", json=market_buy("AAPL", "20", stop_loss_price="99"))
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "risk.concentration"
    assert {"exposure_after", "limit", "equity"} <= set(error["details"])
    assert api.get("/orders").get_json()["items"] == []


def test_an_expired_option_cannot_be_opened_and_an_impossible_one_is_no_symbol(api, set_price):
    from datetime import date
    next_year = date.today().year % 100 + 1
    live, expired, impossible = f"AAPL{next_year:02d}0116C00190000", "AAPL240517C00190000", "AAPL241317C00190000"
    for symbol in (live, expired):
        set_price(symbol, "3.10")
    response = api.post("/orders", json=market_buy(expired, "1"))
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["details"] == {"field": "symbol"}
    assert error["message"] == f"{expired} expired on 2024-05-17; an expired option cannot be opened."
    response = api.post("/orders", json=market_buy(impossible, "1"))  # month 13: no such contract
    assert response.status_code == 422 and response.get_json()["error"]["details"] == {"field": "symbol"}
    assert api.get("/orders").get_json()["items"] == []  # nothing was placed
    accepted = api.post("/orders", json=market_buy(live, "1"))
    assert accepted.status_code == 202 and accepted.get_json()["instruction"] == "BUY_TO_OPEN"


def test_malformed_bodies_are_400_or_422_never_500(api, set_price):
    set_price("AAPL", "100")
    cases = [
        ({"data": "{not json", "content_type": "application/json"}, 400),
        ({"data": "symbol=AAPL", "content_type": "application/x-www-form-urlencoded"}, 400),
        ({"json": ["AAPL"]}, 400),
        ({"json": {"side": "buy", "quantity": "1", "type": "market"}}, 422),
        ({"json": market_buy("AAPL", "many")}, 422),
        ({"json": market_buy("AAPL", "-5")}, 422),
        ({"json": {**market_buy("AAPL", "1"), "quantity": True}}, 422),
        ({"json": {**market_buy("AAPL", "1"), "type": "limit"}}, 422),
        ({"json": {**market_buy("AAPL", "1"), "side": 7}}, 422),
        ({"json": {**market_buy("AAPL", "1"), "surprise": 1}}, 422),
    ]
    for kwargs, status in cases:
        response = api.post("/orders", **kwargs)
        assert response.status_code == status, (kwargs, response.get_json())
        assert set(response.get_json()["error"]) == {"code", "message", "details"}
    assert api.patch("/orders/1", data="nope", content_type="application/json").status_code in (400, 404)


def test_bad_query_and_path_parameters_are_rejected(api):
    for query in ("limit=0", "limit=abc", "limit=%C2%B2", "cursor=abc", "cursor=%C2%B2", "status=bogus"):
        response = api.get(f"/orders?{query}")
        assert response.status_code == 422, query
    assert api.get("/orders/abc").status_code == 404
    assert api.get("/orders/0").status_code == 404
    assert api.get(f"/orders/{2**70}").status_code == 404


def test_orders_api_requires_a_bearer_credential(client):
    response = client.get("/api/v1/orders")
    assert response.status_code == 401
    assert response.get_json()["error"]["code"]
