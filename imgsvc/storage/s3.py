"""Uploads in S3-compatible object storage (``UPLOAD_DIR=s3://BUCKET/PREFIX``), through boto3.

Web and worker hosts then share nothing but Redis, the database and the bucket. boto3 finds
the endpoint (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``), credentials and region itself,
from the standard AWS variables, so AWS S3, MinIO, SeaweedFS, Ceph RGW and R2 all work as is.
A store that cannot be reached is :class:`~imgsvc.errors.StorageUnavailable`: 503 at submit,
a transient (retried) failure in the worker.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from imgsvc.config import parse_s3_url
from imgsvc.errors import StorageUnavailable
from imgsvc.storage.uploads import CHUNK, DOWNLOAD_PREFIX, UPLOAD_NAME, UploadStore, check_name

log = logging.getLogger("imgsvc.storage")

#: One PUT up to 16 MB (every upload under the default 10 MiB limit); above it a multipart upload,
#: which s3transfer aborts if a part fails, so no half-written object is ever visible.
TRANSFER_CONFIG = TransferConfig(multipart_threshold=16 * 1024 * 1024, use_threads=False)
MISSING = {"NoSuchKey", "404", "NotFound"}


class S3UploadStore(UploadStore):
    """Objects ``PREFIX/NAME`` in one bucket; uploads are staged in the system temp directory."""

    def __init__(self, url: str, max_bytes: int, staging_dir: Path | None = None) -> None:
        super().__init__(max_bytes, staging_dir or Path(tempfile.gettempdir()))
        self.bucket, self.prefix = parse_s3_url(url)
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """Made on first use, not at app build (nothing connects then) and not before gunicorn forks."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    # A dead endpoint should cost a submit seconds, not boto3's default minute;
                    # "standard" retries (3 tries unless AWS_MAX_ATTEMPTS says otherwise, jittered
                    # backoff) ride out a throttle or a dropped connection. A fresh Config each
                    # time: botocore writes the resolved attempts into the one it is given.
                    config = Config(connect_timeout=5, read_timeout=30, retries={"mode": "standard"})
                    self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    def create(self) -> None:
        with _reachable("create", self.bucket):
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) not in MISSING:
                    raise
            region = self.client.meta.region_name
            if region in (None, "us-east-1"):
                self.client.create_bucket(Bucket=self.bucket)
            else:  # AWS wants the region named everywhere but in us-east-1
                location = {"LocationConstraint": region}
                self.client.create_bucket(Bucket=self.bucket, CreateBucketConfiguration=location)

    def key(self, name: str) -> str:
        return self.prefix + check_name(name)

    def _put(self, staged: Path, name: str) -> None:
        with _reachable("store", name):
            self.client.upload_file(str(staged), self.bucket, self.key(name), Config=TRANSFER_CONFIG)

    @contextmanager
    def local_copy(self, name: str) -> Iterator[Path]:
        """Downloaded once into a temp file of this host, removed when the block ends."""
        key = self.key(name)
        fd, tmp = tempfile.mkstemp(prefix=DOWNLOAD_PREFIX, suffix=Path(name).suffix, dir=self.staging_dir)
        path = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as out, _reachable("read", name):
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
                with body:
                    shutil.copyfileobj(body, out, CHUNK)
            yield path
        finally:
            path.unlink(missing_ok=True)

    def names_older_than(self, cutoff: datetime) -> Iterator[str]:
        with _reachable("list", self.prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for entry in page.get("Contents", ()):
                    name = entry["Key"][len(self.prefix) :]
                    if UPLOAD_NAME.fullmatch(name) and entry["LastModified"] < cutoff:
                        yield name

    def _remove(self, name: str) -> None:
        with _reachable("delete", name):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(name))

    def _exists(self, name: str) -> bool:
        try:
            with _reachable("look up", name):
                self.client.head_object(Bucket=self.bucket, Key=self.key(name))
        except FileNotFoundError:
            return False
        return True


@contextmanager
def _reachable(action: str, name: str) -> Iterator[None]:
    """boto3's errors -> FileNotFoundError (no such object) or StorageUnavailable (anything else).

    The endpoint and bucket stay in the log; the client's message names neither.
    """
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in MISSING:
            raise FileNotFoundError(f"no stored upload {name}") from exc
        log.error("object store refused %s of %s: %s", action, name, exc)
        raise StorageUnavailable() from exc
    except (BotoCoreError, S3UploadFailedError) as exc:  # the latter wraps upload_file's ClientError
        log.error("object store unreachable for %s of %s: %s", action, name, exc)
        raise StorageUnavailable() from exc
