"""Database engine tuning (SQLite in WAL mode with a busy timeout, so web and workers can write together),
`owned_row`, the one lookup of a user's row by an id from a request, and the reads and writes of the order
path that skip the ORM's per-statement work (`read_rows`, `guarded_update`, `insert_row`; on SQLite they run
`Precompiled`, compiled once, on the driver's cursor), and `exact_sum`, an exact decimal sum in SQL on both
databases.

SQLite allows one writer at a time. Without a busy timeout a second writer fails at once with
"database is locked"; without WAL every reader blocks the writer. PostgreSQL needs none of this.
"""
from __future__ import annotations

import collections
import functools
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import bindparam, event, exc, func, insert, select, update
from sqlalchemy.orm import configure_mappers, make_transient_to_detached
from sqlalchemy.orm.attributes import instance_state, set_committed_value

from utils.errors import NotFound
from utils.extensions import db

# The largest id a row can have: the INTEGER primary keys are 32-bit on PostgreSQL (SQLite's are wider, but
# its ids count up from 1 and no table gets near two billion rows). A larger id from a request cannot name a
# row, and comparing PostgreSQL's column with it would fail ("integer out of range"), so it is refused first.
LARGEST_ROW_ID = 2**31 - 1
# A Flask URL converter for row ids: anything else in the path is a 404 before any query runs.
ID_RULE = f"int(min=1, max={LARGEST_ROW_ID})"

SQLITE_BUSY_TIMEOUT_MS = 30_000


def init_app(app) -> None:
    """Set a busy timeout (always) and WAL with synchronous=NORMAL (outside tests) on new SQLite connections.

    Tests keep the rollback journal: their fixtures copy a template database file, and in WAL mode
    the freshly migrated schema would still sit in the separate -wal file.
    """
    with app.app_context():
        engine = db.engine
    if engine.dialect.name != "sqlite":
        return
    listener = _tune_sqlite_for_tests if app.config.get("TESTING") else _tune_sqlite
    event.listen(engine, "connect", listener)


class ExactSum:
    """SQLite aggregate `exact_sum(value)`: the exact sum of a decimal column over the rows, as canonical text
    (NULLs add nothing).

    SQLite's own SUM adds floats; Tradewarden keeps decimals as text there (utils/dbtypes.ExactDecimal), so
    this adds them as Python Decimals. PostgreSQL's SUM over NUMERIC is exact already (see `exact_sum`).
    SQLite calls `step` once per row: it is kept to the bare arithmetic (about 0.7 µs a row)."""

    __slots__ = ("total",)

    def __init__(self):
        self.total = Decimal(0)

    def step(self, value) -> None:
        if value is not None:
            self.total += Decimal(value)

    def finalize(self) -> str:
        return format(self.total.normalize(), "f")


class ExactSumOfProducts(ExactSum):
    """SQLite aggregate `exact_sum(a, b, c)`: the exact sum of a × b × c over the rows, for decimals a and b
    and an integer c such as a contract multiplier (a row with a NULL adds nothing)."""

    __slots__ = ()

    def step(self, a, b, c) -> None:
        if a is not None and b is not None and c is not None:
            self.total += Decimal(a) * Decimal(b) * c


def exact_sum(dialect_name: str, *factors):
    """SQL for the exact sum over the rows of a decimal column, or of decimal × decimal × integer
    (0 when there are no rows)."""
    if dialect_name == "sqlite":
        return func.coalesce(func.exact_sum(*factors), 0)  # sqlite3 gives NULL for no rows
    product = factors[0]
    for factor in factors[1:]:
        product = product * factor
    return func.coalesce(func.sum(product), 0)


def _add_functions(dbapi_connection) -> None:
    dbapi_connection.create_aggregate("exact_sum", 1, ExactSum)
    dbapi_connection.create_aggregate("exact_sum", 3, ExactSumOfProducts)


def _tune_sqlite_for_tests(dbapi_connection, _record) -> None:
    _add_functions(dbapi_connection)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _tune_sqlite(dbapi_connection, _record) -> None:
    _add_functions(dbapi_connection)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "memory":
            cursor.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode: a commit survives any process crash (SIGKILL included) and never corrupts;
        # only a power cut / kernel crash may lose the last commits. FULL would fsync on every commit,
        # and with SQLite's single writer that fsync serializes every process (PostgreSQL for production).
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def owned_row(model, user, row_id, message: str, code: str = "not_found"):
    """The row of `model` with id `row_id` that belongs to `user`; NotFound(message) for a malformed or
    unknown id and for another user's row alike, so ids of other users cannot be told apart."""
    try:
        row_id = int(row_id)
    except (TypeError, ValueError):
        raise NotFound(message, code=code) from None
    row = None
    if 0 < row_id <= LARGEST_ROW_ID:
        row = db.session.scalar(select(model).where(model.id == row_id, model.user_id == user.id))
    if row is None:
        raise NotFound(message, code=code)
    return row


# --- reads and writes on the order path -----------------------------------------------------------------
# Each order costs about a dozen writes in the worker. Built with the ORM (update(Model).where(...).values(...),
# session.add + flush) every one of them constructs its statement, computes its cache key and runs the unit of
# work anew, which was most of an order's CPU. These build each statement shape once and run it on the
# session's own connection, in its transaction.

def read_rows(statement, parameters: dict) -> list:
    """The rows of a prebuilt Core `statement` (plain rows with attribute access, no ORM objects), read in the
    session's transaction after flushing what is pending in it, so they show it. Also the rows an UPDATE …
    RETURNING writes."""
    db.session.flush()
    connection = db.session.connection()
    form = _precompiled(statement, connection.dialect, ())
    if form is None or form.row_type is None:
        return connection.execute(statement, parameters).all()
    rows = _on_driver(connection, form.sql, form.arguments(parameters), rows=True).rows
    return [form.row(values) for values in rows]


@functools.cache
def _guarded_update_statement(table, guards: tuple[tuple[str, bool], ...], names: tuple[str, ...]):
    where = [table.c.id == bindparam("guard_id")]
    for name, one_of in guards:
        guard = bindparam(f"guard_{name}", expanding=one_of)
        where.append(table.c[name].in_(guard) if one_of else table.c[name] == guard)
    return update(table).where(*where).values({name: bindparam(f"set_{name}") for name in names})


def guarded_update(model, row_id: int, guards: dict, values: dict) -> int:
    """Set `values` on the row of `model` with id `row_id`, only while its columns still hold `guards` (the
    conditional UPDATE that is a claim, DESIGN §5): a value to equal, or a tuple of values to be one of.
    Returns the number of rows changed, 0 or 1. Changes pending in the session are flushed first, as the
    ORM's autoflush would. Guards must not be None. An object of that row already loaded is not refreshed:
    the caller sets what it wrote."""
    db.session.flush()
    parameters = {"guard_id": row_id, **{f"guard_{name}": value for name, value in guards.items()},
                  **{f"set_{name}": value for name, value in values.items()}}
    shape = tuple((name, isinstance(value, tuple)) for name, value in guards.items())
    statement = _guarded_update_statement(model.__table__, shape, tuple(values))
    return _execute(statement, parameters).rowcount


@functools.cache
def _insert_statement(table):
    return insert(table)


def insert_row(model, values: dict) -> int:
    """INSERT one row of `model` (column defaults apply) in the session's transaction; returns its id.
    No object is added to the session: relationships that list such rows must be expired by the caller."""
    result = _execute(_insert_statement(model.__table__), values)
    return result.lastrowid if isinstance(result, DriverResult) else result.inserted_primary_key[0]


def insert_object(row):
    """INSERT `row`, a new ORM object, as one prebuilt Core statement and attach it to the session as
    persistent, holding what was written (column defaults applied) and its new id, without the unit of work's
    flush and without reading it back. Raises IntegrityError at once for a duplicate key."""
    values = {column.key: _value_or_default(row, column) for column in type(row).__table__.columns
              if not column.primary_key}
    row.id = insert_row(type(row), values)
    for name, value in values.items():
        if name not in row.__dict__:  # a default the INSERT applied (or None)
            setattr(row, name, value)
    make_transient_to_detached(row)
    db.session.add(row)
    return row


def _value_or_default(row, column):
    value = row.__dict__.get(column.key)
    if value is not None or column.default is None:
        return value
    default = column.default
    return default.arg(None) if default.is_callable else default.arg


# --- ORM objects from rows read precompiled ----------------------------------------------------------------
# An ORM load of one row (`session.get`, `session.execute(select(Model))`) costs about 140 µs of CPU, most of it
# the ORM's per-execution set-up; the same row read by `read_rows` and made the same persistent object costs
# about 50. Used for the order path's loads by id (the worker's order with its connection and the order's
# trade, the web's paper connection).

def columns_of(model, prefix: str = "") -> list:
    """Every column of `model`'s table, labelled `prefix` + its name, to select for `objects_from_row`."""
    return [column.label(prefix + column.key) for column in model.__table__.columns]


@functools.cache
def _attribute_names(model) -> tuple[str, ...]:
    """The mapped attribute name of each column of `model`'s table, in the table's order."""
    return tuple(model.__mapper__.get_property_by_column(column).key for column in model.__table__.columns)


def objects_from_row(row, *models) -> tuple:
    """The persistent objects of `models` whose columns (`columns_of`, in that order) make up `row`."""
    objects, start = [], 0
    for model in models:
        names = _attribute_names(model)
        objects.append(attached(model, dict(zip(names, row[start:start + len(names)]))))
        start += len(names)
    return tuple(objects)


@functools.cache
def _by_id_statement(model):
    return select(*columns_of(model)).where(model.__table__.c.id == bindparam("row_id"))


def get_object(model, row_id: int):
    """What `session.get(model, row_id)` gives (None for no such row), read precompiled: an object the session
    holds with nothing expired is returned without a statement."""
    present = held_object(model, row_id)
    if present is not None and not instance_state(present).expired_attributes:
        return present
    rows = read_rows(_by_id_statement(model), {"row_id": row_id})
    return objects_from_row(rows[0], model)[0] if rows else None


def attached(model, values: dict):
    """The persistent object of `model` for one row's column `values` (by attribute name), as an ORM load gives
    it: the session's own object when it holds the row (its expired columns set from `values`, the rest left as
    they are), else a new clean object added to the session."""
    present = held_object(model, values["id"])
    if present is not None:
        for name in instance_state(present).expired_attributes & values.keys():
            set_committed_value(present, name, values[name])
        return present
    return new_persistent(model, values)


def held_object(model, row_id: int):
    """The session's own object of `model` for row `row_id`, or None when it holds none (no statement)."""
    return db.session.identity_map.get(model.__mapper__.identity_key_from_primary_key([row_id]))


def new_persistent(model, values: dict):
    """A new clean object of `model` holding one row's column `values` (by attribute name), added to the session
    as persistent without a statement. The session must not hold that row already."""
    if not model.__mapper__.configured:  # a new process whose first ORM use this is (a query would configure them)
        configure_mappers()
    loaded = model.__mapper__.class_manager.new_instance()
    loaded.__dict__.update(values)
    make_transient_to_detached(loaded)  # marks the values as loaded and gives it its identity
    db.session.add(loaded)
    return loaded


# --- statements run precompiled ----------------------------------------------------------------------------
# Even a prebuilt Core statement costs SQLAlchemy a cache key, a cache lookup, a pass over its parameters and
# the set-up of its result on every execute: sampled with py-spy, SQLAlchemy was about 45 % of a paper
# execution's CPU in the worker. On SQLite (whose paramstyle is positional) the statements above are compiled
# once per shape and run on the driver's cursor (`_on_driver`): the same SQL, the same conversions of each value
# by its column type (both ways) and the same Python-side column defaults. While anything listens to the
# engine's events they run with `exec_driver_sql` instead, so every listener still sees every statement.
# An IN list the statement holds itself is written out once; one whose values come with each call, and other
# databases, take SQLAlchemy's own path.

@dataclass(frozen=True)
class Precompiled:
    """A statement compiled for one dialect and one set of parameter names, ready to run on the driver."""

    sql: str
    steps: tuple  # (parameter name, the bind processor of its type or None), in their order in `sql`
    defaults: tuple  # (column key, ColumnDefault): columns the statement fills from their Python-side default
    fixed: dict  # the values the statement carries itself (a LIMIT's OFFSET 0, literals in the WHERE clause)
    row_type: type | None  # for a SELECT: a named tuple of its columns (None: not a SELECT, or unnamed columns)
    result_processors: tuple  # for a SELECT: each column's result processor, or None

    def arguments(self, parameters: dict) -> tuple:
        """The driver's positional arguments for `parameters` (missing defaults filled in, values converted)."""
        values = {**self.fixed, **parameters}
        for key, default in self.defaults:
            values[key] = default.arg(None) if default.is_callable else default.arg
        return tuple(values[name] if process is None else process(values[name]) for name, process in self.steps)

    def row(self, values) -> tuple:
        return self.row_type(*[value if process is None else process(value)
                               for value, process in zip(values, self.result_processors)])


@functools.lru_cache(maxsize=1024)
def _precompiled(statement, dialect, column_keys: tuple[str, ...]) -> Precompiled | None:
    """`statement` compiled for `dialect` with the parameters `column_keys` (INSERT/UPDATE: the columns given);
    None when it must run through SQLAlchemy (see above)."""
    compiled = statement.compile(dialect=dialect, column_keys=list(column_keys))
    if not compiled.positional or any(bind.callable is not None for bind in compiled.binds.values()):
        return None
    processors = {name: processor for name, bind in compiled.binds.items()
                  if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None}
    fixed = {name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required}
    sql, names = str(compiled), list(compiled.positiontup)
    for bind in compiled.post_compile_params:
        name = compiled.bind_names[bind]
        expanded = _expand_constant_list(sql, names, name, bind)
        if expanded is None:
            return None
        sql, names, values = expanded
        fixed.update(values)
        if name in processors:
            processors.update(dict.fromkeys(values, processors[name]))
    defaults = tuple([(column.key, column.default) for column in compiled.insert_prefetch]
                     + [(column.key, column.onupdate) for column in compiled.update_prefetch])
    row_type, result_processors = _row_form(statement, dialect)
    steps = tuple((name, processors.get(name)) for name in names)
    return Precompiled(sql, steps, defaults, fixed, row_type, result_processors)


def _expand_constant_list(sql: str, names: list[str], name: str, bind) -> tuple[str, list[str], dict] | None:
    """The SQL and parameter names with the IN list `name` written out, one placeholder per value, when the
    statement itself holds the values (`Order.status.in_(WORKING_STATUSES)`); None for a list the caller
    passes (its length varies), an empty one, or SQL not in the form expected."""
    token = f"__[POSTCOMPILE_{name}]"
    values = bind.value
    if bind.required or not values or sql.count(token) != names.count(name):
        return None
    element_names = [f"{name}__{index}" for index in range(len(values))]
    sql = sql.replace(token, ", ".join("?" for _ in element_names))
    names = [part for each in names for part in (element_names if each == name else [each])]
    return sql, names, dict(zip(element_names, values))


def _row_form(statement, dialect) -> tuple[type | None, tuple]:
    """The row type and result processors of what `statement` returns: a SELECT's columns, or the RETURNING
    columns of an INSERT or UPDATE."""
    columns = list(statement.selected_columns if statement.is_select else statement.exported_columns)
    if not columns:
        return None, ()
    try:
        row_type = collections.namedtuple("Row", [column.key for column in columns])
    except ValueError:  # a column without a usable name: read through SQLAlchemy
        return None, ()
    return row_type, tuple(column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns)


def _execute(statement, parameters: dict):
    """Run an INSERT or UPDATE `statement` with `parameters` in the session's transaction, precompiled when it
    can be (a DriverResult), else through SQLAlchemy (its CursorResult); both have rowcount and lastrowid."""
    connection = db.session.connection()
    form = _precompiled(statement, connection.dialect, tuple(sorted(parameters)))
    if form is None:
        return connection.execute(statement, parameters)
    return _on_driver(connection, form.sql, form.arguments(parameters))


@dataclass(frozen=True)
class DriverResult:
    """What a precompiled statement gave: its rows (when asked for), rows changed and the new row's id."""

    rows: list | None
    rowcount: int
    lastrowid: int | None


def _on_driver(connection, sql: str, arguments: tuple, rows: bool = False) -> DriverResult:
    """Run precompiled `sql` on the driver's cursor of the session's `connection`, in its transaction.

    SQLAlchemy's own execution of even a ready string (`exec_driver_sql`) costs more than the driver's: about
    9 against 3 µs for an UPDATE and 23 against 4 µs for a one-row SELECT (benchmarks/orders.py's statements
    come to about 20 an order). While anything listens to the engine's or dialect's events, or the engine
    echoes its SQL, the statement goes through `exec_driver_sql` instead, so every listener still sees it.
    A driver error is raised as SQLAlchemy's (IntegrityError, OperationalError …), as on its own path."""
    if connection._has_events or connection.engine._has_events or connection.dialect._has_events or \
            connection._echo:
        result = connection.exec_driver_sql(sql, arguments)
        return DriverResult(result.fetchall() if rows else None, result.rowcount, result.lastrowid)
    cursor = connection.connection.driver_connection.cursor()
    try:
        cursor.execute(sql, arguments)
        return DriverResult(cursor.fetchall() if rows else None, cursor.rowcount, cursor.lastrowid)
    except connection.dialect.loaded_dbapi.Error as error:
        raise exc.DBAPIError.instance(sql, arguments, error, connection.dialect.loaded_dbapi.Error,
                                      dialect=connection.dialect) from error
    finally:
        cursor.close()
