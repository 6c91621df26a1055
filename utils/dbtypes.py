"""Column types shared by the models and the migrations: exact decimals and UTC datetimes; and exact sums
of those decimals computed in the database (`exact_sum`, `exact_value_sum`)."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from sqlalchemy import DateTime, Numeric, String
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import GenericFunction
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a trailing Z, as every time travels in the API and the exports (None stays None;
    a naive datetime is taken as UTC, as the columns store it)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


class UTCDateTime(TypeDecorator):
    """A datetime that is always stored as UTC and always read back timezone-aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=timezone.utc)


class ExactDecimal(TypeDecorator):
    """A Decimal stored exactly: NUMERIC(28, 10) where supported, canonical text on SQLite."""

    impl = Numeric(28, 10)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(40))
        return dialect.type_descriptor(Numeric(28, 10, asdecimal=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = Decimal(value)
        if not value.is_finite():
            raise ValueError("non-finite decimal")
        return format(value.normalize(), "f") if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(value)
        # NUMERIC(28, 10) pads every value to ten places: give it back as SQLite's canonical text does
        # ("190.25", not "190.2500000000"), so values read the same on either database.
        return Decimal(format(value.normalize(), "f"))


# --- exact sums in the database ---------------------------------------------------------------------
# SQLite keeps ExactDecimal as text and its SUM() would add them as floats, so there the sums are two
# aggregate functions of our own, registered on every connection (register_exact_sums), that add Decimals.
# PostgreSQL adds NUMERIC exactly: there they are plain SUM(). Either way one row comes back instead of
# every row summed in Python.

class exact_sum(GenericFunction):  # noqa: N801 (SQL function names are lower case)
    """SUM(value) of an ExactDecimal column, exact on every database; NULL when no row counts."""

    type = ExactDecimal()
    inherit_cache = True


class exact_value_sum(GenericFunction):  # noqa: N801
    """SUM((quantity - less) * price * multiplier), exact on every database: a value held by rows whose
    `quantity - less` units are worth `price` times `multiplier` each (a NULL price counts as 0)."""

    type = ExactDecimal()
    inherit_cache = True


@compiles(exact_sum)
def _sum(element, compiler, **kw) -> str:
    return f"sum({compiler.process(element.clauses, **kw)})"


@compiles(exact_value_sum)
def _value_sum(element, compiler, **kw) -> str:
    quantity, less, price, multiplier = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"sum(({quantity} - {less}) * {price} * {multiplier})"


@compiles(exact_sum, "sqlite")
@compiles(exact_value_sum, "sqlite")
def _sqlite_aggregate(element, compiler, **kw) -> str:
    return f"tw_{element.name}({compiler.process(element.clauses, **kw)})"


def _decimal_or_zero(value) -> Decimal:
    return Decimal(0) if value is None else Decimal(value)


class _ExactSum:
    def __init__(self):
        self.total = None

    def step(self, value) -> None:
        if value is not None:
            self.total = _decimal_or_zero(self.total) + Decimal(value)

    def finalize(self) -> str | None:
        return None if self.total is None else format(self.total.normalize(), "f")


class _ExactValueSum(_ExactSum):
    def step(self, quantity, less, price, multiplier) -> None:  # noqa: D102
        self.total = _decimal_or_zero(self.total) + (
            (Decimal(quantity) - _decimal_or_zero(less)) * _decimal_or_zero(price) * Decimal(multiplier))


def register_exact_sums(dbapi_connection) -> None:
    """Make `exact_sum` and `exact_value_sum` available on a new SQLite connection."""
    dbapi_connection.create_aggregate("tw_exact_sum", 1, _ExactSum)
    dbapi_connection.create_aggregate("tw_exact_value_sum", 4, _ExactValueSum)
