"""Token upkeep: refresh under a per-connection Redis lock, rotation saved, permanent failures expire the link."""
from __future__ import annotations

import json
import threading

import pytest
import requests
from sqlalchemy import select, text

from models import BrokerConnection
from utils import broker_links
from utils.brokers import get_broker, oauth
from utils.errors import BrokerAuthExpired


def _connection(db):
    db.session.expire_all()
    return db.session.scalar(select(BrokerConnection))


def test_ten_concurrent_callers_cause_exactly_one_refresh(link, app, db, fakes):
    fakes["coinbase"].control(access_ttl=60)  # expires inside the 5-minute leeway
    link("coinbase")
    fakes["coinbase"].control(access_ttl=3600)  # the refreshed token lasts an hour
    connection_id = _connection(db).id
    old_refresh = json.loads(_connection(db).token_set)["refresh_token"]
    tokens, errors, start = [], [], threading.Barrier(10)

    def caller():
        with app.app_context():
            try:
                start.wait()
                tokens.append(oauth.fresh_access_token(db.session.get(BrokerConnection, connection_id)))
            except Exception as error:  # collected and asserted below
                errors.append(error)

    threads = [threading.Thread(target=caller) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert fakes["coinbase"].counter("token_refresh_token") == 1
    assert len(set(tokens)) == 1
    stored = json.loads(_connection(db).token_set)
    assert stored["refresh_token"] != old_refresh and stored["access_token"] == tokens[0]
    assert _connection(db).last_refreshed_at is not None
    # Coinbase refresh tokens are single use: the old one is dead at the provider.
    from tests.fakes import coinbase as fake
    reuse = requests.post(fakes["coinbase"].url + "/oauth2/token", timeout=5, data={
        "grant_type": "refresh_token", "refresh_token": old_refresh,
        "client_id": fake.CLIENT_ID, "client_secret": fake.CLIENT_SECRET})
    assert reuse.json()["error"] == "invalid_grant"


def test_schwab_seven_day_cap_expires_link_without_retrying(link, app, db, fakes, client):
    fakes["schwab"].control(access_ttl=60)
    link("schwab")
    fakes["schwab"].control(advance_seconds=8 * 86400)
    with pytest.raises(BrokerAuthExpired):
        get_broker(_connection(db)).get_account()
    connection = _connection(db)
    assert connection.status.value == "expired" and connection.token_set is None
    with pytest.raises(BrokerAuthExpired):
        get_broker(connection).get_account()
    assert fakes["schwab"].counter("token_refresh_token") == 1  # no endless retries
    html = client.get("/brokers").get_data(as_text=True)
    assert "expired" in html and "link it again" in html


def test_schwab_refresh_keeps_the_same_refresh_token(link, db, fakes):
    fakes["schwab"].control(access_ttl=60)
    link("schwab")
    before = json.loads(_connection(db).token_set)
    get_broker(_connection(db)).get_account()
    after = json.loads(_connection(db).token_set)
    assert fakes["schwab"].counter("token_refresh_token") == 1
    assert after["refresh_token"] == before["refresh_token"] and after["access_token"] != before["access_token"]


def test_beat_upkeep_refreshes_tokens_nearing_expiry(link, db, fakes):
    fakes["coinbase"].control(access_ttl=400)  # outside the 5-min call leeway, inside the 10-min beat window
    link("coinbase")
    fakes["coinbase"].control(access_ttl=3600)
    counts = broker_links.keep_links_alive()
    assert counts["refreshed"] == 1 and fakes["coinbase"].counter("token_refresh_token") == 1
    assert broker_links.keep_links_alive()["refreshed"] == 0  # the new token lasts an hour
    assert fakes["coinbase"].counter("token_refresh_token") == 1


def test_disconnect_revokes_at_coinbase_and_deletes_tokens(link, client, db, fakes):
    from tests.conftest import csrf_token_from
    from flask import g
    link("coinbase")
    connection = _connection(db)
    g.pop("csrf_token", None)
    page = client.get("/brokers").get_data(as_text=True)
    response = client.post(f"/brokers/{connection.id}/disconnect", data={"csrf_token": csrf_token_from(page)})
    assert response.status_code == 302
    connection = _connection(db)
    assert connection.status.value == "revoked" and connection.token_set is None
    assert fakes["coinbase"].counter("revoked") == 1 and fakes["coinbase"].stats()["live_tokens"] == 0
    with pytest.raises(BrokerAuthExpired):
        get_broker(connection).get_account()


def test_disconnect_of_another_users_connection_is_404(link, app, db, make_user, login):
    from tests.conftest import csrf_token_from
    from flask import g
    link("schwab")
    connection_id = _connection(db).id
    other, browser = make_user(), app.test_client()
    g.pop("csrf_token", None)
    login(other, test_client=browser)
    g.pop("csrf_token", None)
    page = browser.get("/brokers").get_data(as_text=True)
    response = browser.post(f"/brokers/{connection_id}/disconnect", data={"csrf_token": csrf_token_from(page)})
    assert response.status_code == 404
    assert _connection(db).status.value == "connected"


def test_raw_database_holds_no_plaintext_token_or_account_number(link, db):
    link("schwab")
    link("coinbase")
    connections = db.session.scalars(select(BrokerConnection)).all()
    secrets = [json.loads(c.token_set)[k] for c in connections for k in ("access_token", "refresh_token")]
    raw = " ".join(str(row) for table in ("broker_connections", "broker_accounts")
                   for row in db.session.execute(text(f"SELECT * FROM {table}")).all())
    for secret in secrets + ["123456789", "987654321", "8bfc20d7-f7c6-4422-bf07-8243ca4169fe"]:
        assert secret not in raw
    assert "6789" in raw  # only the last four digits are kept in clear, for the masked display


def test_coinbase_invalid_grant_marks_link_expired_and_orders_fail_clearly(link, db, fakes):
    from tests.fakes import coinbase as fake
    fakes["coinbase"].control(access_ttl=60)
    link("coinbase")
    refresh = json.loads(_connection(db).token_set)["refresh_token"]
    requests.post(fakes["coinbase"].url + "/oauth2/revoke", timeout=5, data={  # the user revoked us at Coinbase
        "token": refresh, "client_id": fake.CLIENT_ID, "client_secret": fake.CLIENT_SECRET})
    with pytest.raises(BrokerAuthExpired) as caught:
        get_broker(_connection(db)).get_quotes(["BTC-USD"])
    assert "invalid_grant" in caught.value.message and caught.value.status == 409
    assert _connection(db).status.value == "expired"
