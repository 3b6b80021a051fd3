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
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from imgsvc.errors import EmptyFile, FileTooLarge, StorageUnavailable

CHUNK = 64 * 1024


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
                        raise FileTooLarge(
                            f"file is larger than the limit of {self.max_bytes} bytes",
                            max_bytes=self.max_bytes,
                        )
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
