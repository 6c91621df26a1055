"""Share links: created once, redacted, limited by time, uses and revocation; owner-only revoke; rate limit."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zipfile
from datetime import timedelta

from sqlalchemy import select, update

from models import AuditEvent, ShareLink, utcnow

SHARE = "/api/v1/exports/share/"


def _share(client, headers, **body):
    response = client.post("/api/v1/exports", json={"create_share_link": True, **body}, headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)[:500]
    return response.get_json()


def test_creating_a_link_returns_the_token_once_and_stores_only_its_hash(client, db, owner, headers, make_history):
    make_history(owner, count=2)
    created = _share(client, headers, format="csv")
    token = created["share_token"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)  # 32 random bytes, urlsafe
    assert created["share_url"].endswith(SHARE + token)
    assert created["max_accesses"] == 1 and created["trade_count"] == 2
    link = db.session.scalar(select(ShareLink))
    assert link.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in json.dumps(client.get("/api/v1/exports/share-links", headers=headers).get_json())
    assert (link.expires_at - utcnow()) > timedelta(hours=23, minutes=59)


def test_redacted_zip_leaves_no_identifier_of_the_owner(client, db, owner, headers, make_history):
    history = make_history(owner, count=3)
    token = _share(client, headers, format="zip", max_accesses=2)["share_token"]
    body = client.get(SHARE + token).get_data()
    archive = zipfile.ZipFile(io.BytesIO(body))
    contents = b"".join(archive.read(name) for name in archive.namelist())
    for identifier in history.identifiers():
        assert identifier.encode() not in contents, identifier
    numeric_ids = {str(record.id) for record in history.trades + history.orders + history.fills}
    numeric_ids |= {str(owner.id), str(history.connection_id)}
    cells = {cell for name in ("trades.csv", "orders.csv", "fills.csv")
             for row in csv.reader(io.StringIO(archive.read(name).decode())) for cell in row}
    assert not cells & numeric_ids  # no raw id of the owner, a trade, an order, a fill or a connection
    trades = list(csv.DictReader(io.StringIO(archive.read("trades.csv").decode())))
    assert [trade["id"] for trade in trades] == ["TRADE_1", "TRADE_2", "TRADE_3"]
    assert trades[1]["realized_pnl"] == "-12.5" and trades[0]["strategy_tag"] == "swing"
    kept = {"symbol", "side", "quantity", "entry_price", "exit_price", "fees", "realized_pnl", "opened_at", "closed_at"}
    assert kept <= set(trades[0])
    orders = list(csv.DictReader(io.StringIO(archive.read("orders.csv").decode())))
    assert {order["trade"] for order in orders} == {"TRADE_1", "TRADE_2", "TRADE_3"}
    headers_seen = set(orders[0]) | set(trades[0])
    assert not headers_seen & {"user_id", "client_order_id", "broker_order_id", "broker_connection_id"}
    fills = list(csv.DictReader(io.StringIO(archive.read("fills.csv").decode())))
    assert set(fills[0]) == {"order", "quantity", "price", "fee", "executed_at"}


def test_redacted_json_has_no_numeric_ids_or_email(client, owner, headers, make_history):
    history = make_history(owner, count=2)
    token = _share(client, headers, format="json")["share_token"]
    raw = client.get(SHARE + token).get_data()
    document = json.loads(raw)
    assert document["redacted"] is True
    assert [trade["id"] for trade in document["trades"]] == ["TRADE_1", "TRADE_2"]
    assert not any(key.endswith("_id") for trade in document["trades"] for key in trade)
    for identifier in history.identifiers():
        assert identifier.encode() not in raw


def test_single_use_link_serves_once_then_410(client, owner, headers, make_history):
    make_history(owner, count=1)
    token = _share(client, headers, format="csv")["share_token"]
    first = client.get(SHARE + token)
    assert first.status_code == 200 and b"TRADE_1" in first.get_data()
    second = client.get(SHARE + token)
    assert second.status_code == 410
    assert second.get_json()["error"]["code"] == "share_link_used_up"


def test_max_accesses_allows_exactly_that_many(client, owner, headers, make_history):
    make_history(owner, count=1)
    token = _share(client, headers, format="csv", max_accesses=3)["share_token"]
    assert [client.get(SHARE + token).status_code for _ in range(4)] == [200, 200, 200, 410]


def test_head_does_not_use_up_an_access(client, owner, headers, make_history):
    make_history(owner, count=1)
    token = _share(client, headers, format="csv")["share_token"]
    assert client.head(SHARE + token).status_code == 200
    assert client.head(SHARE + token).status_code == 200
    assert client.get(SHARE + token).status_code == 200
    assert client.head(SHARE + token).status_code == 410


def test_share_responses_carry_privacy_headers(client, owner, headers, make_history):
    make_history(owner, count=1)
    token = _share(client, headers, format="csv")["share_token"]
    for response in (client.get(SHARE + token), client.get(SHARE + token), client.get(SHARE + "x" * 43)):
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Robots-Tag"] == "noindex"


def test_unknown_token_is_404(client):
    assert client.get(SHARE + "A" * 43).status_code == 404
    assert client.get(SHARE + "../../etc").status_code == 404


def test_expired_link_is_410(client, db, owner, headers, make_history):
    make_history(owner, count=1)
    token = _share(client, headers, format="csv", expires_in_hours=1)["share_token"]
    db.session.execute(update(ShareLink).values(expires_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    response = client.get(SHARE + token)
    assert response.status_code == 410 and response.get_json()["error"]["code"] == "share_link_expired"


def test_revoked_link_is_410_and_owner_revoke_is_204(client, owner, headers, make_history):
    make_history(owner, count=1)
    token = _share(client, headers, format="csv", max_accesses=5)["share_token"]
    assert client.delete(SHARE + token, headers=headers).status_code == 204
    response = client.get(SHARE + token)
    assert response.status_code == 410 and response.get_json()["error"]["code"] == "share_link_revoked"
    listed = client.get("/api/v1/exports/share-links", headers=headers).get_json()["items"]
    assert listed[0]["state"] == "revoked"


def test_only_the_owner_can_revoke(client, owner, headers, make_user, make_bearer, make_history):
    make_history(owner, count=1)
    token = _share(client, headers, format="csv")["share_token"]
    stranger = make_bearer(make_user())
    assert client.delete(SHARE + token, headers=stranger).status_code == 403
    assert client.delete(SHARE + "B" * 43, headers=stranger).status_code == 404
    assert client.delete(SHARE + token).status_code == 401
    assert client.get(SHARE + token).status_code == 200  # still usable


def test_owner_lists_links_with_use_counts(client, owner, headers, make_history):
    make_history(owner, count=2)
    token = _share(client, headers, format="json", max_accesses=4)["share_token"]
    client.get(SHARE + token)
    client.get(SHARE + token)
    items = client.get("/api/v1/exports/share-links", headers=headers).get_json()["items"]
    assert [(item["accessed_count"], item["max_accesses"], item["state"]) for item in items] == [(2, 4, "active")]
    assert items[0]["token_prefix"] == token[:8]


def test_link_shows_only_trades_that_existed_when_it_was_made(client, owner, headers, make_history):
    make_history(owner, count=1, symbol="OLD")
    token = _share(client, headers, format="json")["share_token"]
    make_history(owner, count=1, symbol="NEW")
    document = json.loads(client.get(SHARE + token).get_data())
    assert [trade["symbol"] for trade in document["trades"]] == ["OLD"]


def test_share_create_access_and_revoke_are_audited(client, db, owner, headers, make_history):
    from utils.sharing import ACCESSES
    make_history(owner, count=1)
    served = ACCESSES.labels("served")._value.get()
    token = _share(client, headers, format="csv", max_accesses=2)["share_token"]
    client.get(SHARE + token)
    client.delete(SHARE + token, headers=headers)
    events = db.session.scalars(select(AuditEvent.event_type).where(AuditEvent.user_id == owner.id)).all()
    assert {"export.share_created", "export.share_accessed", "export.share_revoked"} <= set(events)
    assert ACCESSES.labels("served")._value.get() == served + 1
