"""An exit that reaches a remote broker after a fill already closed its trade is withdrawn at once.

The paper broker refuses such an exit itself (a closing order with nothing held); Schwab takes it, so
Tradewarden must cancel it there before it can sell what is no longer held. Driven step by step in the test
process against the fake Schwab: the limit sell's send has begun, the trade is closed meanwhile (as the fill
of another exit closes it), then the send completes.
"""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from sqlalchemy import update

from tests.fakes import schwab as fake_schwab
from tests.trading.linked_schwab import app_config, schwab_order, schwab_port  # noqa: F401


def test_a_limit_sell_arriving_at_schwab_after_its_trade_closed_is_cancelled_there(db, user, schwab_order,
                                                                                  schwab_port):
    from models import Order, Trade
    from utils import orders
    db.session.execute(update(Trade).where(Trade.id == schwab_order.trade_id).values(
        status="open", quantity=Decimal("10"), entry_price=Decimal("100"), opened_at=datetime.now(timezone.utc)))
    db.session.commit()
    limit_exit, _ = orders.place_order(user, {
        "symbol": "AAPL", "side": "sell", "instruction": "SELL", "type": "limit", "limit_price": "120",
        "quantity": "10", "trade_id": schwab_order.trade_id, "broker_connection_id": schwab_order.broker_connection_id})
    orders.claim_submission(limit_exit.id)  # its send has begun
    db.session.commit()
    db.session.execute(update(Trade).where(Trade.id == schwab_order.trade_id).values(  # another exit's fill
        status="closed", exit_quantity=Decimal("10"), exit_price=Decimal("95"), realized_pnl=Decimal("-50"),
        closed_at=datetime.now(timezone.utc)))
    db.session.commit()

    server = fake_schwab.linked_server(schwab_port).start()
    try:
        orders.record_answer(limit_exit.id, orders.send_claimed(limit_exit.id))  # the send completes only now
        db.session.commit()
        assert db.session.get(Order, limit_exit.id).status == "pending_cancel"
        orders.request_broker_cancel(limit_exit.id)  # what the queued orders.cancel does
        db.session.commit()
        at_schwab = list(server.server.app.config["state"].orders.values())
    finally:
        server.stop()
    db.session.expire_all()
    assert db.session.get(Order, limit_exit.id).status == "cancelled"
    assert [(order["status"], order["filledQuantity"]) for order in at_schwab] == [("CANCELED", 0.0)]
