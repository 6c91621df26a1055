"""One trade whose close fails in an unexpected way (a broker answer we cannot read) is counted as failed
and left open for the next sweep; the other breached trades in the same sweep still close."""
from __future__ import annotations

from decimal import Decimal

from models import Order, Trade
from tests.conftest import execute_in_process, sent_order
from tests.fakes import schwab as fake_schwab
from tests.trading.linked_schwab import app_config, schwab_order, schwab_port  # noqa: F401


def _send_pending_stop(db, trade_id: int) -> Order:
    """Send the trade's broker-side stop (queued on the entry fill) as the worker would."""
    from utils import stoploss
    [stop] = stoploss.working_stops(trade_id)
    execute_in_process(db, stop.id)
    return stop


def test_an_unreadable_broker_answer_on_one_trade_does_not_stop_the_other_closes(db, user, schwab_order,
                                                                                schwab_port, set_price):
    from utils import stoploss
    from utils.brokers.paper import ensure_paper_connection
    set_price("AAPL", "190")
    set_price("MSFT", "410")
    server = fake_schwab.linked_server(schwab_port).start()
    try:
        at_schwab = sent_order(db, schwab_order.user_id, schwab_order.broker_connection_id, quantity=Decimal("10"),
                               stop_loss_price=Decimal("180"))
        stop = _send_pending_stop(db, at_schwab.trade_id)
        paper = sent_order(db, user.id, ensure_paper_connection(user).id, symbol="MSFT", quantity=Decimal("2"),
                           stop_loss_price=Decimal("400"))
        assert stop.status == "submitted" and paper.status == "filled"
        state = server.server.app.config["state"]
        state.orders[int(stop.broker_order_id)]["orderLegCollection"] = []  # Schwab's answer about it is unreadable

        set_price("AAPL", "170")
        set_price("MSFT", "390")
        summary = stoploss.sweep(commit=db.session.commit)
    finally:
        server.stop()

    db.session.expire_all()
    assert summary["failed"] == 1 and summary["triggered"] == 1
    assert db.session.get(Trade, at_schwab.trade_id).status == "open"  # rolled back: the next sweep tries again
    assert db.session.get(Trade, paper.trade_id).status in ("closing", "closed")
