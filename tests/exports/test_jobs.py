"""Export jobs on a real Celery worker: progress, stored file, download, expiry and the clean-up task."""
from __future__ import annotations

import csv
import io
import json
import zipfile
from datetime import timedelta

from sqlalchemy import select, update

from models import ExportJob, StoredFile, Trade, utcnow
from tests.exports.conftest import wait_for
from utils import jobs


def _finished(client, headers, job_id):
    def check():
        job = client.get(f"/api/v1/export-jobs/{job_id}", headers=headers).get_json()
        return job if job["status"] in ("done", "failed") else None
    return wait_for(check)


def test_csv_job_runs_on_the_worker_and_downloads_the_export(client, db, owner, headers, make_history, celery_worker):
    make_history(owner, count=5)
    response = client.post("/api/v1/export-jobs", json={"format": "csv"}, headers=headers)
    assert response.status_code == 202 and response.get_json()["status"] == "queued"
    job = _finished(client, headers, response.get_json()["id"])
    assert job["status"] == "done", job
    assert (job["rows_done"], job["rows_total"], job["percent"]) == (5, 5, 100)
    download = client.get(f"/api/v1/export-jobs/{job['id']}/download", headers=headers)
    assert download.status_code == 200 and download.headers["Content-Disposition"].endswith('.csv"')
    rows = list(csv.DictReader(io.StringIO(download.get_data(as_text=True))))
    ids = db.session.scalars(select(Trade.id).where(Trade.user_id == owner.id).order_by(Trade.id)).all()
    assert [int(row["id"]) for row in rows] == ids


def test_zip_job_progress_counts_every_file(client, owner, headers, make_history, celery_worker):
    make_history(owner, count=2)
    job_id = client.post("/api/v1/export-jobs", json={"format": "zip"}, headers=headers).get_json()["id"]
    job = _finished(client, headers, job_id)
    assert (job["status"], job["rows_done"], job["rows_total"]) == ("done", 12, 12)  # 2 csv + 2 json + 4 + 4
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/api/v1/export-jobs/{job_id}/download", headers=headers).get_data()))
    assert json.loads(archive.read("manifest.json"))["files"]["orders.csv"]["rows"] == 4


def test_jobs_are_private_and_not_downloadable_before_done(client, db, owner, headers, make_user, make_bearer):
    job_id = client.post("/api/v1/export-jobs", json={"format": "json"}, headers=headers).get_json()["id"]
    assert client.get(f"/api/v1/export-jobs/{job_id}/download", headers=headers).status_code == 404  # not ready
    stranger = make_bearer(make_user())
    assert client.get(f"/api/v1/export-jobs/{job_id}", headers=stranger).status_code == 404
    assert client.get(f"/api/v1/export-jobs/{job_id}/download", headers=stranger).status_code == 404
    assert client.post("/api/v1/export-jobs", json={"format": "pdf"}, headers=headers).status_code == 422


def test_cleanup_task_deletes_expired_files_and_download_is_410(app, client, db, owner, headers, make_history,
                                                                 celery_worker):
    from utils import storage
    make_history(owner, count=1)
    job_id = client.post("/api/v1/export-jobs", json={"format": "csv"}, headers=headers).get_json()["id"]
    assert _finished(client, headers, job_id)["status"] == "done"
    stored = db.session.scalar(select(StoredFile))
    assert storage.backend().exists(stored.key)
    db.session.execute(update(StoredFile).values(expires_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    jobs.send_now(jobs.EXPORTS_CLEANUP)

    def expired():
        db.session.expire_all()
        return db.session.get(ExportJob, job_id).status.value == "expired"
    wait_for(expired)
    assert not storage.backend().exists(stored.key)
    assert client.get(f"/api/v1/export-jobs/{job_id}/download", headers=headers).status_code == 410


def test_every_export_task_is_registered_and_cleanup_is_scheduled(app):
    import worker
    assert {jobs.EXPORTS_BUILD, jobs.EXPORTS_CLEANUP} <= set(worker.celery.tasks)
    assert worker.BEAT_SCHEDULE["exports-cleanup"]["task"] == jobs.EXPORTS_CLEANUP
