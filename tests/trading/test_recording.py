"""Recording broker answers: state machine, fills (duplicates, overfills, exact averages) and trades."""
from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import func, select

from tests.trading.conftest import broker_fill


def _broker_order(order, status="filled", fills=()):
    from utils.brokers.base import BrokerOrder
    return BrokerOrder(broker_order_id=order.broker_order_id, client_order_id=order.client_order_id, status=status,
                       symbol=order.symbol, quantity=order.quantity, filled_quantity=Decimal("0"),
                       average_fill_price=None, fills=tuple(fills))


def test_illegal_transition_raises_and_writes_nothing(db, make_order):
    from models import OrderEvent
    from utils import orders
    from utils.errors import InvalidTransition
    order = make_order(status="filled")
    with pytest.raises(InvalidTransition):
        orders.transition(order, "submitting")
    db.session.rollback()
    assert db.session.get(type(order), order.id).status == "filled"
    assert db.session.scalar(select(func.count(OrderEvent.id)).where(OrderEvent.order_id == order.id)) == 0


def test_transition_from_a_stale_copy_changes_nothing(db, make_order):
    """The conditional UPDATE is the claim: a copy that still says `pending` cannot move a claimed order."""
    from models import Order
    from utils import orders
    from utils.errors import InvalidTransition
    order = make_order(status="pending")
    db.session.execute(Order.__table__.update().where(Order.id == order.id).values(status="submitting"))
    db.session.commit()
    stale = db.session.get(Order, order.id)
    stale.status = "pending"  # what a slower worker still believes
    db.session.flush()
    db.session.execute(Order.__table__.update().where(Order.id == order.id).values(status="submitting"))
    with pytest.raises(InvalidTransition):
        orders.transition(stale, "cancelled")


def test_only_one_claim_of_a_pending_order_succeeds(db, make_order):
    from utils import orders
    order = make_order(status="pending")
    first = orders.claim_submission(order.id)
    db.session.commit()
    second = orders.claim_submission(order.id)
    assert first == 1 and second is None
    assert db.session.get(type(order), order.id).status == "submitting"


def test_a_retry_claim_needs_the_attempt_it_saw(db, make_order):
    from utils import orders
    order = make_order(status="submitting", submit_attempts=1)
    assert orders.claim_submission(order.id, 1) == 2
    db.session.commit()
    assert orders.claim_submission(order.id, 1) is None


def test_partial_fills_add_up_with_an_exact_average(db, make_order):
    from models import Order
    from utils import orders
    order = make_order(quantity="3")
    orders.apply_broker_order(order, _broker_order(order, "partially_filled", [broker_fill("e1", "1", "10.00")]))
    db.session.commit()
    assert db.session.get(Order, order.id).status == "partially_filled"
    orders.apply_broker_order(order, _broker_order(order, "filled", [
        broker_fill("e1", "1", "10.00"), broker_fill("e2", "1", "10.01"), broker_fill("e3", "1", "10.03")]))
    db.session.commit()
    order = db.session.get(Order, order.id)
    assert order.status == "filled"
    assert order.filled_quantity == Decimal("3")
    assert order.average_fill_price == Decimal("10.0133333333")
    assert [event.to_status for event in order.events] == ["partially_filled", "filled"]


def test_duplicate_fills_are_ignored(db, make_order):
    from models import Fill, Order
    from utils import orders
    order = make_order(quantity="5")
    answer = _broker_order(order, "partially_filled", [broker_fill("e1", "2", "50")])
    orders.apply_broker_order(order, answer)
    db.session.commit()
    orders.apply_broker_order(db.session.get(Order, order.id), answer)
    db.session.commit()
    assert db.session.scalar(select(func.count(Fill.id)).where(Fill.order_id == order.id)) == 1
    assert db.session.get(Order, order.id).filled_quantity == Decimal("2")


def test_an_overfill_is_refused(db, make_order):
    from models import Fill, Order
    from utils import orders
    order = make_order(quantity="2")
    orders.apply_broker_order(order, _broker_order(order, "filled", [broker_fill("e1", "2", "50"),
                                                                      broker_fill("e2", "1", "50")]))
    db.session.commit()
    order = db.session.get(Order, order.id)
    assert order.filled_quantity == Decimal("2") and order.status == "filled"
    assert db.session.scalar(select(func.count(Fill.id)).where(Fill.order_id == order.id)) == 1


def test_a_fill_after_pending_cancel_completes_the_order(db, make_order):
    from models import Order
    from utils import orders
    order = make_order(status="pending_cancel", quantity="4")
    orders.apply_broker_order(order, _broker_order(order, "filled", [broker_fill("e1", "4", "20")]))
    db.session.commit()
    assert db.session.get(Order, order.id).status == "filled"


def test_cancel_confirmed_after_a_partial_fill_keeps_the_partial_position(db, make_order):
    from models import Order, Trade
    from utils import orders
    order = make_order(status="pending_cancel", quantity="4")
    orders.apply_broker_order(order, _broker_order(order, "cancelled", [broker_fill("e1", "1", "20")]))
    db.session.commit()
    order = db.session.get(Order, order.id)
    trade = db.session.get(Trade, order.trade_id)
    assert order.status == "cancelled" and order.filled_quantity == Decimal("1")
    assert trade.status == "open" and trade.quantity == Decimal("1")


def test_an_entry_that_never_fills_cancels_its_trade(db, make_order):
    from models import Order, Trade
    from utils import orders
    order = make_order(status="submitted")
    orders.apply_broker_order(order, _broker_order(order, "rejected"))
    db.session.commit()
    order = db.session.get(Order, order.id)
    assert order.status == "rejected"
    assert db.session.get(Trade, order.trade_id).status == "cancelled"


def test_entry_fill_opens_the_trade_and_exit_fill_closes_it_with_pnl_after_fees(db, make_order):
    from models import Order, Trade
    from utils import orders
    entry = make_order(quantity="10", stop_loss_price=Decimal("95"), take_profit_price=Decimal("120"))
    orders.apply_broker_order(entry, _broker_order(entry, "filled", [broker_fill("e1", "10", "100", fee="1")]))
    db.session.commit()
    trade = db.session.get(Trade, entry.trade_id)
    assert (trade.status, trade.side, trade.quantity, trade.entry_price) == ("open", "long", Decimal("10"),
                                                                            Decimal("100"))
    assert (trade.stop_loss_price, trade.take_profit_price) == (Decimal("95"), Decimal("120"))
    exit_order = make_order(quantity="10", side="sell", purpose="exit", trade=trade)
    orders.apply_broker_order(exit_order, _broker_order(exit_order, "filled", [
        broker_fill("x1", "4", "110", fee="0.5"), broker_fill("x2", "6", "111", fee="0.5")]))
    db.session.commit()
    trade = db.session.get(Trade, trade.id)
    assert trade.status == "closed" and trade.close_reason == "manual"
    assert trade.exit_price == Decimal("110.6")
    assert trade.realized_pnl == Decimal("106") - Decimal("2")
    assert db.session.get(Order, exit_order.id).status == "filled"


def test_option_pnl_uses_the_contract_multiplier(db, make_order):
    from models import Trade
    from utils import orders
    symbol = "AAPL  250117C00150000"
    entry = make_order(quantity="2", symbol=symbol, instruction="BUY_TO_OPEN")
    orders.apply_broker_order(entry, _broker_order(entry, "filled", [broker_fill("e1", "2", "3.50")]))
    db.session.commit()
    trade = db.session.get(Trade, entry.trade_id)
    exit_order = make_order(quantity="2", symbol=symbol, side="sell", purpose="exit", trade=trade,
                            instruction="SELL_TO_CLOSE")
    orders.apply_broker_order(exit_order, _broker_order(exit_order, "filled", [broker_fill("x1", "2", "4.25")]))
    db.session.commit()
    assert db.session.get(Trade, trade.id).realized_pnl == Decimal("150")


def test_order_to_dict_has_the_contract_shape(db, make_order):
    from utils import orders
    order = make_order(quantity="3", limit_price=Decimal("101.25"))
    orders.apply_broker_order(order, _broker_order(order, "partially_filled", [broker_fill("e1", "1", "101.25")]))
    db.session.commit()
    body = orders.order_to_dict(order)
    assert body["limit_price"] == "101.25" and body["filled_quantity"] == "1"
    assert body["created_at"].endswith("Z")
    assert body["fills"][0]["price"] == "101.25"
    assert body["events"][-1]["to_status"] == "partially_filled"
    assert {"id", "client_order_id", "symbol", "side", "instruction", "quantity", "type", "stop_price",
            "time_in_force", "status", "average_fill_price", "purpose", "trade_id"} <= set(body)


def test_amounts_go_to_the_broker_without_the_zeros_postgresql_pads_them_with():
    """PostgreSQL reads NUMERIC(28, 10) back as 0.0100000000; a broker checking size precision (Coinbase's
    base_increment) would refuse that, so the request carries the plain amount."""
    from models import Order
    from utils import orders
    order = Order(client_order_id="plain-1", symbol="BTC-USD", asset_type="crypto", side="buy", instruction="BUY",
                  order_type="stop_limit", quantity=Decimal("0.0100000000"), time_in_force="gtc",
                  limit_price=Decimal("65000.5000000000"), stop_price=Decimal("65000.0000000000"))
    request = orders.broker_request(order)
    assert [format(amount, "f") for amount in (request.quantity, request.limit_price, request.stop_price)] == \
        ["0.01", "65000.5", "65000"]
