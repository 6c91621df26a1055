"""Storage: local files with server-made keys only (no traversal), and S3 against a local moto_server."""
from __future__ import annotations

import hashlib
import os
import time

import pytest
import requests

from tests.exports.conftest import S3_ENV
from utils import storage


def test_new_keys_are_random_and_well_formed():
    first, second = storage.new_key("csv"), storage.new_key("csv")
    assert first != second and storage.check_key(first) == first


@pytest.mark.parametrize("unsafe_key", ["../secret.csv", "exports/../../etc/passwd", "/etc/passwd",
                                        "exports/" + "a" * 32 + ".csv/../../x", "exports\\..\\x.csv",
                                        "exports/" + "A" * 32 + ".csv", "exports/" + "a" * 32 + ".exe", "", None])
def test_local_storage_refuses_anything_but_a_server_made_key(tmp_path, unsafe_key):
    local = storage.LocalStorage(tmp_path / "files")
    with pytest.raises(storage.InvalidKey):
        local.path_for(unsafe_key)
    with pytest.raises(storage.InvalidKey):
        local.save(unsafe_key, [b"x"], "text/csv")


def test_local_storage_round_trips_under_its_root(tmp_path):
    local = storage.LocalStorage(tmp_path / "files")
    key = storage.new_key("zip")
    size, digest = local.save(key, [b"abc", b"def"], "application/zip")
    assert (size, digest) == (6, hashlib.sha256(b"abcdef").hexdigest())
    assert local.path_for(key).is_relative_to(tmp_path / "files")
    assert b"".join(local.open_chunks(key)) == b"abcdef"
    local.delete(key)
    assert not local.exists(key)


@pytest.fixture
def s3_env(monkeypatch, moto_server):
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = f"exports-{os.getpid()}-{time.monotonic_ns()}"
    store = storage.S3Storage(bucket, moto_server)
    store.client.create_bucket(Bucket=bucket)
    return store


def test_s3_storage_saves_reads_and_deletes(s3_env):
    key = storage.new_key("csv")
    size, digest = s3_env.save(key, [b"a,b\r\n", b"1,2\r\n"], "text/csv")
    assert size == 10 and digest == hashlib.sha256(b"a,b\r\n1,2\r\n").hexdigest()
    assert b"".join(s3_env.open_chunks(key)) == b"a,b\r\n1,2\r\n"
    s3_env.delete(key)
    assert not s3_env.exists(key)


def test_s3_presigned_url_downloads_with_the_filename(s3_env):
    key = storage.new_key("json")
    s3_env.save(key, [b'{"x": 1}'], "application/json")
    url = s3_env.download_url(key, "trades_export_20260101T000000Z.json", "application/json")
    assert "X-Amz-Expires=300" in url
    response = requests.get(url, timeout=10)
    assert response.status_code == 200 and response.content == b'{"x": 1}'
    assert 'filename="trades_export_20260101T000000Z.json"' in response.headers["Content-Disposition"]


def test_s3_refuses_keys_it_did_not_make(s3_env):
    with pytest.raises(storage.InvalidKey):
        s3_env.save("exports/../other.csv", [b"x"], "text/csv")
