"""Orders end to end with a real Celery worker and the paper broker: fills, resting orders, cancel, replace,
idempotency, exits, ownership and the per-user lock under racing threads."""
from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from tests.conftest import statements_sent, wait_for


def fresh(db, model, row_id):
    db.session.expire_all()
    return db.session.get(model, row_id)


def wait_status(db, order, *statuses, timeout=20.0):
    from models import Order
    return wait_for(lambda: (row := fresh(db, Order, order.id)) is not None and row.status in statuses and row,
                    timeout=timeout, message=f"order {order.id} to become {statuses}")


def market_buy(user, quantity="10", symbol="AAPL", **extra):
    from utils import orders
    order, created = orders.place_order(user, {"symbol": symbol, "side": "buy", "quantity": quantity,
                                               "type": "market", "time_in_force": "day", **extra})
    assert created
    return order


def test_a_market_order_is_filled_by_the_worker(db, user, celery_worker, set_price):
    from models import Fill, Trade
    set_price("AAPL", "100")
    order = market_buy(user, "10", stop_loss_price="95", take_profit_price="120")
    order = wait_status(db, order, "filled")
    assert order.filled_quantity == Decimal("10") and order.average_fill_price > 0
    assert [event.to_status for event in order.events][:3] == ["pending", "submitting", "submitted"]
    assert db.session.scalar(select(func.count(Fill.id)).where(Fill.order_id == order.id)) >= 1
    trade = db.session.get(Trade, order.trade_id)
    assert (trade.status, trade.side, trade.quantity) == ("open", "long", Decimal("10"))
    assert (trade.stop_loss_price, trade.take_profit_price) == (Decimal("95"), Decimal("120"))


def test_a_paper_execution_reads_the_order_with_its_connection_in_one_select(db, user, set_price):
    """The worker's paper execution starts from the order and its broker connection: one SELECT reads both."""
    from utils import orders
    set_price("AAPL", "100")
    order_id = market_buy(user, "1").id
    db.session.expire_all()

    def execute() -> None:
        assert orders.execute_in_our_database(order_id)
        db.session.commit()

    reads = [statement for statement, _, _ in statements_sent(db, execute)
             if statement.lstrip().upper().startswith("SELECT") and "broker_connections" in statement]
    assert len(reads) == 1 and "FROM orders JOIN broker_connections" in reads[0]
    assert fresh(db, orders.Order, order_id).status == "filled"


def test_a_limit_order_rests_then_fills_when_the_price_crosses(db, user, celery_worker, set_price, run_sync,
                                                                match_paper_orders):
    from utils import orders
    set_price("AAPL", "100")
    order, _ = orders.place_order(user, {"symbol": "AAPL", "side": "buy", "quantity": "5", "type": "limit",
                                         "limit_price": "95", "time_in_force": "gtc"})
    order = wait_status(db, order, "submitted")
    run_sync()
    assert fresh(db, type(order), order.id).status == "submitted"
    set_price("AAPL", "94")
    match_paper_orders()
    run_sync()
    order = fresh(db, type(order), order.id)
    assert order.status == "filled"
    assert order.filled_quantity == Decimal("5") and order.average_fill_price <= Decimal("95")


def test_cancel_a_resting_order(db, user, celery_worker, set_price):
    from utils import orders
    set_price("AAPL", "100")
    order, _ = orders.place_order(user, {"symbol": "AAPL", "side": "buy", "quantity": "5", "type": "limit",
                                         "limit_price": "90", "time_in_force": "gtc"})
    wait_status(db, order, "submitted")
    order = orders.cancel_order(user, order.id)
    db.session.commit()
    order = wait_status(db, order, "cancelled")
    assert [event.to_status for event in order.events][-2:] == ["pending_cancel", "cancelled"]
    assert fresh(db, __import__("models").Trade, order.trade_id).status == "cancelled"


def test_replace_a_resting_order(db, user, celery_worker, set_price):
    from models import Order
    from utils import orders
    set_price("AAPL", "100")
    old, _ = orders.place_order(user, {"symbol": "AAPL", "side": "buy", "quantity": "5", "type": "limit",
                                       "limit_price": "90", "time_in_force": "gtc"})
    wait_status(db, old, "submitted")
    new = orders.replace_order(user, old.id, {"limit_price": "91", "quantity": "6"})
    assert new.replaces_order_id == old.id and new.limit_price == Decimal("91")
    wait_status(db, new, "submitted")
    assert wait_status(db, old, "replaced").status == "replaced"
    assert fresh(db, Order, new.id).trade_id == old.trade_id


def test_the_same_client_order_id_gives_one_order(db, user, celery_worker, set_price):
    from models import Order
    from utils import orders
    set_price("AAPL", "100")
    request = {"symbol": "AAPL", "side": "buy", "quantity": "3", "type": "market", "client_order_id": "my-key-1"}
    first, created_first = orders.place_order(user, dict(request))
    second, created_second = orders.place_order(user, dict(request))
    assert (created_first, created_second) == (True, False) and first.id == second.id
    wait_status(db, first, "filled")
    assert db.session.scalar(select(func.count(Order.id)).where(Order.client_order_id == "my-key-1")) == 1


def test_another_users_client_order_id_is_a_conflict(db, user, other_user, set_price):
    from utils import orders
    from utils.errors import Conflict
    set_price("AAPL", "100")
    request = {"symbol": "AAPL", "side": "buy", "quantity": "1", "type": "market", "client_order_id": "shared"}
    orders.place_order(user, dict(request))
    with pytest.raises(Conflict):
        orders.place_order(other_user, dict(request))


def test_another_users_order_is_not_found(db, user, other_user, set_price):
    from utils import orders, trades
    from utils.errors import NotFound
    set_price("AAPL", "100")
    order = market_buy(user, "1")
    for action in (lambda: orders.get_order(other_user, order.id), lambda: orders.cancel_order(other_user, order.id),
                   lambda: orders.replace_order(other_user, order.id, {"quantity": "2"}),
                   lambda: trades.get_trade(other_user, order.trade_id),
                   lambda: trades.close_trade(other_user, order.trade_id)):
        with pytest.raises(NotFound):
            action()
    assert orders.list_orders(other_user)[0] == []


def test_closing_a_trade_sells_the_position_and_books_the_pnl(db, user, celery_worker, set_price):
    from models import Trade
    from utils import trades
    set_price("AAPL", "100")
    entry = wait_status(db, market_buy(user, "10"), "filled")
    set_price("AAPL", "110")
    trade = trades.close_trade(user, entry.trade_id)
    db.session.commit()
    assert trade.status == "closing"
    trade = wait_for(lambda: (row := fresh(db, Trade, entry.trade_id)).status == "closed" and row,
                     message="the trade to close")
    assert trade.close_reason == "manual" and trade.exit_quantity == Decimal("10")
    assert trade.realized_pnl == (trade.exit_price - trade.entry_price) * 10 - trade.fees
    assert trade.realized_pnl > 0


def test_selling_more_than_held_is_refused(db, user, celery_worker, set_price):
    from utils import orders
    from utils.errors import ValidationFailed
    set_price("AAPL", "100")
    entry = wait_status(db, market_buy(user, "10"), "filled")
    with pytest.raises(ValidationFailed) as caught:
        orders.place_order(user, {"symbol": "AAPL", "side": "sell", "quantity": "11", "type": "market",
                                  "trade_id": entry.trade_id})
    assert caught.value.details["field"] == "quantity"


def test_exits_are_never_blocked_by_risk_limits(db, user, celery_worker, set_price):
    from utils import orders, risk
    set_price("AAPL", "100")
    entry = wait_status(db, market_buy(user, "10"), "filled")
    risk.update_limits(user, {"daily_trade_limit": 1})
    db.session.commit()
    exit_order, created = orders.place_order(user, {"symbol": "AAPL", "side": "sell", "quantity": "10",
                                                    "type": "market"})
    assert created and exit_order.purpose == "exit" and exit_order.trade_id == entry.trade_id


@pytest.mark.parametrize("limits, body, code", [
    ({"max_risk_per_trade_pct": "1"}, {"quantity": "100", "stop_loss_price": "80"}, "risk.max_risk_per_trade"),
    ({"daily_notional_limit": "500"}, {"quantity": "10"}, "risk.daily_notional_limit"),
    ({"max_concentration_pct": "5"}, {"quantity": "60", "stop_loss_price": "99"}, "risk.concentration"),
    ({"max_concentration_pct": "100", "max_risk_per_trade_pct": "100"}, {"quantity": "2000"}, "risk.buying_power"),
])
def test_place_order_is_denied_by_each_limit(db, user, set_price, limits, body, code):
    from models import Order
    from utils import orders, risk
    from utils.errors import RiskLimitExceeded
    set_price("AAPL", "100")
    risk.update_limits(user, limits)
    db.session.commit()
    with pytest.raises(RiskLimitExceeded) as caught:
        orders.place_order(user, {"symbol": "AAPL", "side": "buy", "type": "market", **body})
    assert caught.value.code == code and caught.value.details
    assert db.session.scalar(select(func.count(Order.id)).where(Order.user_id == user.id)) == 0


def test_two_racing_orders_cannot_both_pass_a_limit(app, db, user, set_price):
    """Each order fits the concentration limit alone (15,000 of 25,000), not together: exactly one passes."""
    from models import Order, User
    from utils import orders
    from utils.errors import RiskLimitExceeded
    set_price("AAPL", "100")
    barrier, outcomes, user_id = threading.Barrier(2), [], user.id  # the fixture's row belongs to this thread

    def place(number):
        with app.app_context():
            try:
                racer = db.session.get(User, user_id)
                barrier.wait(timeout=30)
                orders.place_order(racer, {"symbol": "AAPL", "side": "buy", "quantity": "150", "type": "market",
                                           "stop_loss_price": "99", "client_order_id": f"race-{number}"})
                outcomes.append("placed")
            except RiskLimitExceeded as error:
                outcomes.append(error.code)
            except Exception as error:  # any other outcome is a failure, shown in the assertion
                outcomes.append(repr(error))
            finally:
                db.session.remove()

    threads = [threading.Thread(target=place, args=(number,)) for number in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["placed", "risk.concentration"]
    assert db.session.scalar(select(func.count(Order.id)).where(Order.user_id == user_id)) == 1


def test_every_task_name_is_registered_and_scheduled(app):
    import worker
    from utils import jobs
    for name in (jobs.ORDERS_EXECUTE, jobs.ORDERS_SYNC, jobs.ORDERS_RECOVER, jobs.ORDERS_CANCEL):
        assert name in worker.celery.tasks
    scheduled = {entry["task"] for entry in worker.BEAT_SCHEDULE.values()}
    assert {jobs.ORDERS_SYNC, jobs.ORDERS_RECOVER} <= scheduled


def test_celery_is_configured_for_reliable_delivery(app):
    from utils import jobs
    settings = jobs.celery_settings(app.config)
    assert settings["task_serializer"] == "json" and settings["accept_content"] == ["json"]
    assert settings["task_acks_late"] and settings["task_reject_on_worker_lost"]
    assert settings["worker_prefetch_multiplier"] == 1
    assert settings["broker_transport_options"]["visibility_timeout"] > settings["task_time_limit"]
    assert {queue.name for queue in settings["task_queues"]} >= {"orders", "default"}
    assert settings["task_routes"][jobs.ORDERS_EXECUTE]["queue"] == "orders"


def test_the_broker_channel_keeps_one_redis_client_for_its_commands(app):
    """kombu would build a redis.Redis per publish and per acknowledgement; ours builds one per connection pool,
    and the app's messages still travel through it."""
    from utils import jobs
    celery_app = app.extensions["celery"]
    with celery_app.connection_for_write() as connection:
        channel = connection.default_channel
        assert isinstance(channel, jobs.RedisChannel)
        client = channel._create_client()
        assert channel._create_client() is client
        assert client.connection_pool is channel.pool
        assert channel._create_client(asynchronous=True) is not client
        channel._pool = None  # kombu drops its pool on a disconnect: a new pool gets a new client
        assert channel._create_client() is not client
        client.delete("tw-channel-check")
        channel._put("tw-channel-check", {"body": "hello"})
        assert channel._create_client().llen("tw-channel-check") == 1
        client.delete("tw-channel-check")


def test_a_tls_redis_url_keeps_kombus_own_transport_and_its_tls(app):
    """rediss:// is resolved by kombu itself, which sets up TLS for that scheme; ours is used for redis:// only."""
    from utils import jobs
    tls = {**app.config, "REDIS_URL": "rediss://cache.example:6380/0"}
    assert jobs.celery_settings(tls)["broker_transport"] is None
    assert jobs.celery_settings(app.config)["broker_transport"] == "utils.jobs:RedisTransport"


def test_positions_show_unrealized_pnl_and_the_account_summary_the_broker_figures(db, user, celery_worker,
                                                                                 set_price):
    from utils import trades
    set_price("AAPL", "100")
    entry = wait_status(db, market_buy(user, "10"), "filled")
    set_price("AAPL", "105")
    [position] = trades.positions(user)
    assert position["id"] == entry.trade_id and position["open_quantity"] == "10"
    expected = (Decimal(position["market_price"]) - entry.average_fill_price) * 10
    assert Decimal(position["unrealized_pnl"]) == expected
    summary = trades.account_summary(user)
    assert Decimal(summary["cash"]) < Decimal("100000") and Decimal(summary["equity"]) > Decimal(summary["cash"])
    assert summary["open_positions"] == 1 and summary["realized_pnl_today"] == "0"


def test_a_market_order_placed_through_the_api_is_filled_within_seconds(db, user, client, celery_worker, set_price):
    from datetime import datetime, timedelta, timezone

    from models import ApiKey
    from utils import api_auth
    secret = api_auth.generate_key_secret()
    db.session.add(ApiKey(user_id=user.id, name="test", prefix=api_auth.display_prefix(secret),
                          secret_hash=api_auth.hash_secret(secret),
                          expires_at=datetime.now(timezone.utc) + timedelta(days=1)))
    db.session.commit()
    set_price("AAPL", "100")
    headers = {"Authorization": f"Bearer {secret}"}
    body = {"symbol": "AAPL", "side": "buy", "quantity": "2", "type": "market", "time_in_force": "day",
            "client_order_id": "api-1"}
    first = client.post("/api/v1/orders", json=body, headers=headers)
    again = client.post("/api/v1/orders", json=body, headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert first.get_json()["id"] == again.get_json()["id"]
    order_url = f"/api/v1/orders/{first.get_json()['id']}"
    filled = wait_for(lambda: (answer := client.get(order_url, headers=headers).get_json())["status"] == "filled"
                      and answer, message="the API order to fill")
    assert filled["filled_quantity"] == "2" and filled["fills"]


def test_the_second_order_of_the_day_is_denied_by_a_limit_of_one(db, user, set_price):
    from utils import orders, risk
    from utils.errors import RiskLimitExceeded
    set_price("AAPL", "100")
    risk.update_limits(user, {"daily_trade_limit": 1})
    db.session.commit()
    market_buy(user, "1")
    with pytest.raises(RiskLimitExceeded) as caught:
        orders.place_order(user, {"symbol": "AAPL", "side": "buy", "quantity": "1", "type": "market"})
    assert caught.value.code == "risk.daily_trade_limit" and caught.value.details["orders_today"] == "1"

