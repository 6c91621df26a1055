"""The order path's prebuilt writes (utils.database): a guarded UPDATE changes the row only while its guards
hold, and a row inserted without the ORM lands in the same transaction."""
from __future__ import annotations

from decimal import Decimal

from sqlalchemy import select

from tests.conftest import statements_sent


def test_a_guarded_update_changes_the_row_only_while_every_guard_holds(db, make_order):
    from models import Order
    from utils.database import guarded_update
    order = make_order(status="submitted", quantity="10")
    assert guarded_update(Order, order.id, {"status": "pending"}, {"reject_reason": "no"}) == 0
    assert guarded_update(Order, order.id, {"status": ("pending", "submitting")}, {"reject_reason": "no"}) == 0
    assert guarded_update(Order, order.id, {"status": ("pending", "submitted"), "filled_quantity": Decimal("0")},
                          {"filled_quantity": Decimal("2.5")}) == 1
    assert guarded_update(Order, order.id, {"filled_quantity": Decimal("0")}, {"filled_quantity": Decimal("9")}) == 0
    db.session.commit()
    db.session.expire_all()
    stored = db.session.get(Order, order.id)
    assert (stored.filled_quantity, stored.reject_reason) == (Decimal("2.5"), None)


def test_changes_pending_in_the_session_are_written_before_the_guarded_update(db, make_order):
    """The ORM change is flushed first, so the guard sees it (as the ORM's autoflush did)."""
    from models import Order
    from utils.database import guarded_update
    order = make_order(status="submitted")
    order.reject_reason = "set through the ORM"
    assert guarded_update(Order, order.id, {"reject_reason": "set through the ORM"}, {"status": "cancelled"}) == 1


def test_an_inserted_row_is_read_back_in_the_same_transaction_and_rolled_back_with_it(db, make_order):
    from models import OrderEvent
    from utils.database import insert_row
    order = make_order(status="submitted")
    event_id = insert_row(OrderEvent, {"order_id": order.id, "from_status": "submitted", "to_status": "filled",
                                       "detail": "inserted"})
    assert db.session.scalar(select(OrderEvent.detail).where(OrderEvent.id == event_id)) == "inserted"
    assert db.session.get(OrderEvent, event_id).created_at is not None  # the column default applied
    db.session.rollback()
    assert db.session.scalar(select(OrderEvent.id).where(OrderEvent.id == event_id)) is None


# --- the statements run precompiled (utils.database.Precompiled) ------------------------------------------

def _driver_statements(db, run) -> list:
    """(SQL, whether SQLAlchemy compiled it on this call) of each statement `run` sends to the driver."""
    return [(" ".join(statement.split()), context.compiled is not None)
            for statement, _, context in statements_sent(db, run)]


def test_on_sqlite_the_order_path_statements_reach_the_driver_without_compiling_each_time(db, make_order):
    """SQLite: guarded_update, insert_row and read_rows hand the driver SQL compiled once; on a database with
    named parameters (PostgreSQL) and for an IN list, SQLAlchemy compiles as before."""
    from models import Order, OrderEvent
    from utils.database import guarded_update, insert_row, read_rows
    from utils.orders import ORDER_BY_CLIENT_ID
    order = make_order(status="submitted")
    order_id, client_order_id = order.id, order.client_order_id
    seen = _driver_statements(db, lambda: (
        guarded_update(Order, order_id, {"status": "submitted"}, {"reject_reason": "x"}),
        insert_row(OrderEvent, {"order_id": order_id, "from_status": "submitted", "to_status": "submitted"}),
        read_rows(ORDER_BY_CLIENT_ID, {"client_id": client_order_id}),
        guarded_update(Order, order_id, {"status": ("submitted", "pending")}, {"reject_reason": "y"})))
    precompiled = db.session.get_bind().dialect.positional
    assert [compiled for _, compiled in seen] == [not precompiled] * 3 + [True], seen
    assert [sql.split()[0] for sql, _ in seen] == ["UPDATE", "INSERT", "SELECT", "UPDATE"]


def test_a_precompiled_write_and_read_convert_values_exactly_as_sqlalchemy_does(db, make_order):
    """Decimals, aware UTC datetimes, enums and NULLs go in and come back as the ORM writes and reads them; the
    columns left out get their Python-side defaults (created_at on INSERT, updated_at's onupdate on UPDATE)."""
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import bindparam

    from models import Order, OrderEvent, OrderStatus
    from utils.database import guarded_update, insert_row, read_rows
    order = make_order(status="submitted", quantity="10")
    before = db.session.scalar(select(Order.updated_at).where(Order.id == order.id))
    submitted_at = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=timezone(timedelta(hours=2)))
    assert guarded_update(Order, order.id, {"status": OrderStatus.SUBMITTED, "filled_quantity": Decimal("0")},
                          {"average_fill_price": Decimal("187.123456789"), "submitted_at": submitted_at,
                           "reject_reason": None, "status": OrderStatus.PARTIALLY_FILLED}) == 1
    event_id = insert_row(OrderEvent, {"order_id": order.id, "from_status": OrderStatus.SUBMITTED,
                                       "to_status": OrderStatus.PARTIALLY_FILLED, "detail": None})
    columns = Order.__table__.c
    statement = select(columns.average_fill_price, columns.submitted_at, columns.status, columns.reject_reason,
                       columns.updated_at).where(columns.id == bindparam("order_id"))
    row = read_rows(statement, {"order_id": order.id})[0]
    db.session.commit()
    db.session.expire_all()
    stored = db.session.get(Order, order.id)
    assert row.average_fill_price == stored.average_fill_price == Decimal("187.123456789")
    assert row.submitted_at == stored.submitted_at == submitted_at
    assert row.submitted_at.tzinfo is not None and row.submitted_at.utcoffset() == timedelta(0)
    assert row.status == stored.status == "partially_filled" and row.reject_reason is None
    assert row.updated_at == stored.updated_at > before  # updated_at was not given: its onupdate applied
    event = db.session.get(OrderEvent, event_id)
    assert (event.to_status, event.detail) == ("partially_filled", None) and event.created_at is not None


def test_a_precompiled_read_keeps_the_values_its_statement_carries(db, make_order):
    """A LIMIT brings a bound OFFSET of its own, a literal binds its value, and an IN list the statement holds
    is written out once: all of them are sent with each run, and the rows are those SQLAlchemy would read."""
    from sqlalchemy import bindparam, literal

    from models import Order
    from utils.database import read_rows
    first, second = make_order(status="pending"), make_order(status="submitting")
    make_order(status="submitted")
    user_id = first.user_id
    columns = Order.__table__.c
    statement = select(columns.id, literal(7).label("seven")).where(
        columns.user_id == bindparam("user_id"), columns.status.in_(("pending", "submitting"))) \
        .order_by(columns.id).limit(bindparam("limit"))
    one, two = [], []
    seen = _driver_statements(db, lambda: (
        one.extend(read_rows(statement, {"user_id": user_id, "limit": 1})),
        two.extend(read_rows(statement, {"user_id": user_id, "limit": 5}))))
    assert [(row.id, row.seven) for row in one] == [(first.id, 7)]
    assert [row.id for row in two] == [first.id, second.id]
    assert [compiled for _, compiled in seen] == [not db.session.get_bind().dialect.positional] * 2


def test_an_update_returning_through_read_rows_gives_its_rows_converted(db, paper_connection):
    """The paper account's lock (UPDATE … RETURNING id, cash) runs precompiled on SQLite and its cash comes
    back as the exact Decimal it holds."""
    from utils.brokers.paper import LOCK_ACCOUNT_OF_CONNECTION, _account_for
    from utils.database import read_rows
    account = _account_for(paper_connection)
    account_id, cash, connection_id = account.id, account.cash, paper_connection.id
    db.session.commit()
    rows = []
    seen = _driver_statements(db, lambda: rows.extend(
        read_rows(LOCK_ACCOUNT_OF_CONNECTION, {"lock_connection_id": connection_id})))
    assert [(row.id, row.cash) for row in rows] == [(account_id, cash)] and isinstance(rows[0].cash, Decimal)
    assert [compiled for _, compiled in seen] == [not db.session.get_bind().dialect.positional]


# --- run on the driver's cursor (utils.database._on_driver) ----------------------------------------------

def _order_path_statements(order_id: int, client_order_id: str) -> list:
    """A guarded UPDATE, an INSERT and a SELECT of the order path, with what each gave."""
    from models import Order, OrderEvent
    from utils.database import guarded_update, insert_row, read_rows
    from utils.orders import ORDER_BY_CLIENT_ID
    return [guarded_update(Order, order_id, {"status": "submitted"}, {"reject_reason": "x"}),
            insert_row(OrderEvent, {"order_id": order_id, "from_status": "submitted", "to_status": "submitted"}) > 0,
            [row.id for row in read_rows(ORDER_BY_CLIENT_ID, {"client_id": client_order_id})]]


def test_with_no_listener_the_precompiled_statements_run_on_the_driver_and_a_listener_still_sees_them(
        db, make_order, monkeypatch):
    """SQLite: nothing listens to the engine, so the statements skip SQLAlchemy's execution (exec_driver_sql is
    never called) and reach the driver all the same (its own trace shows them). Once a listener is attached,
    they go through SQLAlchemy again and the listener sees each. The answers are the same both ways."""
    from sqlalchemy.engine import Connection
    order = make_order(status="submitted")
    order_id, client_order_id = order.id, order.client_order_id
    through_sqlalchemy = []
    run_by_sqlalchemy = Connection.exec_driver_sql
    monkeypatch.setattr(Connection, "exec_driver_sql", lambda connection, statement, *args, **kwargs: (
        through_sqlalchemy.append(statement), run_by_sqlalchemy(connection, statement, *args, **kwargs))[1])
    traced = []
    driver = db.session.connection().connection.driver_connection
    if hasattr(driver, "set_trace_callback"):
        driver.set_trace_callback(traced.append)
    quiet = _order_path_statements(order_id, client_order_id)
    if hasattr(driver, "set_trace_callback"):
        driver.set_trace_callback(None)
    heard = []
    seen = statements_sent(db, lambda: heard.extend(_order_path_statements(order_id, client_order_id)))
    assert quiet == heard == [1, True, [order_id]]
    assert [statement.split()[0] for statement, _, _ in seen] == ["UPDATE", "INSERT", "SELECT"]
    if db.session.get_bind().dialect.positional:  # SQLite: precompiled
        assert [" ".join(sql.split())[:6] for sql in traced if sql.split()[0] in ("UPDATE", "INSERT", "SELECT")] \
            == ["UPDATE", "INSERT", "SELECT"]
        assert [sql.split()[0] for sql in through_sqlalchemy] == ["UPDATE", "INSERT", "SELECT"]  # only the heard


def test_a_driver_error_on_the_precompiled_path_is_raised_as_sqlalchemys(db, make_order):
    """A duplicate key from the driver is SQLAlchemy's IntegrityError (what callers catch), on either path, and
    the transaction rolls back cleanly."""
    from datetime import datetime, timezone

    import pytest
    from sqlalchemy.exc import IntegrityError

    from models import Fill
    from utils.database import insert_row
    order = make_order(status="submitted")
    fill = {"user_id": order.user_id, "order_id": order.id, "broker_execution_id": "exec-1", "quantity": Decimal("1"),
            "price": Decimal("10"), "fee": Decimal("0"), "executed_at": datetime.now(timezone.utc)}
    insert_row(Fill, fill)
    with pytest.raises(IntegrityError):
        insert_row(Fill, fill)
    db.session.rollback()
    assert db.session.scalar(select(Fill.id).where(Fill.order_id == order.id)) is None


# --- ORM objects from rows read precompiled (utils.database.get_object, objects_from_row) -----------------

def _column_values(row) -> dict:
    return {column.key: getattr(row, column.key) for column in type(row).__table__.columns}


def test_get_object_gives_what_session_get_gives_with_its_identity_and_no_statement_for_a_held_row(db, make_order):
    """The same values as the ORM's load, a clean persistent object, the session's own object for a row it
    holds (no statement), the row's current values for an object expired by a commit, and None for no row."""
    from sqlalchemy import inspect

    from models import Trade
    from utils.database import get_object
    order = make_order(status="submitted")
    trade_id = order.trade_id
    db.session.expunge_all()
    expected = _column_values(db.session.get(Trade, trade_id))
    db.session.expunge_all()
    trade = get_object(Trade, trade_id)
    assert _column_values(trade) == expected
    assert inspect(trade).persistent and trade not in db.session.dirty
    assert statements_sent(db, lambda: get_object(Trade, trade_id)) == [] and get_object(Trade, trade_id) is trade
    db.session.execute(Trade.__table__.update().where(Trade.__table__.c.id == trade_id).values(fees=Decimal("1.25")))
    db.session.commit()  # expires the object: the next read gives the row as it is now
    assert get_object(Trade, trade_id) is trade and trade.fees == Decimal("1.25")
    assert get_object(Trade, 10**9) is None


def test_the_order_paths_loads_by_id_run_precompiled_and_give_working_orm_objects(db, make_order, user):
    """The worker's order with its connection and the web's paper connection reach the driver uncompiled on
    SQLite; the objects are those the ORM loads, and their relationships still load on access."""
    from models import BrokerConnection, Order, OrderEvent, User
    from utils.brokers.paper import ensure_paper_connection
    from utils.database import insert_row
    from utils.orders import _order_and_connection
    order = make_order(status="submitted")
    order_id, user_id = order.id, user.id
    event_id = insert_row(OrderEvent, {"order_id": order_id, "from_status": "pending", "to_status": "submitted"})
    db.session.commit()
    db.session.expunge_all()
    expected_order = _column_values(db.session.get(Order, order_id))
    expected_connection = _column_values(db.session.get(BrokerConnection, expected_order["broker_connection_id"]))
    db.session.expunge_all()
    found = []
    seen = _driver_statements(db, lambda: found.extend(
        [*_order_and_connection(order_id), ensure_paper_connection(db.session.get(User, user_id))]))
    loaded_order, connection, paper_connection = found
    assert _column_values(loaded_order) == expected_order and _column_values(connection) == expected_connection
    assert paper_connection is connection  # one identity per row
    assert [event.id for event in loaded_order.events] == [event_id]  # a relationship loads on access
    assert not db.session.dirty
    selects = [compiled for sql, compiled in seen if sql.startswith("SELECT") and "broker_connections" in sql]
    assert selects == [not db.session.get_bind().dialect.positional] * 2, seen
    assert _order_and_connection(10**9) == (None, None)
