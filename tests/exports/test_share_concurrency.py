"""50 simultaneous requests on a single-use link against a real threaded HTTP server give exactly one file."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from werkzeug.serving import make_server

SHARE = "/api/v1/exports/share/"
REQUESTS = 50


@pytest.fixture
def app_config(app_config):
    return {**app_config, "SHARE_LINK_RATE_LIMIT": "1000/minute"}


@pytest.fixture
def live_server(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


def test_fifty_simultaneous_requests_on_a_single_use_link_give_exactly_one_file(
        client, db, owner, headers, make_history, live_server):
    from models import ShareLink
    make_history(owner, count=2)
    token = client.post("/api/v1/exports", json={"create_share_link": True, "format": "csv"},
                        headers=headers).get_json()["share_token"]
    barrier = threading.Barrier(REQUESTS)

    def fetch(_index):
        barrier.wait()
        response = requests.get(live_server + SHARE + token, timeout=60)
        return response.status_code, response.content

    with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
        results = list(pool.map(fetch, range(REQUESTS)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [410] * (REQUESTS - 1)
    served = [body for status, body in results if status == 200][0]
    assert served.count(b"TRADE_") == 2
    db.session.expire_all()
    assert db.session.query(ShareLink).one().accessed_count == 1
