"""Uploaded images under server-chosen names, in a local directory or in S3-compatible storage.

Every upload is first staged to a local temp file (a :class:`StagingFile`, which the web side's
multipart parser writes into as the bytes arrive: never held whole in memory, never copied twice),
hashed and size-limited on the way, so the web side can check its header; only once it passed
every check is it committed to the store under a random name. What follows the image's end
(a phone's appended video, a vendor trailer, padding) is cut off the staged file first
(:func:`trim_staged`), so the hash, the size and the stored bytes are the image's alone. The
worker gets it back as a local file through :meth:`UploadStore.local_copy`, whichever store
holds it. ``UPLOAD_DIR`` picks the store (:mod:`imgsvc.storage.stores`): a directory, or
``s3://BUCKET/PREFIX`` (``s3.py``). A disk that is full, read-only or not ours (ENOSPC, EROFS,
EACCES ...) is an infrastructure fault (503) and leaves no file behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import unicodedata
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import click
from flask import current_app
from flask.cli import with_appcontext

from imgsvc.config import app_settings
from imgsvc.errors import EmptyFile, FileTooLarge, StorageUnavailable

CHUNK = 64 * 1024
#: What :meth:`UploadStore.commit` names an upload: nothing else is ever read, deleted or swept.
UPLOAD_NAME = re.compile(r"[0-9a-f]{32}\.[a-z0-9]{2,5}")
#: Temp files: an upload being received (web) and a stored upload being read (worker, object storage).
STAGING_PREFIX, DOWNLOAD_PREFIX = ".upload-", ".download-"
#: An upload, temp or stored, that nothing references after this long is garbage: far longer than
#: any upload takes from its first byte to its row, or a worker from its download to its decode.
ORPHAN_AGE = timedelta(hours=1)

MAX_FILENAME = 255


def client_filename(raw: str | None) -> str | None:
    """The client's name for an upload, kept only to be shown back with its job.

    Untrusted text: its last path part only, without control or invisible format characters
    (e.g. right-to-left overrides that disguise an extension), at most MAX_FILENAME characters.
    It is never used as a path (files get server-chosen names) and never placed in HTML.
    """
    name = unicodedata.normalize("NFC", re.split(r"[/\\]", raw or "")[-1])
    name = "".join(c for c in name if unicodedata.category(c) not in {"Cc", "Cf", "Cs"}).strip()
    if name in {"", ".", ".."}:
        return None
    if len(name) > MAX_FILENAME:
        suffix = Path(name).suffix if len(Path(name).suffix) <= 16 else ""
        name = name[: MAX_FILENAME - len(suffix)] + suffix
    return name


def human_size(size: int) -> str:
    """10485760 -> "10 MB": sizes as people read them (binary units, as the limits are counted)."""
    value, unit = float(size), "bytes"
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            break
        value /= 1024
    return f"{size} bytes" if unit == "bytes" else f"{value:.1f}".removesuffix(".0") + f" {unit}"


def file_too_large(size: int | None, limit: int) -> FileTooLarge:
    """The one wording for a file over MAX_FILE_SIZE, the same the page shows before it sends one.

    ``size`` is None when nobody knows it (a chunked request cut off at the limit).
    """
    if size is None:
        return FileTooLarge(f"this file is larger than the limit of {human_size(limit)}", max_bytes=limit)
    shown, limit_shown = human_size(size), human_size(limit)
    if shown == limit_shown:  # just over the limit: rounded, the two would read the same
        shown, limit_shown = f"{size} bytes", f"{limit} bytes"
    return FileTooLarge(f"this file is {shown}; the limit is {limit_shown}", size_bytes=size, max_bytes=limit)


@dataclass(frozen=True)
class StagedUpload:
    path: Path
    size: int
    sha256: str


class StagingFile(io.RawIOBase):
    """A temp file in the staging directory that hashes and counts what is written to it.

    The web side's multipart parser writes an upload's bytes straight into one (see
    :mod:`imgsvc.web`), so the upload is parsed, size-limited, hashed and on disk in one
    pass; :meth:`staged` hands the file over. A file not handed over is removed on close.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        super().__init__()
        self._handed_over = False
        self.max_bytes = max_bytes
        self.size = 0
        self._digest = hashlib.sha256()
        with _disk_faults():
            fd, tmp = tempfile.mkstemp(prefix=STAGING_PREFIX, dir=directory)
        self.path = Path(tmp)
        self._file = io.FileIO(fd, "r+")  # unbuffered: a full disk fails the write, not a later flush

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.size += len(data)
        if self.size > self.max_bytes:
            # Over the limit: nothing more is stored, but the rest is still counted (the request
            # body is being received anyway), so the 413 can say how large the file is.
            self._discard()
            return len(data)
        self._digest.update(data)
        view = memoryview(data)
        with _disk_faults():
            while view:
                view = view[self._file.write(view) :]
        return len(data)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        return 0 if self._file.closed else self._file.readinto(buffer)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return 0 if self._file.closed else self._file.seek(offset, whence)

    def tell(self) -> int:
        return 0 if self._file.closed else self._file.tell()

    @property
    def sha256(self) -> str:
        """The hash of what has been written so far (an idempotent request's fingerprint reads it)."""
        return self._digest.copy().hexdigest()

    def staged(self) -> StagedUpload:
        """The file as a :class:`StagedUpload`, now the caller's (commit or discard it)."""
        if self.size > self.max_bytes:
            self.close()
            raise file_too_large(self.size, self.max_bytes)
        if self.size == 0:
            self.close()
            raise EmptyFile("the uploaded file is empty")
        self._file.close()
        self._handed_over = True
        return StagedUpload(self.path, self.size, self._digest.hexdigest())

    def close(self) -> None:
        if not self._handed_over:
            self._discard()
        super().close()

    def _discard(self) -> None:
        file = getattr(self, "_file", None)  # None: mkstemp itself failed
        if file is not None and not file.closed:
            file.close()
            self.path.unlink(missing_ok=True)


def trim_staged(staged: StagedUpload, end: int | None) -> StagedUpload:
    """The staged upload cut at ``end`` (where :func:`imgsvc.images.inspect_image` found the image
    to end) and hashed again; as it is when nothing follows the image (or ``end`` is None).

    Dedupe, the stored size and the quota then count the image, not what was appended to it:
    40 copies of one JPEG with different padding are one image. Re-reading at most
    MAX_FILE_SIZE bytes of a local file is cheap next to the upload itself.
    """
    if end is None or end >= staged.size:
        return staged
    digest = hashlib.sha256()
    with _disk_faults(), staged.path.open("r+b") as file:
        file.truncate(end)
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return StagedUpload(staged.path, end, digest.hexdigest())


def check_name(name: str) -> str:
    """Names are only ever ours (uuid hex + extension); refuse anything else outright."""
    if not UPLOAD_NAME.fullmatch(name):
        raise ValueError(f"not an upload name: {name!r}")
    return name


class UploadStore(ABC):
    """Stage (local, checked) -> commit (into the store) -> local_copy (worker) -> delete.

    ``staging_dir`` holds the temp files of uploads being received, on the web host.
    """

    def __init__(self, max_bytes: int, staging_dir: Path) -> None:
        self.max_bytes = max_bytes
        self.staging_dir = staging_dir

    def stage(self, stream: BinaryIO) -> StagedUpload:
        """Copy ``stream`` to a temp file, enforcing the size limit as bytes arrive.

        A :class:`StagingFile` of this store (what the web side's multipart parser wrote the
        upload into) is already that temp file: it is taken as it is, with no second copy.
        """
        if isinstance(stream, StagingFile) and stream.path.parent == self.staging_dir:
            return stream.staged()
        staging = StagingFile(self.staging_dir, self.max_bytes)
        try:
            while chunk := stream.read(CHUNK):
                staging.write(chunk)
            return staging.staged()
        finally:
            staging.close()

    def commit(self, staged: StagedUpload, extension: str) -> str:
        """Store the staged file under a final, random name and return that name.

        The staged file is gone afterwards, stored or not: a failed commit leaves nothing.
        """
        name = f"{uuid.uuid4().hex}{extension}"
        try:
            with _disk_faults():
                self._put(staged.path, name)
        finally:
            self.discard(staged)
        return name

    def delete(self, name: str | None) -> None:
        """None is a job with no file of its own (answered from the dedupe cache): nothing to do."""
        if name is not None:
            self._remove(check_name(name))

    def exists(self, name: str | None) -> bool:
        """Whether the store still holds this upload (a retry needs it); StorageUnavailable if unknown."""
        return name is not None and self._exists(check_name(name))

    @staticmethod
    def discard(staged: StagedUpload) -> None:
        staged.path.unlink(missing_ok=True)

    def remove_stale_temp_files(self, cutoff: datetime) -> int:
        """Temp files last written before ``cutoff`` by a process killed mid-upload or mid-read
        (SIGKILL and OOM skip every cleanup); run by ``flask prune`` and by workers."""
        removed = 0
        for prefix in (STAGING_PREFIX, DOWNLOAD_PREFIX):
            for path in self.staging_dir.glob(f"{prefix}*"):
                try:
                    if _mtime(path) < cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue  # finished meanwhile
        return removed

    @abstractmethod
    def create(self) -> None:
        """Make the directory or bucket if it does not exist yet (``flask init-uploads``); safe to repeat."""

    @abstractmethod
    def local_copy(self, name: str) -> AbstractContextManager[Path]:
        """The upload as a local file for as long as the ``with`` block runs.

        Raises FileNotFoundError when there is no such upload, and
        :class:`~imgsvc.errors.StorageUnavailable` when the store cannot be reached.
        """

    @abstractmethod
    def names_older_than(self, cutoff: datetime) -> Iterator[str]:
        """Every stored upload last written before ``cutoff`` (aware UTC): the orphan sweep's candidates."""

    @abstractmethod
    def _put(self, staged: Path, name: str) -> None: ...

    @abstractmethod
    def _remove(self, name: str) -> None: ...

    @abstractmethod
    def _exists(self, name: str) -> bool: ...


class LocalUploadStore(UploadStore):
    """A directory: staged in it, so committing is an atomic rename on the same file system."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(max_bytes, staging_dir=root)
        self.root = root

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, name: str) -> Path:
        return self.root / check_name(name)

    @contextmanager
    def local_copy(self, name: str) -> Iterator[Path]:
        yield self.path_of(name)  # the file itself: a shared or local disk needs no copy

    def names_older_than(self, cutoff: datetime) -> Iterator[str]:
        for path in self.root.iterdir():
            try:
                if UPLOAD_NAME.fullmatch(path.name) and _mtime(path) < cutoff:
                    yield path.name
            except FileNotFoundError:
                continue

    def _put(self, staged: Path, name: str) -> None:
        staged.rename(self.path_of(name))

    def _remove(self, name: str) -> None:
        self.path_of(name).unlink(missing_ok=True)

    def _exists(self, name: str) -> bool:
        with _disk_faults():
            return self.path_of(name).is_file()


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


@click.command("init-uploads")
@with_appcontext
def init_uploads_command() -> None:
    """Create the upload directory or bucket named by UPLOAD_DIR (safe to repeat)."""
    current_app.uploads.create()
    click.echo(f"Uploads go to {app_settings().upload_dir}")


@contextmanager
def _disk_faults() -> Iterator[None]:
    """The disk, not the request, is at fault: a 503 whose message names no path."""
    try:
        yield
    except OSError as exc:
        raise StorageUnavailable() from exc
