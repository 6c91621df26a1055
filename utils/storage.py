"""File storage for export results: the local filesystem (default) or S3 through boto3.

Keys are always made here (`new_key`), never taken from a request, and every key is checked against
one strict pattern before it touches a path or a bucket, so `../` can never reach the filesystem.
Local files are served by the app; S3 files through short-lived presigned URLs.
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from flask import current_app

KEY_PATTERN = re.compile(r"exports/[0-9a-f]{32}\.(csv|json|zip)")
CHUNK_SIZE = 64 * 1024
PRESIGNED_URL_SECONDS = 300


class InvalidKey(ValueError):
    """A storage key that was not made by `new_key` (e.g. contains `..` or `/`)."""


def new_key(extension: str) -> str:
    """A fresh random key for a file with this extension (csv, json or zip)."""
    return check_key(f"exports/{secrets.token_hex(16)}.{extension}")


def check_key(key: str) -> str:
    """Return `key` if it has the server-generated shape; raises InvalidKey otherwise."""
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise InvalidKey("not a storage key")
    return key


class LocalStorage:
    """Files under one directory (`STORAGE_DIR`)."""

    name = "local"

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def path_for(self, key: str) -> Path:
        """The file path of `key`; raises InvalidKey for anything that is not a key or escapes the root."""
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):
            raise InvalidKey("key escapes the storage directory")
        return path

    def save(self, key: str, chunks: Iterable[bytes], content_type: str) -> tuple[int, str]:
        """Write the chunks to `key` (atomically, via a temporary file); returns (size, SHA-256 hex)."""
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
        try:
            with os.fdopen(handle, "wb") as sink:
                size, digest = _copy(chunks, sink)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return size, digest

    def open_chunks(self, key: str) -> Iterator[bytes]:
        """The file's bytes in chunks; raises FileNotFoundError when it is gone."""
        source = self.path_for(key).open("rb")

        def chunks():
            with source:
                while block := source.read(CHUNK_SIZE):
                    yield block
        return chunks()

    def delete(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def download_url(self, key: str, filename: str, content_type: str) -> str | None:
        """None: local files are streamed by the app itself."""
        return None


class S3Storage:
    """Objects in one S3 bucket (any S3-compatible endpoint via `S3_ENDPOINT_URL`)."""

    name = "s3"

    def __init__(self, bucket: str, endpoint_url: str | None = None):
        import boto3
        from botocore.config import Config
        if not bucket:
            raise RuntimeError("STORAGE_BACKEND=s3 needs S3_BUCKET")
        self.bucket = bucket
        self.client = boto3.client(
            "s3", endpoint_url=endpoint_url or None,
            region_name=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries={"max_attempts": 3}, connect_timeout=5, read_timeout=30))

    def save(self, key: str, chunks: Iterable[bytes], content_type: str) -> tuple[int, str]:
        """Spool the chunks to a temporary file (bounded memory), then upload; returns (size, SHA-256 hex)."""
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
            size, digest = _copy(chunks, spool)
            spool.seek(0)
            self.client.upload_fileobj(spool, self.bucket, check_key(key), ExtraArgs={"ContentType": content_type})
        return size, digest

    def open_chunks(self, key: str) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=check_key(key))["Body"]
        return body.iter_chunks(CHUNK_SIZE)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=check_key(key))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError
        try:
            self.client.head_object(Bucket=self.bucket, Key=check_key(key))
            return True
        except ClientError:
            return False

    def download_url(self, key: str, filename: str, content_type: str) -> str:
        """A presigned GET URL valid for PRESIGNED_URL_SECONDS that downloads under `filename`."""
        return self.client.generate_presigned_url(
            "get_object", ExpiresIn=PRESIGNED_URL_SECONDS,
            Params={"Bucket": self.bucket, "Key": check_key(key),
                    "ResponseContentDisposition": f'attachment; filename="{filename}"',
                    "ResponseContentType": content_type})


def _copy(chunks: Iterable[bytes], sink) -> tuple[int, str]:
    size, digest = 0, hashlib.sha256()
    for chunk in chunks:
        sink.write(chunk)
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def backend() -> LocalStorage | S3Storage:
    """The storage configured for this app (one client per app, made on first use)."""
    found = current_app.extensions.get("tw_storage")
    if found is None:
        config = current_app.config
        if config.get("STORAGE_BACKEND") == "s3":
            found = S3Storage(config.get("S3_BUCKET", ""), config.get("S3_ENDPOINT_URL") or None)
        else:
            root = Path(config.get("STORAGE_DIR") or "instance/files")
            found = LocalStorage(root if root.is_absolute() else Path(current_app.root_path) / root)
        found = current_app.extensions.setdefault("tw_storage", found)
    return found
