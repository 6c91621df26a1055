"""Beat's positions.check compares a linked broker's positions (the fake Schwab's, in its wire format) with the
open trades on that link, and warns on the dashboard where the broker holds less than the trades, once seen at
two checks in a row. Nothing is closed on that evidence."""
from __future__ import annotations

from decimal import Decimal

from sqlalchemy import update

from tests.fakes import schwab as fake_schwab
from tests.trading.linked_schwab import app_config, schwab_order, schwab_port  # noqa: F401

OPTION = "AAPL240517P00190000"  # the fake Schwab holds 10 AAPL and 2 of this put


def test_a_shortfall_is_less_in_the_trades_direction():
    from utils.position_check import Shortfall, shortfalls
    D = Decimal
    ours = {"AAPL": D(10), "MSFT": D(-5), "NVDA": D(3), "TSLA": D(4), "AMD": D(-2)}
    broker = {"AAPL": D(10), "MSFT": D(-2), "NVDA": D(5), "TSLA": D(-1), "AMD": D(-7)}
    assert shortfalls(ours, broker) == [Shortfall("MSFT", D(-5), D(-2)), Shortfall("TSLA", D(4), D(-1))]
    assert shortfalls({"AAPL": D("0.5")}, {}) == [Shortfall("AAPL", D("0.5"), D(0))]


def open_trades_at(db, order, *trades: tuple[str, str, str]) -> None:
    """Open trades (symbol, side, quantity) on the order's Schwab link; the order itself is finished."""
    from models import Order, Trade
    from utils.dbtypes import utcnow
    db.session.execute(update(Order).where(Order.id == order.id).values(status="cancelled"))
    db.session.execute(update(Trade).where(Trade.id == order.trade_id).values(status="cancelled"))
    for symbol, side, quantity in trades:
        db.session.add(Trade(user_id=order.user_id, broker_connection_id=order.broker_connection_id, symbol=symbol,
                             asset_type="option" if symbol == OPTION else "equity", side=side, status="open",
                             quantity=Decimal(quantity), entry_price=Decimal("100"), opened_at=utcnow()))
    db.session.commit()


def test_shortfalls_are_shown_after_two_checks_and_only_to_their_owner(db, user, make_user, schwab_order,
                                                                       schwab_port):
    from utils import position_check
    open_trades_at(db, schwab_order, ("AAPL", "long", "15"), ("MSFT", "long", "5"), (OPTION, "long", "2"))
    server = fake_schwab.linked_server(schwab_port).start()
    try:
        assert position_check.check_all() == {"checked": 1, "shortfalls": 2, "failed": 0}
        assert position_check.warnings_for(user) == []  # one sighting could be a fill not yet recorded
        position_check.check_all()
    finally:
        server.stop()
    warnings = position_check.warnings_for(user)
    assert [(w["symbol"], w["ours"], w["at_broker"], w["broker"]) for w in warnings] == [
        ("AAPL", "15", "10", "Charles Schwab"), ("MSFT", "5", "0", "Charles Schwab")]
    assert position_check.warnings_for(make_user(email="someone-else@example.com")) == []


def test_a_symbol_with_an_order_under_way_is_left_out(db, user, schwab_order, schwab_port):
    from utils import position_check
    open_trades_at(db, schwab_order, ("AAPL", "long", "15"))
    db.session.execute(update(type(schwab_order)).where(type(schwab_order).id == schwab_order.id)
                       .values(status="submitted"))  # its fill may not be recorded yet
    db.session.commit()
    server = fake_schwab.linked_server(schwab_port).start()
    try:
        assert position_check.check_all()["shortfalls"] == 0
    finally:
        server.stop()


def test_an_unreachable_broker_is_counted_and_skipped(db, user, schwab_order):
    from utils import position_check
    open_trades_at(db, schwab_order, ("MSFT", "long", "5"))
    assert position_check.check_all() == {"checked": 0, "shortfalls": 0, "failed": 1}  # nothing listens
    assert position_check.warnings_for(user) == []


def test_the_dashboard_says_what_the_broker_reports(db, client, login, user, schwab_order, schwab_port):
    from utils import position_check
    open_trades_at(db, schwab_order, ("MSFT", "long", "5"))
    server = fake_schwab.linked_server(schwab_port).start()
    try:
        position_check.check_all()
        position_check.check_all()
    finally:
        server.stop()
    login(user)
    html = client.get("/").get_data(as_text=True)
    assert "Charles Schwab reports 0" in html and "MSFT" in html and "closed at the broker" in html


def test_the_check_runs_on_beat(app):
    import worker
    from utils import jobs
    assert worker.BEAT_SCHEDULE["positions-check"] == {"task": jobs.POSITIONS_CHECK, "schedule": 300.0}
    assert jobs.POSITIONS_CHECK in worker.celery.tasks
