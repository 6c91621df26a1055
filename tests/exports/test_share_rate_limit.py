"""The public share endpoint is rate-limited per client IP (SHARE_LINK_RATE_LIMIT)."""
from __future__ import annotations

import pytest

from tests.rate_window import clear_of_a_window_edge

SHARE = "/api/v1/exports/share/"


@pytest.fixture
def app_config(app_config):
    return {**app_config, "SHARE_LINK_RATE_LIMIT": "5/minute"}


def test_public_endpoint_is_rate_limited_per_ip(client):
    clear_of_a_window_edge()
    statuses = [client.get(SHARE + "C" * 43).status_code for _ in range(6)]
    assert statuses == [404] * 5 + [429]
    other_ip = client.get(SHARE + "C" * 43, environ_base={"REMOTE_ADDR": "127.0.0.2"})
    assert other_ip.status_code == 404
