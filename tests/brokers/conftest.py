"""Fixtures for broker linking: the fake brokers as real HTTP servers on loopback ports, and a helper that
follows the OAuth redirects the way a browser would."""
from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import requests
from flask import g

from tests.conftest import base_config, csrf_token_from
from tests.fakes import coinbase as fake_coinbase
from tests.fakes import etrade as fake_etrade
from tests.fakes import schwab as fake_schwab
from tests.fakes.runner import ThreadedServer
from tests.fakes.serve import settings as fake_settings

PUBLIC_BASE_URL = "http://localhost"


class Fake:
    def __init__(self, server: ThreadedServer):
        self.server, self.url = server, server.url

    def stats(self) -> dict:
        return requests.get(self.url + "/_fake/stats", timeout=5).json()

    def control(self, **body) -> dict:
        return requests.post(self.url + "/_fake/control", json=body, timeout=5).json()

    def counter(self, name: str) -> int:
        return self.stats()["counters"].get(name, 0)


@pytest.fixture(scope="session")
def fake_servers():
    servers = {
        "schwab": ThreadedServer(fake_schwab.create_app([f"{PUBLIC_BASE_URL}/brokers/schwab/callback"])).start(),
        "coinbase": ThreadedServer(fake_coinbase.create_app([f"{PUBLIC_BASE_URL}/brokers/coinbase/callback"])).start(),
        "etrade": ThreadedServer(fake_etrade.create_app()).start(),
    }
    yield {name: Fake(server) for name, server in servers.items()}
    for server in servers.values():
        server.stop()


@pytest.fixture
def fakes(fake_servers):
    for fake in fake_servers.values():
        fake.control(reset=True)
    return fake_servers


def broker_settings(fakes) -> dict:
    """The variables that point Tradewarden at the running fakes (the same mapping `make run FAKE_BROKERS=1` uses)."""
    return fake_settings(PUBLIC_BASE_URL, {name: fake.server.port for name, fake in fakes.items()})


@pytest.fixture
def app_config(redis_server, database_url, tmp_path, fakes) -> dict:
    return base_config(redis_server.url, database_url, STORAGE_DIR=str(tmp_path / "files"), **broker_settings(fakes))


def start_connect(client, broker: str):
    """POST the Connect button; returns the redirect to the broker's consent page."""
    g.pop("csrf_token", None)  # the test's app context outlives requests, so flask_wtf's cached token would leak
    page = client.get("/brokers")
    response = client.post(f"/brokers/{broker}/connect", data={"csrf_token": csrf_token_from(page.get_data(as_text=True))})
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    return response


def consent(authorize_url: str) -> str:
    """Visit the broker's consent page (auto-approved by the fake); returns our callback path+query."""
    answer = requests.get(authorize_url, allow_redirects=False, timeout=5)
    assert answer.status_code == 302, answer.text[:300]
    back = urlsplit(answer.headers["Location"])
    return f"{back.path}?{back.query}"


@pytest.fixture
def link(client, login, user):
    """link(broker) → the callback response after a full browser-style connect flow."""
    login(user)

    def run(broker: str):
        authorize = start_connect(client, broker).headers["Location"]
        return client.get(consent(authorize))

    return run
