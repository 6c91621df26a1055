"""An export job with STORAGE_BACKEND=s3 (a local moto_server): stored in the bucket, downloaded via a presigned URL."""
from __future__ import annotations

import csv
import io
import time

import boto3
import pytest
import requests

from tests.exports.conftest import S3_ENV
from tests.conftest import wait_for


@pytest.fixture
def app_config(app_config, moto_server, monkeypatch):
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    bucket = f"tw-exports-{time.monotonic_ns()}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    return {**app_config, "STORAGE_BACKEND": "s3", "S3_BUCKET": bucket, "S3_ENDPOINT_URL": moto_server}


def test_job_file_goes_to_s3_and_downloads_through_a_presigned_url(client, owner, headers, make_history,
                                                                   celery_worker, app):
    from utils import storage
    make_history(owner, count=3)
    job_id = client.post("/api/v1/export-jobs", json={"format": "csv"}, headers=headers).get_json()["id"]
    job = wait_for(lambda: (lambda found: found if found["status"] in ("done", "failed") else None)(
        client.get(f"/api/v1/export-jobs/{job_id}", headers=headers).get_json()), timeout=60)
    assert job["status"] == "done", job
    assert isinstance(storage.backend(), storage.S3Storage)
    response = client.get(f"/api/v1/export-jobs/{job_id}/download", headers=headers)
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(app.config["S3_ENDPOINT_URL"]) and "X-Amz-Signature=" in location
    downloaded = requests.get(location, timeout=10)
    assert downloaded.status_code == 200
    rows = list(csv.DictReader(io.StringIO(downloaded.text)))
    assert len(rows) == 3 and {row["symbol"] for row in rows} == {"AAPL"}
