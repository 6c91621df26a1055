"""Orders at the paper broker share a waiting `orders.execute` (DESIGN §6, issue 4 item 11): a placement sends
no task of its own while one of its account waits for a worker, and that task, once it runs, executes its own
order and then every order of the account still pending, oldest first, each in its own transaction."""
from __future__ import annotations

import redis as redis_lib
from sqlalchemy import func, select

from tests.conftest import wait_for
from tests.trading.linked_schwab import app_config, schwab_order, schwab_port  # noqa: F401  (fixtures)


def place_market_buys(user, count: int) -> list[int]:
    from utils import orders
    return [orders.place_order(user, {"symbol": "AAPL", "side": "buy", "quantity": "1", "type": "market",
                                      "time_in_force": "day"})[0].id for _ in range(count)]


def queued_tasks(app) -> int:
    """How many tasks wait in the Celery `orders` queue."""
    return redis_lib.Redis.from_url(app.config["REDIS_URL"]).llen("orders")


def statuses(db, order_ids) -> dict[str, int]:
    from models import Order
    db.session.expire_all()
    rows = db.session.execute(select(Order.status, func.count()).where(Order.id.in_(order_ids))
                              .group_by(Order.status)).all()
    return {status: count for status, count in rows}


def test_orders_of_an_account_placed_while_its_task_waits_send_none_and_that_task_fills_them(
        app, db, user, make_user, set_price):
    from celery.contrib.testing.worker import start_worker
    set_price("AAPL", "100")
    mine = place_market_buys(user, 3)
    theirs = place_market_buys(make_user(), 1)
    assert queued_tasks(app) == 2  # one per paper account: the first order of each sent it

    with start_worker(app.extensions["celery"], pool="threads", concurrency=4, perform_ping_check=False,
                      loglevel="WARNING", shutdown_timeout=20):
        wait_for(lambda: statuses(db, mine + theirs) == {"filled": 4}, message="all four orders filled")


def test_a_task_executes_at_most_its_share_of_the_waiting_orders_and_hands_on_the_rest(app, db, user, set_price):
    import worker
    set_price("AAPL", "100")
    share = worker.WAITING_ORDERS_PER_TASK
    placed = place_market_buys(user, share + 3)
    assert queued_tasks(app) == 1

    worker.execute_order(placed[0])  # the task, run here: its own order and `share` of the others

    assert statuses(db, placed) == {"filled": share + 1, "pending": 2}
    assert queued_tasks(app) == 2  # the rest handed to a new task
    worker.execute_order(placed[0])  # a task whose own order is done still executes the waiting ones
    assert statuses(db, placed) == {"filled": share + 3}


def test_a_placement_after_the_waiting_task_started_sends_a_task_again(app, db, user, set_price):
    import worker
    set_price("AAPL", "100")
    first = place_market_buys(user, 1)
    worker.execute_order(first[0])  # it started (and finished) with nothing else waiting
    later = place_market_buys(user, 1)
    assert queued_tasks(app) == 2
    assert statuses(db, first + later) == {"filled": 1, "pending": 1}


def test_orders_at_a_remote_broker_keep_a_task_each(app, db, user, schwab_order, schwab_port, set_price):
    from tests.fakes import schwab as fake_schwab
    from utils import orders
    set_price("AAPL", "100")
    server = fake_schwab.linked_server(schwab_port).start()
    try:
        for _ in range(2):
            orders.place_order(user, {"symbol": "AAPL", "side": "buy", "quantity": "1", "type": "limit",
                                      "limit_price": "99", "time_in_force": "day",
                                      "broker_connection_id": schwab_order.broker_connection_id})
    finally:
        server.stop()
    assert queued_tasks(app) == 2
