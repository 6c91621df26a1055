"""The /exports page: download buttons, a share link shown once with a copy button, revoke, job progress bars."""
from __future__ import annotations

import csv
import io
import re

from tests.conftest import csrf_token_from


def _form(client):
    page = client.get("/exports")
    assert page.status_code == 200
    return page.get_data(as_text=True)


def test_page_needs_sign_in(client):
    assert client.get("/exports").status_code in (302, 401)


def test_download_button_streams_the_filtered_csv(client, owner, login, make_history):
    make_history(owner, count=2, symbol="AAPL")
    make_history(owner, count=1, symbol="MSFT")
    login(owner)
    token = csrf_token_from(_form(client))
    response = client.post("/exports/download", data={"csrf_token": token, "export-format": "csv",
                                                      "export-symbol": "msft"})
    assert response.status_code == 200
    assert response.headers["Content-Disposition"].startswith('attachment; filename="trades_export_')
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [row["symbol"] for row in rows] == ["MSFT"]


def test_new_share_link_is_shown_once_with_a_copy_button_and_can_be_revoked(client, owner, login, make_history):
    make_history(owner, count=1)
    login(owner)
    token = csrf_token_from(_form(client))
    created = client.post("/exports/share", data={"csrf_token": token, "share-format": "json",
                                                  "share-expires_in_hours": "2", "share-max_accesses": "3"})
    assert created.status_code == 201 and created.headers["Cache-Control"] == "no-store"
    html = created.get_data(as_text=True)
    url = re.search(r'id="new-share-url"[^>]*value="([^"]+)"', html).group(1)
    assert 'data-copy-target="new-share-url"' in html
    share_path = url.split("127.0.0.1:5000", 1)[1]
    assert client.get(share_path).status_code == 200
    again = _form(client)
    assert url not in again and "1 / 3" in again  # never shown again; the use count is
    link_id = re.search(r'/exports/share-links/(\d+)/revoke', again).group(1)
    client.post(f"/exports/share-links/{link_id}/revoke", data={"csrf_token": csrf_token_from(again)})
    assert client.get(share_path).status_code == 410
    assert ">revoked<" in _form(client)


def test_share_form_rejects_out_of_range_limits(client, owner, login):
    login(owner)
    token = csrf_token_from(_form(client))
    response = client.post("/exports/share", data={"csrf_token": token, "share-format": "csv",
                                                   "share-expires_in_hours": "500", "share-max_accesses": "1"})
    assert response.status_code == 422 and "new-share-url" not in response.get_data(as_text=True)


def test_job_shows_a_progress_bar_and_has_a_progress_endpoint(client, owner, login, make_user):
    login(owner)
    response = client.post("/exports/jobs", data={"csrf_token": csrf_token_from(_form(client)), "job-format": "zip"})
    assert response.status_code == 302
    html = _form(client)
    match = re.search(r'<progress max="1" value="0"\s+data-job-progress-url="(/exports/jobs/(\d+)/progress)"', html)
    assert match, html
    progress = client.get(match.group(1)).get_json()
    assert progress["status"] == "queued" and progress["format"] == "zip"
    assert '<script src="/static/exports.js"' in html and '<script src="/static/copy_button.js"' in html and "<script>" not in html


def test_another_users_job_and_link_are_not_reachable_from_the_page(client, owner, login, make_user, db):
    from utils import exports, sharing
    stranger = make_user()
    job = exports.create_job(stranger, "csv", None)
    link, _token = sharing.create_link(stranger, "csv", None)
    db.session.commit()
    login(owner)
    assert client.get(f"/exports/jobs/{job.id}/progress").status_code == 404
    assert client.get(f"/exports/jobs/{job.id}/download").status_code == 404
    html = _form(client)
    client.post(f"/exports/share-links/{link.id}/revoke", data={"csrf_token": csrf_token_from(html)})
    db.session.expire_all()
    assert db.session.get(type(link), link.id).revoked_at is None
