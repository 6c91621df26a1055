"""Export jobs on a real Celery worker: progress, stored file, download, expiry and the clean-up task."""
from __future__ import annotations

import csv
import io
import json
import zipfile
from datetime import timedelta

from sqlalchemy import select, update

from models import ExportJob, StoredFile, Trade, utcnow
from tests.conftest import wait_for
from utils import jobs


def _finished(client, headers, job_id):
    def check():
        job = client.get(f"/api/v1/export-jobs/{job_id}", headers=headers).get_json()
        return job if job["status"] in ("done", "failed") else None
    return wait_for(check, timeout=60)


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
    download = client.get(f"/api/v1/export-jobs/{job_id}/download", headers=headers)
    archive = zipfile.ZipFile(io.BytesIO(download.get_data()))
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
    wait_for(expired, timeout=60)
    assert not storage.backend().exists(stored.key)
    assert client.get(f"/api/v1/export-jobs/{job_id}/download", headers=headers).status_code == 410


def test_every_export_task_is_registered_and_cleanup_is_scheduled(app):
    import worker
    assert {jobs.EXPORTS_BUILD, jobs.EXPORTS_CLEANUP} <= set(worker.celery.tasks)
    assert worker.BEAT_SCHEDULE["exports-cleanup"]["task"] == jobs.EXPORTS_CLEANUP


def test_job_progress_is_committed_batch_by_batch(db, owner, make_history):
    """Another connection sees rows_done grow while the job runs (what the page and the API poll)."""
    from sqlalchemy import insert, text

    from models import Trade
    from utils import exports
    history = make_history(owner, count=1)
    template = {column.name: getattr(history.trades[0], column.name) for column in Trade.__table__.columns
                if column.name != "id"}
    db.session.execute(insert(Trade), [dict(template) for _ in range(exports.BATCH_SIZE * 2)])
    job = exports.create_job(owner, "csv", None)
    db.session.commit()
    assert exports.claim_job(job.id)
    db.session.commit()
    seen = []

    def commit_and_look():
        db.session.commit()
        with db.engine.connect() as other:
            query = text("SELECT rows_done FROM export_jobs WHERE id = :id")
            seen.append(other.execute(query, {"id": job.id}).scalar())

    exports.run_job(job.id, commit=commit_and_look)
    db.session.commit()
    total = exports.BATCH_SIZE * 2 + 1
    assert seen == [0, exports.BATCH_SIZE, exports.BATCH_SIZE * 2, total]
    db.session.expire_all()
    finished = db.session.get(ExportJob, job.id)
    assert (finished.status.value, finished.rows_total) == ("done", total)
