"""Trade history exports: CSV, JSON and ZIP, streamed in constant memory; background export jobs.

Rows are read in keyset batches (`id > last ORDER BY id LIMIT n`, on the (user_id, id) index), so no
cursor stays open between batches: a job may commit its progress in between, and memory stays flat.
Columns are read raw (no ORM objects, no per-cell type conversion on SQLite, where decimals are already
canonical text) and shaped once per row.

CSV is RFC 4180 (csv module, CRLF). Spreadsheet safety: a TEXT cell that starts with = + - @ TAB or CR
gets a leading `'`, so it cannot run as a formula. Numbers (prices, quantities, P&L) are emitted
unchanged, so a negative P&L stays the number `-12.5`; a number cannot be a formula.
Decimals are strings (exact), times ISO 8601 UTC with a `Z`.

The owner's export has every column. A redacted export (share links) keeps only public trading facts
and replaces ids by TRADE_n / ORDER_n (numbered in id order; the maps live in memory for that export).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Callable, Iterator

from prometheus_client import Counter
from sqlalchemy import Boolean, Integer, String, func, select, type_coerce, update

from models import (ExportFormat, ExportJob, ExportJobStatus, Fill, Order, StoredFile, Trade, TradeStatus, User,
                    utcnow)
from utils import audit, jobs, storage
from utils.dbtypes import ExactDecimal, UTCDateTime, iso_utc
from utils.database import owned_row
from utils.errors import Gone, NotFound, ValidationFailed
from utils.extensions import db

log = logging.getLogger("tradewarden.exports")

SCHEMA_VERSION = 1
BATCH_SIZE = 1000  # rows per keyset query; larger batches buy little speed and cost memory
FILE_LIFETIME = timedelta(days=7)
FORMULA_START = frozenset("=+-@\t\r")
SYMBOL_PATTERN = re.compile(r"[A-Z0-9][A-Z0-9./-]{0,31}")
FILTER_FIELDS = {"date_from", "date_to", "status", "symbol"}
MEDIA_TYPES = {ExportFormat.CSV: "text/csv; charset=utf-8", ExportFormat.JSON: "application/json",
               ExportFormat.ZIP: "application/zip"}

GENERATED = Counter("exports_generated_total", "Exports generated, by format and type (direct, job, share).",
                    ["format", "type"])
DOWNLOADED = Counter("exports_downloaded_total", "Export files delivered (direct, share link or job file), by format.",
                     ["format"])

# What a public (redacted) export keeps. Ids, user, connection, broker/client order ids, account data go.
REDACTED_TRADE_FIELDS = ("symbol", "asset_type", "side", "status", "quantity", "exit_quantity", "entry_price",
                         "exit_price", "fees", "stop_loss_price", "trailing_stop_percent", "take_profit_price",
                         "close_reason", "realized_pnl", "strategy_tag", "opened_at", "closed_at")
REDACTED_ORDER_FIELDS = ("symbol", "asset_type", "side", "instruction", "order_type", "quantity", "limit_price",
                         "stop_price", "time_in_force", "purpose", "status", "filled_quantity",
                         "average_fill_price", "fees", "created_at", "submitted_at", "completed_at")
REDACTED_FILL_FIELDS = ("quantity", "price", "fee", "executed_at")


# --- input ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportFilters:
    """Which trades: opened in [date_from, date_to] (UTC days, inclusive), with this status and symbol."""

    date_from: date | None = None
    date_to: date | None = None
    status: str | None = None
    symbol: str | None = None

    def as_dict(self) -> dict:
        return {key: (value.isoformat() if isinstance(value, date) else value)
                for key, value in asdict(self).items()}


def parse_format(unsafe_format) -> ExportFormat:
    """csv, json or zip; raises ValidationFailed otherwise."""
    try:
        return ExportFormat(unsafe_format if isinstance(unsafe_format, str) else "")
    except ValueError:
        raise ValidationFailed("format must be csv, json or zip.", details={"field": "format"}) from None


def parse_filters(unsafe_filters) -> ExportFilters:
    """Validate a filters object {date_from, date_to, status, symbol}; raises ValidationFailed."""
    if unsafe_filters is None:
        return ExportFilters()
    if not isinstance(unsafe_filters, dict):
        raise ValidationFailed("filters must be an object.", details={"field": "filters"})
    unknown = sorted(set(unsafe_filters) - FILTER_FIELDS)
    if unknown:
        raise ValidationFailed("Unknown filter.", details={"fields": [str(name)[:64] for name in unknown[:10]]})
    filters = ExportFilters(date_from=_date(unsafe_filters.get("date_from"), "date_from"),
                            date_to=_date(unsafe_filters.get("date_to"), "date_to"),
                            status=_status(unsafe_filters.get("status")),
                            symbol=_symbol(unsafe_filters.get("symbol")))
    if filters.date_from and filters.date_to and filters.date_from > filters.date_to:
        raise ValidationFailed("date_from is after date_to.", details={"field": "date_from"})
    return filters


def _date(unsafe_value, name: str) -> date | None:
    if unsafe_value in (None, ""):
        return None
    if isinstance(unsafe_value, date):
        return unsafe_value
    if isinstance(unsafe_value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", unsafe_value):
        try:
            return date.fromisoformat(unsafe_value)
        except ValueError:
            pass
    raise ValidationFailed(f"{name} must be a date (YYYY-MM-DD).", details={"field": name})


def _status(unsafe_value) -> str | None:
    if unsafe_value in (None, ""):
        return None
    if not isinstance(unsafe_value, str) or unsafe_value not in {status.value for status in TradeStatus}:
        raise ValidationFailed("Unknown trade status.", details={"field": "status"})
    return unsafe_value


def _symbol(unsafe_value) -> str | None:
    if unsafe_value in (None, ""):
        return None
    symbol = unsafe_value.strip().upper() if isinstance(unsafe_value, str) else None
    if not symbol or not SYMBOL_PATTERN.fullmatch(symbol):
        raise ValidationFailed("symbol is not valid.", details={"field": "symbol"})
    return symbol


# --- what is selected -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    name: str
    expression: object
    kind: str  # int, decimal, time, text, trade_ref, order_ref


@dataclass(frozen=True)
class Sheet:
    """One table of an export: its keyset column, output columns and row conditions."""

    name: str
    key: object
    columns: tuple[Column, ...]
    conditions: tuple

    @property
    def header(self) -> list[str]:
        return [column.name for column in self.columns]


@dataclass
class ExportPlan:
    """Everything that defines one export: whose, which trades, which format, redacted or not."""

    user_id: int
    format: ExportFormat
    filters: ExportFilters = field(default_factory=ExportFilters)
    redacted: bool = False
    max_trade_id: int | None = None
    generated_at: datetime = field(default_factory=utcnow)

    @property
    def filename(self) -> str:
        return f"trades_export_{self.generated_at.strftime('%Y%m%dT%H%M%SZ')}.{self.format.value}"

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]


def _kind(column) -> str:
    if isinstance(column.type, UTCDateTime):
        return "time"
    if isinstance(column.type, ExactDecimal):
        return "decimal"
    if isinstance(column.type, Boolean):
        return "bool"
    return "int" if isinstance(column.type, Integer) else "text"


def _raw(column):
    """The column without result conversion (text on SQLite; the driver's Decimal/datetime elsewhere)."""
    return column if isinstance(column.type, (Integer, Boolean)) else type_coerce(column, String())


def _columns(table, names, refs: dict[str, tuple[str, str]]) -> tuple[Column, ...]:
    columns = [Column(out, table.c[source], kind) for out, (source, kind) in refs.items()]
    columns += [Column(name, _raw(table.c[name]), _kind(table.c[name])) for name in names]
    return tuple(columns)


def trade_conditions(plan: ExportPlan) -> tuple:
    """The WHERE conditions selecting the plan's trades (always scoped to the owner)."""
    conditions = [Trade.user_id == plan.user_id]
    filters = plan.filters
    if filters.date_from:
        conditions.append(Trade.opened_at >= datetime.combine(filters.date_from, time.min, timezone.utc))
    if filters.date_to:
        end = datetime.combine(filters.date_to, time.min, timezone.utc) + timedelta(days=1)
        conditions.append(Trade.opened_at < end)
    if filters.status:
        conditions.append(Trade.status == filters.status)
    if filters.symbol:
        conditions.append(Trade.symbol == filters.symbol)
    if plan.max_trade_id is not None:
        conditions.append(Trade.id <= plan.max_trade_id)
    return tuple(conditions)


def trade_sheet(plan: ExportPlan) -> Sheet:
    table = Trade.__table__
    if plan.redacted:
        columns = _columns(table, REDACTED_TRADE_FIELDS, {"id": ("id", "trade_ref")})
    else:
        columns = _columns(table, [column.name for column in table.columns], {})
    return Sheet("trades", table.c.id, columns, trade_conditions(plan))


def order_sheet(plan: ExportPlan) -> Sheet:
    table = Order.__table__
    trade_ids = select(Trade.id).where(*trade_conditions(plan))
    conditions = (Order.user_id == plan.user_id, Order.trade_id.in_(trade_ids))
    if plan.redacted:
        columns = _columns(table, REDACTED_ORDER_FIELDS,
                           {"id": ("id", "order_ref"), "trade": ("trade_id", "trade_ref")})
    else:
        columns = _columns(table, [column.name for column in table.columns], {})
    return Sheet("orders", table.c.id, columns, conditions)


def fill_sheet(plan: ExportPlan) -> Sheet:
    table = Fill.__table__
    order_ids = select(Order.id).where(*order_sheet(plan).conditions)
    conditions = (Fill.user_id == plan.user_id, Fill.order_id.in_(order_ids))
    if plan.redacted:
        columns = _columns(table, REDACTED_FILL_FIELDS, {"order": ("order_id", "order_ref")})
    else:
        columns = _columns(table, [column.name for column in table.columns], {})
    return Sheet("fills", table.c.id, columns, conditions)


def count_rows(conn, sheet: Sheet) -> int:
    """How many rows the sheet will have."""
    return conn.execute(select(func.count()).select_from(sheet.key.table).where(*sheet.conditions)).scalar_one()


# --- reading and shaping rows ---------------------------------------------------------------------

def _batches(conn, sheet: Sheet) -> Iterator[list]:
    """The sheet's raw rows (key first) in keyset batches; no cursor stays open between batches."""
    batch_size = BATCH_SIZE
    expressions = [sheet.key, *(column.expression for column in sheet.columns)]
    last = 0
    while True:
        statement = select(*expressions).where(*sheet.conditions, sheet.key > last) \
            .order_by(sheet.key).limit(batch_size)
        rows = conn.execute(statement).all()
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def _iso_time(value) -> str:
    if isinstance(value, str):  # SQLite: "YYYY-MM-DD HH:MM:SS.ffffff", stored as UTC
        return value.replace(" ", "T", 1) + "Z"
    return iso_utc(value)


def _decimal_text(value) -> str:
    return value if isinstance(value, str) else format(value.normalize(), "f")


class References:
    """TRADE_n / ORDER_n labels of a redacted export, numbered in the order ids are first seen."""

    def __init__(self):
        self.labels = {"trade_ref": {}, "order_ref": {}}

    def label(self, kind: str, record_id) -> str | None:
        if record_id is None:
            return None
        seen = self.labels[kind]
        found = seen.get(record_id)
        if found is None:
            found = seen[record_id] = f"{'TRADE' if kind == 'trade_ref' else 'ORDER'}_{len(seen) + 1}"
        return found


class RowShaper:
    """Turns one raw row (key, *values) into output cells; only the columns that need work are touched."""

    def __init__(self, sheet: Sheet, dialect_name: str, references: References | None, csv_safe: bool):
        kinds = [column.kind for column in sheet.columns]
        self.times = [index for index, kind in enumerate(kinds) if kind == "time"]
        # SQLite stores ExactDecimal as canonical text already; other databases hand us Decimal.
        self.decimals = [] if dialect_name == "sqlite" else [i for i, kind in enumerate(kinds) if kind == "decimal"]
        self.texts = [index for index, kind in enumerate(kinds) if kind == "text"] if csv_safe else []
        self.references = [(index, kind) for index, kind in enumerate(kinds) if kind.endswith("_ref")]
        self.labels = references

    def __call__(self, raw) -> list:
        row = list(raw[1:])
        for index in self.times:
            value = row[index]
            if value is not None:  # the SQLite text case inline: this loop runs for every cell of a time column
                row[index] = value.replace(" ", "T", 1) + "Z" if value.__class__ is str else _iso_time(value)
        for index in self.decimals:
            if row[index] is not None:
                row[index] = _decimal_text(row[index])
        for index in self.texts:
            value = row[index]
            if value and value[0] in FORMULA_START:
                row[index] = "'" + value
        for index, kind in self.references:
            row[index] = self.labels.label(kind, row[index])
        return row


def _dialect_name(conn) -> str:
    dialect = getattr(conn, "dialect", None) or conn.get_bind().dialect
    return dialect.name


@dataclass
class Tally:
    """Rows written so far (per file), reported to an optional progress callback per batch."""

    rows: int = 0
    on_rows: Callable[[int], None] | None = None

    def add(self, count: int) -> None:
        self.rows += count
        if self.on_rows:
            self.on_rows(count)


def csv_chunks(conn, sheet: Sheet, tally: Tally, references: References | None = None) -> Iterator[bytes]:
    """The sheet as RFC 4180 CSV (header first), one encoded chunk per batch."""
    shape = RowShaper(sheet, _dialect_name(conn), references, csv_safe=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(sheet.header)
    for rows in _batches(conn, sheet):
        writer.writerows(map(shape, rows))
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
        tally.add(len(rows))
    if buffer.tell():
        yield buffer.getvalue().encode()


def json_chunks(conn, plan: ExportPlan, tally: Tally, references: References | None = None) -> Iterator[bytes]:
    """{metadata…, "trades": [...]} with the trades streamed one batch per chunk."""
    sheet = trade_sheet(plan)
    metadata = {"schema_version": SCHEMA_VERSION, "generated_at": _iso_time(plan.generated_at),
                "redacted": plan.redacted, "filters": plan.filters.as_dict(),
                "counts": {"trades": count_rows(conn, sheet)}, "fields": sheet.header}
    yield (json.dumps(metadata)[:-1] + ', "trades": [').encode()
    shape, names, separator = RowShaper(sheet, _dialect_name(conn), references, csv_safe=False), sheet.header, ""
    for rows in _batches(conn, sheet):
        body = ",".join(json.dumps(dict(zip(names, shape(row)))) for row in rows)
        yield (separator + body).encode()
        separator = ","
        tally.add(len(rows))
    yield b"]}"


class _Sink(io.RawIOBase):
    """An unseekable byte sink: zipfile writes into it, the generator drains it."""

    def __init__(self):
        super().__init__()
        self.parts, self.position = [], 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def drain(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def zip_chunks(conn, plan: ExportPlan, on_rows: Callable[[int], None] | None = None,
               references: References | None = None) -> Iterator[bytes]:
    """A ZIP of trades.csv, trades.json, orders.csv, fills.csv and manifest.json (rows + SHA-256 per file)."""
    entries = (("trades.csv", lambda tally: csv_chunks(conn, trade_sheet(plan), tally, references)),
               ("trades.json", lambda tally: json_chunks(conn, plan, tally, references)),
               ("orders.csv", lambda tally: csv_chunks(conn, order_sheet(plan), tally, references)),
               ("fills.csv", lambda tally: csv_chunks(conn, fill_sheet(plan), tally, references)))
    sink, files = _Sink(), {}
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, chunks in entries:
            tally, digest, size = Tally(on_rows=on_rows), hashlib.sha256(), 0
            with archive.open(name, "w", force_zip64=True) as entry:
                for chunk in chunks(tally):
                    digest.update(chunk)
                    size += len(chunk)
                    entry.write(chunk)
                    yield sink.drain()
            files[name] = {"rows": tally.rows, "bytes": size, "sha256": digest.hexdigest()}
        archive.writestr("manifest.json", json.dumps(_manifest(plan, files), indent=2))
    yield sink.drain()


def _manifest(plan: ExportPlan, files: dict) -> dict:
    return {"schema_version": SCHEMA_VERSION, "generated_at": _iso_time(plan.generated_at),
            "redacted": plan.redacted, "filters": plan.filters.as_dict(), "files": files}


def stream(conn, plan: ExportPlan, on_rows: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """The export described by `plan` as byte chunks, read from `conn` (a Session or Connection)."""
    references = References() if plan.redacted else None
    if plan.format is ExportFormat.ZIP:
        return zip_chunks(conn, plan, on_rows, references)
    if plan.format is ExportFormat.JSON:
        return json_chunks(conn, plan, Tally(on_rows=on_rows), references)
    return csv_chunks(conn, trade_sheet(plan), Tally(on_rows=on_rows), references)


def expected_rows(conn, plan: ExportPlan) -> int:
    """How many rows `stream` will write in total (the denominator of a job's progress)."""
    trades = count_rows(conn, trade_sheet(plan))
    if plan.format is not ExportFormat.ZIP:
        return trades
    return 2 * trades + count_rows(conn, order_sheet(plan)) + count_rows(conn, fill_sheet(plan))


# --- direct download ------------------------------------------------------------------------------

def direct_export(user: User, unsafe_format, unsafe_filters) -> ExportPlan:
    """Validate a download request and record it (audit + metric); raises ValidationFailed.

    The caller commits, then streams `stream(db.session, plan)`.
    """
    plan = ExportPlan(user_id=user.id, format=parse_format(unsafe_format), filters=parse_filters(unsafe_filters))
    audit.record("export.downloaded", user=user, details={"format": plan.format.value, "type": "direct",
                                                          **_filter_details(plan.filters)})
    GENERATED.labels(plan.format.value, "direct").inc()
    DOWNLOADED.labels(plan.format.value).inc()
    return plan


def _filter_details(filters: ExportFilters) -> dict:
    return {f"filter_{key}": value for key, value in filters.as_dict().items() if value is not None}


# --- export jobs ----------------------------------------------------------------------------------

def create_job(user: User, unsafe_format, unsafe_filters) -> ExportJob:
    """Queue a background export (sent to the worker after the commit); raises ValidationFailed."""
    export_format, filters = parse_format(unsafe_format), parse_filters(unsafe_filters)
    job = ExportJob(user_id=user.id, format=export_format, filters=filters.as_dict(),
                    status=ExportJobStatus.QUEUED)
    db.session.add(job)
    db.session.flush()
    audit.record("export.job_created", user=user, details={"export_job_id": job.id, "format": export_format.value})
    jobs.enqueue_after_commit(jobs.EXPORTS_BUILD, job.id)
    return job


def get_job(user: User, job_id: int) -> ExportJob:
    """The user's job; raises NotFound for an unknown id or another user's job."""
    return owned_row(ExportJob, user, job_id, "No such export job.")


def list_jobs(user: User, limit: int = 20) -> list[ExportJob]:
    """The user's most recent export jobs, newest first."""
    query = select(ExportJob).where(ExportJob.user_id == user.id).order_by(ExportJob.id.desc()).limit(limit)
    return list(db.session.scalars(query))


def claim_job(job_id: int) -> bool:
    """queued → running, as one conditional UPDATE; False when another worker has it (or it is gone)."""
    result = db.session.execute(
        update(ExportJob).where(ExportJob.id == job_id, ExportJob.status == ExportJobStatus.QUEUED)
        .values(status=ExportJobStatus.RUNNING, started_at=utcnow(), updated_at=utcnow()),
        execution_options={"synchronize_session": False})
    return result.rowcount == 1


def run_job(job_id: int, commit: Callable[[], None]) -> None:
    """Build a claimed job's file into storage, calling `commit` after each progress update.

    Changes the job (rows_total, rows_done, status done, stored_file) and adds a StoredFile.
    """
    job = db.session.get(ExportJob, job_id)
    plan = ExportPlan(user_id=job.user_id, format=job.format, filters=parse_filters(job.filters))
    job.rows_total = expected_rows(db.session, plan)
    commit()
    progress = _ProgressWriter(job_id, commit)
    store, key = storage.backend(), storage.new_key(plan.format.value)
    size, digest = store.save(key, stream(db.session, plan, on_rows=progress.add), plan.media_type)
    stored = StoredFile(user_id=job.user_id, backend=store.name, key=key, filename=plan.filename,
                        content_type=plan.media_type, size=size, sha256=digest, expires_at=utcnow() + FILE_LIFETIME)
    db.session.add(stored)
    db.session.flush()
    job = db.session.get(ExportJob, job_id)
    job.rows_done, job.status, job.stored_file_id = progress.rows, ExportJobStatus.DONE, stored.id
    job.finished_at = utcnow()
    GENERATED.labels(plan.format.value, "job").inc()


class _ProgressWriter:
    """Stores rows_done after each batch (one UPDATE, then the caller's commit)."""

    def __init__(self, job_id: int, commit: Callable[[], None]):
        self.job_id, self.commit, self.rows = job_id, commit, 0

    def add(self, count: int) -> None:
        self.rows += count
        db.session.execute(update(ExportJob).where(ExportJob.id == self.job_id).values(rows_done=self.rows),
                           execution_options={"synchronize_session": False})
        self.commit()


def fail_job(job_id: int, reason: str) -> None:
    """Mark a job failed with a short reason (never a stack trace)."""
    db.session.execute(update(ExportJob).where(ExportJob.id == job_id)
                       .values(status=ExportJobStatus.FAILED, error=reason[:255], finished_at=utcnow()),
                       execution_options={"synchronize_session": False})


def job_file(user: User, job_id: int) -> StoredFile:
    """The stored file of the user's finished job; raises NotFound (no such job / not ready) or Gone (expired)."""
    job = get_job(user, job_id)
    if job.status is ExportJobStatus.EXPIRED or (job.stored_file and job.stored_file.deleted_at):
        raise Gone("This export file has expired.")
    if job.status is not ExportJobStatus.DONE or job.stored_file is None:
        raise NotFound("The export is not ready.", code="not_ready")
    if job.stored_file.expires_at <= utcnow():
        raise Gone("This export file has expired.")
    audit.record("export.job_downloaded", user=user, details={"export_job_id": job.id})
    DOWNLOADED.labels(job.format.value).inc()
    return job.stored_file


def serialize_job(job: ExportJob) -> dict:
    """The API/page shape of a job."""
    stored = job.stored_file
    return {"id": job.id, "format": job.format.value, "status": job.status.value, "filters": job.filters,
            "rows_done": job.rows_done, "rows_total": job.rows_total,
            "percent": 100 if job.status is ExportJobStatus.DONE else
            (int(job.rows_done * 100 / job.rows_total) if job.rows_total else 0),
            "error": job.error, "created_at": iso_utc(job.created_at), "finished_at": iso_utc(job.finished_at),
            "expires_at": iso_utc(stored.expires_at) if stored else None,
            "filename": stored.filename if stored else None, "size": stored.size if stored else None}


def delete_expired_files(now: datetime | None = None) -> int:
    """Delete stored export files past their expiry from storage; marks them deleted and their jobs expired."""
    now = now or utcnow()
    expired = list(db.session.scalars(select(StoredFile).where(StoredFile.expires_at <= now,
                                                                StoredFile.deleted_at.is_(None))))
    store = storage.backend()
    for stored in expired:
        store.delete(stored.key)
        stored.deleted_at = now
        db.session.execute(update(ExportJob).where(ExportJob.stored_file_id == stored.id)
                           .values(status=ExportJobStatus.EXPIRED), execution_options={"synchronize_session": False})
    if expired:
        log.info("deleted %d expired export files", len(expired))
    return len(expired)
