"""Linking Schwab and Coinbase over OAuth 2.0 with PKCE S256 through the fake authorization servers."""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import select

from models import AuditEvent, BrokerAccount, BrokerConnection
from tests.brokers.conftest import consent, start_connect


@pytest.mark.parametrize("broker", ["schwab", "coinbase"])
def test_connect_flow_stores_encrypted_tokens_and_accounts(broker, link, db, fakes):
    response = link(broker)
    assert response.status_code == 302 and response.headers["Location"].endswith("/brokers")
    connection = db.session.scalar(select(BrokerConnection))
    assert connection.broker.value == broker and connection.status.value == "connected"
    assert "access_token" in connection.token_set and connection.token_expires_at is not None
    accounts = db.session.scalars(select(BrokerAccount)).all()
    assert len(accounts) == 2 and all(a.connection_id == connection.id for a in accounts)
    assert fakes[broker].counter("token_authorization_code") == 1
    assert db.session.scalar(select(AuditEvent).where(AuditEvent.event_type == "broker.linked")) is not None


def test_brokers_page_masks_account_numbers(link, client):
    link("schwab")
    html = client.get("/brokers").get_data(as_text=True)
    assert "••••6789" in html and "123456789" not in html
    assert "connected" in html and "Disconnect" in html


@pytest.mark.parametrize("broker", ["schwab", "coinbase"])
def test_app_always_sends_s256_challenge_and_state(broker, client, login, user):
    login(user)
    query = parse_qs(urlsplit(start_connect(client, broker).headers["Location"]).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) >= 43
    assert len(query["state"][0]) >= 8


@pytest.mark.parametrize("broker", ["schwab", "coinbase"])
def test_fake_refuses_authorization_without_s256(broker, client, login, user):
    login(user)
    url = start_connect(client, broker).headers["Location"]
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items() if not k.startswith("code_challenge")}
    answer = requests.get(f"{parts.scheme}://{parts.netloc}{parts.path}", params=query, allow_redirects=False,
                          timeout=5)
    assert "code=" not in answer.headers.get("Location", "")
    assert "invalid_request" in (answer.headers.get("Location", "") + answer.text)
    plain = requests.get(url.replace("code_challenge_method=S256", "code_challenge_method=plain"),
                         allow_redirects=False, timeout=5)
    assert "code=" not in plain.headers.get("Location", "")


def test_fake_rejects_redirect_uri_that_is_not_exact(client, login, user):
    login(user)
    url = start_connect(client, "schwab").headers["Location"]
    answer = requests.get(url.replace("callback", "callback%2F"), allow_redirects=False, timeout=5)
    assert answer.status_code == 400 and "code=" not in answer.headers.get("Location", "")


def test_tampered_state_stores_nothing_and_is_audited(client, login, user, db):
    login(user)
    callback = consent(start_connect(client, "schwab").headers["Location"])
    response = client.get(callback.replace("state=", "state=x"), follow_redirects=True)
    assert "did not match a link you started" in response.get_data(as_text=True)
    assert db.session.scalar(select(BrokerConnection)) is None
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.event_type == "broker.link_failed"))
    assert event.details["reason"] == "state_mismatch"


def test_missing_state_is_refused(client, login, user, db):
    login(user)
    callback = consent(start_connect(client, "coinbase").headers["Location"])
    code = parse_qs(urlsplit(callback).query)["code"][0]
    response = client.get(f"/brokers/coinbase/callback?code={code}", follow_redirects=True)
    assert "did not match" in response.get_data(as_text=True)
    assert db.session.scalar(select(BrokerConnection)) is None


def test_replayed_callback_is_refused_and_code_is_single_use(link, client, db, fakes):
    login_flow = link  # the first callback links
    first = login_flow("coinbase")
    assert first.status_code == 302
    # replaying the same callback: the state is spent at our side ...
    events_before = db.session.query(AuditEvent).filter_by(event_type="broker.link_failed").count()
    callback = consent(start_connect(client, "coinbase").headers["Location"])
    assert client.get(callback).status_code == 302
    replay = client.get(callback, follow_redirects=True)
    assert "did not match" in replay.get_data(as_text=True)
    assert db.session.query(AuditEvent).filter_by(event_type="broker.link_failed").count() == events_before + 1
    # ... and at the provider a code works once only.
    code = parse_qs(urlsplit(callback).query)["code"][0]
    from tests.fakes import coinbase as fake
    again = requests.post(fakes["coinbase"].url + "/oauth2/token", timeout=5, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": "http://localhost/brokers/coinbase/callback",
        "client_id": fake.CLIENT_ID, "client_secret": fake.CLIENT_SECRET, "code_verifier": "x" * 43})
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert db.session.query(BrokerConnection).count() == 2


def test_provider_denial_shows_message_and_stores_nothing(client, login, user, db, fakes):
    login(user)
    fakes["schwab"].control(deny_next=True)
    callback = consent(start_connect(client, "schwab").headers["Location"])
    assert "error=access_denied" in callback
    html = client.get(callback, follow_redirects=True).get_data(as_text=True)
    assert "did not link the account" in html
    assert db.session.scalar(select(BrokerConnection)) is None
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.event_type == "broker.link_failed"))
    assert event.details["reason"] == "access_denied"


@pytest.fixture
def app_config(app_config):
    return {key: value for key, value in app_config.items() if key != "ETRADE_CONSUMER_KEY"}


def test_unconfigured_broker_is_not_offered(client, login, user):
    login(user)
    html = client.get("/brokers").get_data(as_text=True)
    assert "Connect Charles Schwab" in html and "Connect E*TRADE" not in html
    from tests.conftest import csrf_token_from
    start = client.post("/brokers/etrade/connect", data={"csrf_token": csrf_token_from(html)})
    assert start.status_code == 404
