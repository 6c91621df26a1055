"""The /trades page offers the same export buttons as /exports, posting to the streamed download."""
from __future__ import annotations

import json
import re

from tests.conftest import csrf_token_from


def test_trades_page_export_buttons_download_the_owners_history(client, owner, login, make_history):
    make_history(owner, count=2, symbol="AAPL")
    login(owner)
    page = client.get("/trades").get_data(as_text=True)
    form = re.search(r'<form method="post" action="([^"]+)" class="inline trade-export"', page)
    assert form and form.group(1) == "/exports/download"
    assert all(f'name="export-format" value="{fmt}"' in page for fmt in ("csv", "json", "zip"))
    response = client.post(form.group(1), data={"csrf_token": csrf_token_from(page), "export-format": "json"})
    assert response.status_code == 200
    assert response.headers["Content-Disposition"].endswith('.json"')
    assert [trade["symbol"] for trade in json.loads(response.get_data())["trades"]] == ["AAPL", "AAPL"]
