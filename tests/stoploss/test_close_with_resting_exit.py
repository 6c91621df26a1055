"""Closing a trade that has a resting exit order (a user's limit sell): the close withdraws that exit first,
records any fill it already had, and sends one market exit for exactly what is still held."""
from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import select

from tests.conftest import execute_in_process, wait_for
from tests.stoploss.conftest import fresh


@pytest.fixture
def app_config(app_config):
    # No stop rests at the paper broker: the sweep's own close is what these tests watch.
    return {**app_config, "STOPLOSS_BROKER_STOPS": "false"}


@pytest.fixture
def place_limit_exit(db, user):
    """place_limit_exit(trade, price, quantity=None) places a day limit sell closing the long `trade`
    through the normal order path and returns the Order (not waited on)."""
    from utils import orders

    def place(trade, price: str, quantity: str | None = None):
        order, _ = orders.place_order(user, {
            "symbol": trade.symbol, "side": "sell", "instruction": "SELL", "type": "limit", "limit_price": price,
            "quantity": quantity or format(trade.quantity, "f"), "trade_id": trade.id})
        return order

    return place


@pytest.fixture
def resting_limit_exit(db, place_limit_exit):
    """resting_limit_exit(trade, price) places the limit sell and waits until it rests at the paper broker."""
    from models import Order

    def place(trade, price: str):
        order = place_limit_exit(trade, price)
        return wait_for(lambda: (row := fresh(db, Order, order.id)).status == "submitted" and row,
                        message=f"limit exit {order.id} resting")

    return place


def paper_quantity(db, user, symbol="AAPL") -> Decimal:
    """The signed position the paper broker holds for the user (0 when flat)."""
    from utils import orders
    from utils.brokers import get_broker
    db.session.expire_all()
    held = [p.quantity for p in get_broker(orders.connection_for(user, None)).get_positions() if p.symbol == symbol]
    return held[0] if held else Decimal(0)


def paper_order(db, order):
    from models import PaperOrder
    db.session.expire_all()
    return db.session.scalar(select(PaperOrder).where(PaperOrder.client_order_id == order.client_order_id))


def wait_closed(db, trade_id):
    from models import Trade
    return wait_for(lambda: (row := fresh(db, Trade, trade_id)).status == "closed" and row,
                    message=f"trade {trade_id} closed")


def wait_exits_settled(exit_orders, trade_id):
    wait_for(lambda: all(order.status == "filled" for order in exit_orders(trade_id)), message="exits settled")
    return exit_orders(trade_id)


def test_a_breached_stop_cancels_a_resting_limit_exit_and_sells_once(db, user, celery_worker, open_trade, set_price,
                                                                     run_sweep, exit_orders, resting_limit_exit):
    from models import Order
    trade = open_trade("100", stop_loss_price="90")
    limit_exit = resting_limit_exit(trade, "120")
    set_price("AAPL", "89")
    assert run_sweep()["triggered"] == 1
    trade = wait_closed(db, trade.id)
    assert (trade.close_reason, trade.exit_quantity) == ("stop_loss", Decimal("10"))
    assert [(order.purpose, order.quantity) for order in wait_exits_settled(exit_orders, trade.id)] == \
        [("stop_loss", Decimal("10"))]
    assert fresh(db, Order, limit_exit.id).status == "cancelled"
    assert paper_order(db, limit_exit).status == "cancelled"
    assert paper_quantity(db, user) == 0
    assert run_sweep()["triggered"] == 0  # nothing is left to close


def test_a_fill_the_resting_exit_already_had_is_recorded_and_only_the_rest_is_sold(
        app, db, user, celery_worker, open_trade, set_price, run_sweep, exit_orders, resting_limit_exit):
    """The broker filled 4 of the limit sell before the stop; the close records those 4 and sells 6."""
    from models import Order
    trade = open_trade("100", stop_loss_price="90")
    limit_exit = resting_limit_exit(trade, "120")
    app.config["PAPER_LIQUIDITY_PER_TICK"] = "4"
    set_price("AAPL", "121")  # the worker's market.match fills 4 at the paper broker; we have not recorded it
    wait_for(lambda: paper_order(db, limit_exit).filled_quantity == 4, message="4 filled at the paper broker")
    app.config["PAPER_LIQUIDITY_PER_TICK"] = "1000000"
    assert fresh(db, Order, limit_exit.id).filled_quantity == 0
    set_price("AAPL", "89")
    assert run_sweep()["triggered"] == 1
    trade = wait_closed(db, trade.id)
    limit_exit = fresh(db, Order, limit_exit.id)
    assert (limit_exit.status, limit_exit.filled_quantity) == ("cancelled", Decimal("4"))
    assert [order.quantity for order in wait_exits_settled(exit_orders, trade.id)] == [Decimal("6")]
    trade = fresh(db, type(trade), trade.id)
    assert (trade.close_reason, trade.exit_quantity) == ("stop_loss", Decimal("10"))
    assert paper_quantity(db, user) == 0


def test_a_resting_exit_that_already_filled_closes_the_trade_without_a_market_exit(
        db, user, celery_worker, open_trade, set_price, run_sweep, exit_orders, resting_limit_exit):
    from models import Order
    trade = open_trade("100", stop_loss_price="90")
    limit_exit = resting_limit_exit(trade, "120")
    set_price("AAPL", "121")  # fills the whole limit sell at the paper broker, not yet recorded here
    wait_for(lambda: paper_order(db, limit_exit).status == "filled", message="filled at the paper broker")
    set_price("AAPL", "89")
    assert run_sweep()["triggered"] == 1
    trade = fresh(db, type(trade), trade.id)
    assert (trade.status, trade.close_reason) == ("closed", "manual")  # the user's own exit closed it
    assert fresh(db, Order, limit_exit.id).status == "filled"
    assert exit_orders(trade.id) == []
    assert paper_quantity(db, user) == 0


def test_a_manual_close_cancels_a_resting_exit_and_sells_once(db, user, celery_worker, open_trade, exit_orders,
                                                              resting_limit_exit):
    from models import Order
    from utils import trades
    trade = open_trade("100")
    limit_exit = resting_limit_exit(trade, "120")
    trades.close_trade(user, trade.id)
    db.session.commit()
    assert fresh(db, Order, limit_exit.id).status == "cancelled"
    trade = wait_closed(db, trade.id)
    assert trade.close_reason == "manual"
    assert [(order.purpose, order.quantity) for order in wait_exits_settled(exit_orders, trade.id)] == \
        [("exit", Decimal("10"))]
    assert paper_quantity(db, user) == 0


def test_closing_through_the_api_with_a_resting_exit_sells_once(db, user, client, celery_worker, open_trade,
                                                                exit_orders, resting_limit_exit):
    from models import Order
    from utils.api_auth import create_api_key
    trade = open_trade("100")
    limit_exit = resting_limit_exit(trade, "120")
    _key, secret = create_api_key(user, "tests")
    db.session.commit()
    response = client.post(f"/api/v1/trades/{trade.id}/close", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 202, response.get_data(as_text=True)
    assert fresh(db, Order, limit_exit.id).status == "cancelled"
    wait_closed(db, trade.id)
    assert [order.quantity for order in wait_exits_settled(exit_orders, trade.id)] == [Decimal("10")]
    assert paper_quantity(db, user) == 0


# --- exits not at the broker yet (no worker: each step runs here) -------------------------------------

@pytest.fixture
def filled_trade(db, user, set_price):
    """A long of 10 AAPL at 100 with a stop at 90, filled without a worker."""
    from models import Order, Trade
    from utils import orders
    set_price("AAPL", "100")
    entry, _ = orders.place_order(user, {"symbol": "AAPL", "side": "buy", "quantity": "10", "type": "market",
                                         "stop_loss_price": "90"})
    execute_in_process(db, entry.id)
    assert fresh(db, Order, entry.id).status == "filled"
    return fresh(db, Trade, entry.trade_id)


def test_an_exit_not_sent_yet_is_cancelled_and_the_close_sells_everything(db, user, filled_trade, place_limit_exit,
                                                                           exit_orders):
    from models import Order
    from utils import trades
    limit_exit = place_limit_exit(filled_trade, "120")
    trades.close_trade(user, filled_trade.id)
    db.session.commit()
    assert fresh(db, Order, limit_exit.id).status == "cancelled"
    [market_exit] = exit_orders(filled_trade.id)
    assert market_exit.quantity == Decimal("10")
    execute_in_process(db, market_exit.id)
    assert fresh(db, type(filled_trade), filled_trade.id).status == "closed"
    assert paper_quantity(db, user) == 0


def test_an_exit_being_sent_refuses_the_close_until_it_reached_the_broker(db, user, filled_trade, place_limit_exit,
                                                                          exit_orders, set_price, run_sweep):
    from models import Order, Trade
    from utils import orders, trades
    from utils.errors import Conflict
    limit_exit = place_limit_exit(filled_trade, "120")
    orders.claim_submission(limit_exit.id)  # the worker claimed it and is talking to the broker
    db.session.commit()
    with pytest.raises(Conflict) as refused:
        trades.close_trade(user, filled_trade.id)
    assert refused.value.code == "trade.exit_in_flight"
    db.session.rollback()
    set_price("AAPL", "89")
    assert run_sweep()["triggered"] == 0  # the sweep backs off too, and leaves the trade open for the next one
    assert fresh(db, Trade, filled_trade.id).status == "open"
    assert exit_orders(filled_trade.id) == []
    orders.record_answer(limit_exit.id, orders.send_claimed(limit_exit.id))
    db.session.commit()
    assert run_sweep()["triggered"] == 1
    assert fresh(db, Order, limit_exit.id).status == "cancelled"
    [market_exit] = exit_orders(filled_trade.id)
    assert market_exit.quantity == Decimal("10")
    execute_in_process(db, market_exit.id)
    trade = fresh(db, Trade, filled_trade.id)
    assert (trade.status, trade.close_reason) == ("closed", "stop_loss")
    assert paper_quantity(db, user) == 0
