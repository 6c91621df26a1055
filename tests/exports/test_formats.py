"""Direct exports: every format round-trips against the database; filters; spreadsheet safety; scoping."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zipfile
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from sqlalchemy import select

from models import Fill, Order, Trade


def _db_rows(db, model, user_id):
    return list(db.session.scalars(select(model).where(model.user_id == user_id).order_by(model.id)))


def _parse_cell(model, name: str, text):
    """Turn an exported cell back into the model's Python value."""
    column = model.__table__.c[name]
    if text in ("", None):
        return None
    kind = type(column.type).__name__
    if kind == "ExactDecimal":
        return Decimal(text)
    if kind == "UTCDateTime":
        return datetime.fromisoformat(text)
    if kind == "Integer":
        return int(text)
    if kind == "Boolean":
        return {"True": True, "False": False}.get(text, text)
    return text


def _db_value(row, name: str):
    value = getattr(row, name)
    return value.value if hasattr(value, "value") else value


def _assert_matches_db(model, parsed_rows, db_rows):
    assert len(parsed_rows) == len(db_rows)
    for parsed, row in zip(parsed_rows, db_rows):
        assert set(parsed) == {column.name for column in model.__table__.columns}  # the owner gets every field
        for name, text in parsed.items():
            assert _parse_cell(model, name, text) == _db_value(row, name), name


def _export(client, headers, **body):
    response = client.post("/api/v1/exports", json=body, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return response


def test_csv_round_trips_every_trade_field(client, db, owner, headers, make_history):
    make_history(owner, count=5)
    response = _export(client, headers, format="csv")
    assert response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    _assert_matches_db(Trade, rows, _db_rows(db, Trade, owner.id))


def test_csv_uses_crlf_rows_and_an_attachment_filename_with_utc_timestamp(client, owner, headers, make_history):
    make_history(owner, count=2)
    response = _export(client, headers, format="csv")
    assert re.fullmatch(r'attachment; filename="trades_export_\d{8}T\d{6}Z\.csv"',
                        response.headers["Content-Disposition"])
    assert response.get_data().count(b"\r\n") == 3  # header + 2 rows (RFC 4180 line breaks)


def test_json_round_trips_with_metadata(client, db, owner, headers, make_history):
    make_history(owner, count=4)
    response = _export(client, headers, format="json", filters={"symbol": "aapl"})
    document = json.loads(response.get_data())
    assert document["schema_version"] == 1
    assert document["counts"] == {"trades": 4}
    assert document["filters"]["symbol"] == "AAPL"
    assert datetime.fromisoformat(document["generated_at"]).tzinfo is not None
    assert all(isinstance(trade["realized_pnl"], str) for trade in document["trades"])  # decimals as strings
    _assert_matches_db(Trade, document["trades"], _db_rows(db, Trade, owner.id))


def test_zip_has_manifest_with_counts_and_hashes_and_every_table(client, db, owner, headers, make_history):
    make_history(owner, count=3)
    response = _export(client, headers, format="zip")
    archive = zipfile.ZipFile(io.BytesIO(response.get_data()))
    assert set(archive.namelist()) == {"manifest.json", "trades.csv", "trades.json", "orders.csv", "fills.csv"}
    manifest = json.loads(archive.read("manifest.json"))
    for name, facts in manifest["files"].items():
        assert hashlib.sha256(archive.read(name)).hexdigest() == facts["sha256"]
    assert {name: facts["rows"] for name, facts in manifest["files"].items()} == \
        {"trades.csv": 3, "trades.json": 3, "orders.csv": 6, "fills.csv": 6}
    for name, model in (("trades.csv", Trade), ("orders.csv", Order), ("fills.csv", Fill)):
        rows = list(csv.DictReader(io.StringIO(archive.read(name).decode())))
        _assert_matches_db(model, rows, _db_rows(db, model, owner.id))
    _assert_matches_db(Trade, json.loads(archive.read("trades.json"))["trades"], _db_rows(db, Trade, owner.id))


def test_filters_select_by_date_status_and_symbol(client, owner, headers, make_history):
    from models import TradeStatus
    make_history(owner, count=3, symbol="AAPL", start=datetime(2026, 1, 10, tzinfo=timezone.utc))
    make_history(owner, count=2, symbol="MSFT", start=datetime(2026, 2, 1, tzinfo=timezone.utc))
    make_history(owner, count=1, symbol="MSFT", start=datetime(2026, 2, 3, 12, tzinfo=timezone.utc),
                 status=TradeStatus.OPEN)

    def symbols(filters):
        document = json.loads(_export(client, headers, format="json", filters=filters).get_data())
        return sorted((trade["symbol"], trade["opened_at"][:10]) for trade in document["trades"])

    assert symbols({"symbol": "MSFT", "status": "closed"}) == [("MSFT", "2026-02-01"), ("MSFT", "2026-02-02")]
    assert symbols({"date_from": "2026-01-11", "date_to": "2026-02-01"}) == \
        [("AAPL", "2026-01-11"), ("AAPL", "2026-01-12"), ("MSFT", "2026-02-01")]
    assert symbols({"status": "open"}) == [("MSFT", "2026-02-03")]


def test_csv_neutralises_formula_text_but_keeps_negative_numbers(client, owner, headers, make_history):
    make_history(owner, count=2, strategy_tag='=HYPERLINK("http://evil.test","x")')
    rows = list(csv.DictReader(io.StringIO(_export(client, headers, format="csv").get_data(as_text=True))))
    assert rows[0]["strategy_tag"] == '\'=HYPERLINK("http://evil.test","x")'
    assert rows[1]["realized_pnl"] == "-12.5"  # a number, not text: left as is


@pytest.mark.parametrize("prefix", ["+", "-", "@", "\t", "\r"])
def test_csv_neutralises_every_dangerous_first_character(client, owner, headers, make_history, prefix):
    make_history(owner, count=1, strategy_tag=prefix + "cmd")
    rows = list(csv.DictReader(io.StringIO(_export(client, headers, format="csv").get_data(as_text=True), newline="")))
    assert rows[0]["strategy_tag"] == "'" + prefix + "cmd"


def test_export_contains_only_the_callers_trades(client, owner, headers, make_user, make_history):
    make_history(owner, count=1, symbol="MINE")
    make_history(make_user(), count=2, symbol="THEIRS")
    document = json.loads(_export(client, headers, format="json").get_data())
    assert [trade["symbol"] for trade in document["trades"]] == ["MINE"]


@pytest.mark.parametrize("body", [{"format": "xlsx"}, {"format": {}}, {"filters": {"status": "won"}},
                                  {"filters": {"status": {}}}, {"filters": {"date_from": "x"}},
                                  {"filters": {"date_from": "2026-02-02", "date_to": "2026-01-01"}},
                                  {"filters": {"nope": 1}}, {"filters": "AAPL"}, {"max_accesses": 2},
                                  {"create_share_link": True, "max_accesses": 101},
                                  {"create_share_link": True, "expires_in_hours": 0}])
def test_bad_export_requests_are_422(client, headers, body):
    response = client.post("/api/v1/exports", json=body, headers=headers)
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "validation_failed"


def test_export_needs_a_credential(client):
    assert client.post("/api/v1/exports", json={"format": "csv"}).status_code == 401


def test_direct_export_is_audited_and_counted(client, db, owner, headers, make_history):
    from models import AuditEvent
    from utils.exports import GENERATED
    before = GENERATED.labels("csv", "direct")._value.get()
    _export(client, headers, format="csv")
    assert GENERATED.labels("csv", "direct")._value.get() == before + 1
    events = db.session.scalars(select(AuditEvent.event_type).where(AuditEvent.user_id == owner.id)).all()
    assert "export.downloaded" in events


def test_export_metrics_are_exposed(client, owner, headers):
    _export(client, headers, format="json")
    text = client.get("/health/metrics").get_data(as_text=True)
    assert 'exports_generated_total{format="json",type="direct"}' in text
    assert 'exports_downloaded_total{format="json"}' in text
    assert "share_link_accesses_total" in text
