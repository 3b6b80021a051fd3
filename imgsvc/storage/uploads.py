"""Uploaded images on disk, under server-chosen names only.

Files are streamed to a temporary name in chunks (never held whole in memory),
hashed on the way, and renamed into place only once they passed every check.
A disk that is full, read-only or not ours (ENOSPC, EROFS, EACCES ...) is an
infrastructure fault (503), and leaves no file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from imgsvc.errors import EmptyFile, FileTooLarge, StorageUnavailable

CHUNK = 64 * 1024
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


class UploadStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    def stage(self, stream: BinaryIO) -> StagedUpload:
        """Copy ``stream`` to a temp file, enforcing the size limit as bytes arrive."""
        digest = hashlib.sha256()
        size = 0
        with _disk_faults():
            fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=self.root)
        path = Path(tmp)
        try:
            with _disk_faults(), os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        # The request body was already received: counting the rest costs no more
                        # reading from the client, and the message can say how large the file is.
                        while rest := stream.read(CHUNK):
                            size += len(rest)
                        raise file_too_large(size, self.max_bytes)
                    digest.update(chunk)
                    out.write(chunk)
            if size == 0:
                raise EmptyFile("the uploaded file is empty")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return StagedUpload(path, size, digest.hexdigest())

    def commit(self, staged: StagedUpload, extension: str) -> str:
        """Give the staged file its final, random name and return that name."""
        name = f"{uuid.uuid4().hex}{extension}"
        try:
            with _disk_faults():
                staged.path.rename(self.root / name)
        except StorageUnavailable:
            self.discard(staged)
            raise
        return name

    def path_of(self, name: str) -> Path:
        # Names are only ever ours (uuid hex + extension); refuse anything else outright.
        if "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"not an upload name: {name!r}")
        return self.root / name

    def delete(self, name: str | None) -> None:
        """None is a job with no file of its own (answered from the dedupe cache): nothing to do."""
        if name is not None:
            self.path_of(name).unlink(missing_ok=True)

    @staticmethod
    def discard(staged: StagedUpload) -> None:
        staged.path.unlink(missing_ok=True)


@contextlib.contextmanager
def _disk_faults() -> Iterator[None]:
    """The disk, not the request, is at fault: a 503 whose message names no path."""
    try:
        yield
    except OSError as exc:
        raise StorageUnavailable() from exc
