"""The risk checks read what counts today, not the user's whole history.

Every order placement reads the user's orders and trades for the limits, and the paper account's open
orders for its buying power. Each of those reads must be one index range narrowed past the owner (the
user's *working* orders, their orders of *today*, their trades closed *today*), not every row the user
or account ever had: otherwise placing an order grows slower with each month of history (measured: 9 ms
with no history, 39 ms after 100,000 old orders). The plans are read from the database itself (SQLite's
EXPLAIN QUERY PLAN; PostgreSQL's EXPLAIN with sequential scans switched off, as a large table would be).

The semantic tests beside them pin what the split reads must still see: yesterday's working order, and
not yesterday's filled order or yesterday's loss.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from sqlalchemy import insert, select, text, update

from tests.conftest import statements_sent

OWNER_READS = {"orders": "user_id", "trades": "user_id", "paper_orders": "account_id"}


def reads_during(db, action) -> list[tuple[str, object]]:
    """The SELECT statements (with their parameters) that `action()` sends to the database."""
    return [(statement, parameters) for statement, parameters, _ in statements_sent(db, action)
            if statement.lstrip().upper().startswith("SELECT")]


def plan_of(db, statement: str, parameters) -> str:
    """The database's plan for `statement`, as one text."""
    with db.engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            return "\n".join(row[3] for row in rows)
        connection.exec_driver_sql("SET enable_seqscan = off")
        return "\n".join(row[0] for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters))


def owner_only_reads(plan: str) -> list[str]:
    """The parts of `plan` that read one of OWNER_READS's tables by its owner column alone (or not by an
    index at all): those read the owner's whole history."""
    found = []
    for table, owner in OWNER_READS.items():
        if re.search(rf"\bSCAN {table}\b|Seq Scan on {table}\b", plan):
            found.append(f"{table}: full scan")
        if re.search(rf"SEARCH {table} USING (COVERING )?INDEX \w+ \({owner}=\?\)", plan):
            found.append(f"{table}: by {owner} alone")
    for index_condition in re.findall(r"Index Cond: \((.*)\)", plan):
        for table, owner in OWNER_READS.items():
            if re.fullmatch(rf"\(?{owner} = [^()]+\)?", index_condition.strip()):
                found.append(f"an index read by {owner} alone: {index_condition}")
    return found


def months_of_history(db, user, count: int = 1500) -> None:
    """`count` orders, trades and paper orders of the user, all finished 40 days ago. PostgreSQL gets fresh
    statistics, as its autovacuum would give it; SQLite plans without any, as Tradewarden never runs ANALYZE."""
    from models import Order, PaperAccount, PaperOrder, Trade
    from utils.brokers import ensure_paper_connection
    connection = ensure_paper_connection(user)
    account_id = db.session.scalar(select(PaperAccount.id).where(PaperAccount.connection_id == connection.id))
    old = datetime.now(timezone.utc) - timedelta(days=40)
    common = {"symbol": "AAPL", "asset_type": "equity", "created_at": old, "updated_at": old}
    order = {**common, "side": "buy", "instruction": "BUY", "order_type": "market", "time_in_force": "day",
             "quantity": Decimal("1"), "filled_quantity": Decimal("1"), "status": "filled"}
    db.session.execute(insert(Order), [
        {**order, "user_id": user.id, "broker_connection_id": connection.id, "client_order_id": f"old-{n}",
         "purpose": "entry", "completed_at": old} for n in range(count)])
    db.session.execute(insert(PaperOrder), [
        {**order, "account_id": account_id, "public_id": f"00000000-0000-0000-0000-{n:012d}",
         "client_order_id": f"old-{n}", "filled_notional": Decimal("100"), "filled_at": old} for n in range(count)])
    db.session.execute(insert(Trade), [
        {**common, "user_id": user.id, "broker_connection_id": connection.id, "side": "long", "status": "closed",
         "quantity": Decimal("1"), "exit_quantity": Decimal("1"), "entry_price": Decimal("100"),
         "exit_price": Decimal("99"), "realized_pnl": Decimal("-1"), "opened_at": old, "closed_at": old}
        for _ in range(count)])
    db.session.commit()
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text("ANALYZE"))
        db.session.commit()


def test_placing_an_order_reads_no_table_by_its_owner_alone(app, db, user, set_price):
    from utils import orders
    set_price("AAPL", "100")
    months_of_history(db, user)
    reads = reads_during(db, lambda: orders.place_order(user, {"symbol": "AAPL", "side": "buy", "quantity": "2",
                                                                "type": "market", "time_in_force": "day"}))
    checked = 0
    for statement, parameters in reads:
        if not any(re.search(rf"\bFROM {table}\b", statement) for table in OWNER_READS):
            continue
        checked += 1
        plan = plan_of(db, statement, parameters)
        assert owner_only_reads(plan) == [], f"{statement.splitlines()[0][:90]}…\n{plan}"
    assert checked >= 3  # the order totals, the trade totals and the paper account's open orders


def _backdate(db, model, row_id: int, **columns) -> None:
    db.session.execute(update(model).where(model.id == row_id).values(**columns))
    db.session.commit()


def test_yesterdays_working_order_still_counts_and_yesterdays_filled_order_does_not(db, user, make_order):
    from models import Order
    from utils import risk
    yesterday = datetime.now(timezone.utc) - timedelta(days=1)
    still_working = make_order(status="submitted", quantity="240", limit_price=Decimal("100"))
    done = make_order(status="filled", quantity="5", average_fill_price=Decimal("100"))
    for order in (still_working, done):
        _backdate(db, Order, order.id, created_at=yesterday)
    totals = risk._order_totals(user.id, "AAPL", exclude_order_id=None)
    assert totals.working_notional_in_symbol == Decimal("24000")  # yesterday's limit order is still working
    assert (totals.count_today, totals.notional_today) == (0, Decimal("0"))


def test_a_loss_closed_yesterday_is_not_todays_loss(db, user, make_order):
    from models import Trade
    from utils import risk
    yesterday = datetime.now(timezone.utc) - timedelta(days=1)
    old, today = make_order(status="filled"), make_order(status="filled")
    _backdate(db, Trade, old.trade_id, status="closed", realized_pnl=Decimal("-700"), closed_at=yesterday)
    _backdate(db, Trade, today.trade_id, status="closed", realized_pnl=Decimal("-40"),
              closed_at=datetime.now(timezone.utc))
    held = make_order(status="filled", quantity="3")
    _backdate(db, Trade, held.trade_id, status="open", quantity=Decimal("3"), entry_price=Decimal("50"))
    assert risk._trade_totals(user.id, "AAPL") == (Decimal("-40"), Decimal("150"))


def test_the_totals_are_exact_decimals(db, user, make_order):
    """The totals are exact: amounts that floats cannot add (0.1 + 0.2, a fraction
    of a coin at 0.7) and an option's 100 shares per contract come back as the exact Decimals."""
    from models import Trade
    from utils import risk
    make_order(status="pending", quantity="3", limit_price=Decimal("0.1"))
    make_order(status="pending", quantity="3", limit_price=Decimal("0.2"))
    make_order(status="submitted", symbol="BTC-USD", quantity="0.00000003", limit_price=Decimal("0.7"))
    make_order(status="pending", symbol="AAPL300118C00190000", quantity="2", limit_price=Decimal("1.15"))
    totals = risk._order_totals(user.id, "AAPL", exclude_order_id=None)
    assert totals.unsent_notional == Decimal("230.9")  # 0.3 + 0.6 + 2 contracts × 100 × 1.15
    assert totals.working_notional_in_symbol == Decimal("0.9")
    assert (totals.count_today, totals.notional_today) == (4, Decimal("230.900000021"))
    held = make_order(status="filled", quantity="0.3")
    _backdate(db, Trade, held.trade_id, status="open", quantity=Decimal("0.3"), exit_quantity=Decimal("0.1"),
              entry_price=Decimal("0.1"))
    closed = make_order(status="filled")
    _backdate(db, Trade, closed.trade_id, status="closed", realized_pnl=Decimal("-0.1"),
              closed_at=datetime.now(timezone.utc))
    again = make_order(status="filled")
    _backdate(db, Trade, again.trade_id, status="closed", realized_pnl=Decimal("-0.2"),
              closed_at=datetime.now(timezone.utc))
    assert risk._trade_totals(user.id, "AAPL") == (Decimal("-0.3"), Decimal("0.02"))


def test_with_nothing_to_count_the_totals_are_zero(db, user):
    from utils import risk
    assert risk._order_totals(user.id, "AAPL", exclude_order_id=None) == risk.OrderTotals(
        Decimal("0"), Decimal("0"), 0, Decimal("0"))
    assert risk._trade_totals(user.id, "AAPL") == (Decimal("0"), Decimal("0"))


def test_todays_finished_orders_and_closed_trades_are_added_up_exactly_in_the_database(db, user, make_order):
    """A finished order counts with its fill price (or limit, or estimate), an option with 100 per contract;
    refused orders and replacements do not count; the sums are exact where floats are not."""
    from models import Trade
    from utils import risk
    make_order(status="filled", quantity="3", average_fill_price=Decimal("0.1"))
    make_order(status="cancelled", quantity="3", limit_price=Decimal("0.2"))
    make_order(status="filled", symbol="BTC-USD", quantity="0.00000003", average_fill_price=Decimal("0.7"))
    make_order(status="expired", symbol="AAPL300118C00190000", quantity="2", estimated_price=Decimal("1.15"))
    make_order(status="rejected", quantity="1000", limit_price=Decimal("5"))
    make_order(status="failed", quantity="1000", estimated_price=Decimal("5"))
    replaced = make_order(status="replaced", quantity="1000", limit_price=Decimal("5"))
    make_order(status="filled", quantity="1000", limit_price=Decimal("5"), replaces_order_id=replaced.id)
    totals = risk._order_totals(user.id, "AAPL", exclude_order_id=None)
    assert totals.count_today == 5  # two fills, the cancel, the expiry and the replaced order (not its replacement)
    assert totals.notional_today == Decimal("5230.900000021")  # 0.3 + 0.6 + 0.000000021 + 230 + 5000
    for pnl in ("-0.1", "-0.2", "0.05"):
        closed = make_order(status="filled")
        _backdate(db, Trade, closed.trade_id, status="closed", realized_pnl=Decimal(pnl),
                  closed_at=datetime.now(timezone.utc))
    assert risk._trade_totals(user.id, "AAPL") == (Decimal("-0.25"), Decimal("0"))


def rows_of_totals_reads(db, action) -> list[int]:
    """How many rows each SELECT on orders or trades that `action()` sends returns (each one run again)."""
    counts = []
    with db.engine.connect() as connection:
        for statement, parameters in reads_during(db, action):
            if re.search(r"\bFROM (orders|trades)\b", statement):
                counts.append(len(connection.exec_driver_sql(statement, parameters).all()))
    return counts


def test_the_totals_read_one_row_for_the_days_finished_orders_however_many_they_are(db, user, make_order):
    """Placing an order read every order and closed trade of the user's day and every open trade in the symbol,
    one row each, so each order cost more than the last (6 µs per order already placed that day). The finished
    orders are one row now, and the trades two."""
    from models import Trade
    from utils import risk
    for _ in range(3):
        make_order(status="submitted", limit_price=Decimal("10"))  # working: one row each
    for number in range(40):
        done = make_order(status="filled", average_fill_price=Decimal("10"))
        closed = {"status": "closed", "realized_pnl": Decimal("1"), "closed_at": datetime.now(timezone.utc)}
        held = {"status": "open", "quantity": Decimal("10"), "exit_quantity": Decimal("4"),
                "entry_price": Decimal("10")}
        _backdate(db, Trade, done.trade_id, **(closed if number % 2 else held))
    counts = rows_of_totals_reads(db, lambda: (risk._order_totals(user.id, "AAPL", exclude_order_id=None),
                                               risk._trade_totals(user.id, "AAPL")))
    assert counts == [3 + 1, 2]  # the working orders and the finished ones' row; the open trades' and the closed
    totals = risk._order_totals(user.id, "AAPL", exclude_order_id=None)
    assert (totals.count_today, totals.notional_today) == (43, Decimal("4300"))
    assert risk._trade_totals(user.id, "AAPL") == (Decimal("20"), Decimal("1200"))  # 20 trades hold 6 at 10
