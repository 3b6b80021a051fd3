"""Uploads in S3-compatible object storage (``UPLOAD_DIR=s3://BUCKET/PREFIX``), through boto3.

Web and worker hosts then share nothing but Redis, the database and the bucket. boto3 finds
the endpoint (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``), credentials and region itself,
from the standard AWS variables, so AWS S3, MinIO, SeaweedFS, Ceph RGW and R2 all work as is.
A store that cannot be reached is :class:`~imgsvc.errors.StorageUnavailable`: 503 at submit,
a transient (retried) failure in the worker.

A hung store (it accepts connections and never answers) must not hold the web threads: at
submit the PUT has one try and an overall deadline of ``S3_TIMEOUT`` seconds, and once the
store failed, a circuit breaker answers 503 at once for ``S3_COOLDOWN`` seconds instead of
letting every submit wait out the deadline again. The review measured ~93 s per submit
(a 30 s read timeout, three tries) and ``/healthz`` unreachable meanwhile, every thread held.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
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
    """Objects ``PREFIX/NAME`` in one bucket; uploads are staged in a directory of imgsvc's own.

    Not the system temp directory: the sweep of stale ``.upload-*``/``.download-*`` files
    (workers, ``flask prune``) would delete other programs' files there.
    """

    def __init__(
        self, url: str, max_bytes: int, staging_dir: Path, timeout: float = 5, cooldown: float = 30
    ) -> None:
        staging_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging_dir.chmod(0o700)  # mkdir's mode is masked by the umask, and skipped when it exists
        super().__init__(max_bytes, staging_dir)
        self.bucket, self.prefix = parse_s3_url(url)
        self.timeout = timeout
        self.breaker = Breaker(cooldown)
        self._client: Any = None
        self._put_client: Any = None
        self._puts: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """Made on first use, not at app build (nothing connects then) and not before gunicorn forks.

        For the workers and ``flask prune``: a dead endpoint costs seconds, not boto3's default
        minute; "standard" retries (3 tries unless AWS_MAX_ATTEMPTS says otherwise, jittered
        backoff) ride out a throttle or a dropped connection.
        """
        if self._client is None:
            with self._lock:
                if self._client is None:
                    # A fresh Config each time: botocore writes the resolved attempts into it.
                    config = Config(connect_timeout=5, read_timeout=30, retries={"mode": "standard"})
                    self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    @property
    def put_client(self) -> Any:
        """The submit's client: one try, every connect and read within ``timeout``."""
        if self._put_client is None:
            with self._lock:
                if self._put_client is None:
                    config = Config(
                        connect_timeout=self.timeout,
                        read_timeout=self.timeout,
                        retries={"mode": "standard", "total_max_attempts": 1},
                    )
                    self._put_client = boto3.session.Session().client("s3", config=config)
                    self._puts = ThreadPoolExecutor(8, thread_name_prefix="imgsvc-s3-put")
        return self._put_client

    def create(self) -> None:
        with self._reachable("create", self.bucket):
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
        """Stored within ``timeout`` seconds, or StorageUnavailable (and the breaker opens).

        The PUT runs on a thread of its own so that the deadline holds whatever boto3 waits
        for; one given up on ends by its own read timeout (the same ``timeout``), and an object
        it stores after all has no row: the orphan sweep removes it.
        """
        with self._reachable("store", name):
            client = self.put_client
            assert self._puts is not None
            put = self._puts.submit(
                client.upload_file, str(staged), self.bucket, self.key(name), Config=TRANSFER_CONFIG
            )
            try:
                put.result(timeout=self.timeout)
            except FutureTimeout:
                raise StoreTimeout(reason=f"no answer within S3_TIMEOUT={self.timeout:g} s") from None

    @contextmanager
    def local_copy(self, name: str) -> Iterator[Path]:
        """Downloaded once into a temp file of this host, removed when the block ends."""
        key = self.key(name)
        fd, tmp = tempfile.mkstemp(prefix=DOWNLOAD_PREFIX, suffix=Path(name).suffix, dir=self.staging_dir)
        path = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as out, self._reachable("read", name):
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
                with body:
                    shutil.copyfileobj(body, out, CHUNK)
            yield path
        finally:
            path.unlink(missing_ok=True)

    def names_older_than(self, cutoff: datetime) -> Iterator[str]:
        with self._reachable("list", self.prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for entry in page.get("Contents", ()):
                    name = entry["Key"][len(self.prefix) :]
                    if UPLOAD_NAME.fullmatch(name) and entry["LastModified"] < cutoff:
                        yield name

    def _remove(self, name: str) -> None:
        with self._reachable("delete", name):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(name))

    def _exists(self, name: str) -> bool:
        try:
            with self._reachable("look up", name):
                self.client.head_object(Bucket=self.bucket, Key=self.key(name))
        except FileNotFoundError:
            return False
        return True

    @contextmanager
    def _reachable(self, action: str, name: str) -> Iterator[None]:
        """Refused at once while the breaker is open; a store that cannot be reached opens it."""
        self.breaker.check(action, name)
        try:
            with _reachable(action, name):
                yield
        except StorageUnavailable as exc:
            if isinstance(exc.__cause__, BotoCoreError | StoreTimeout):
                self.breaker.trip()
            raise
        else:
            self.breaker.reset()


class StoreTimeout(BotoCoreError):
    """The store took longer than the deadline (no answer, or too slow to be of use)."""

    fmt = "{reason}"


class Breaker:
    """Open for ``cooldown`` seconds once the store could not be reached: meanwhile every call
    fails at once (503 at submit) instead of waiting out the deadline again. After it, calls go
    through again; the first that fails opens it anew, the first that succeeds closes it."""

    def __init__(self, cooldown: float) -> None:
        self.cooldown = cooldown
        self._open_until = 0.0

    @property
    def open(self) -> bool:
        return time.monotonic() < self._open_until

    def check(self, action: str, name: str) -> None:
        if self.open:
            log.warning(
                "object store skipped for %s of %s: it failed under %g s ago", action, name, self.cooldown
            )
            raise StorageUnavailable()

    def trip(self) -> None:
        self._open_until = time.monotonic() + self.cooldown

    def reset(self) -> None:
        self._open_until = 0.0


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
