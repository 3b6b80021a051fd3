"""The upload store streams, limits, hashes and names files itself."""

from __future__ import annotations

import hashlib
import io

import pytest

from imgsvc.errors import EmptyFile, FileTooLarge
from imgsvc.storage.uploads import UploadStore


def test_stage_and_commit_use_server_names(tmp_path):
    store = UploadStore(tmp_path, max_bytes=1000)
    staged = store.stage(io.BytesIO(b"x" * 999))
    assert staged.size == 999 and staged.sha256 == hashlib.sha256(b"x" * 999).hexdigest()
    name = store.commit(staged, ".png")
    assert name.endswith(".png") and len(name) == 36
    assert [p.name for p in tmp_path.iterdir()] == [name]


@pytest.mark.parametrize(("data", "error"), [(b"", EmptyFile), (b"y" * 1001, FileTooLarge)])
def test_rejected_uploads_leave_no_file(tmp_path, data, error):
    store = UploadStore(tmp_path, max_bytes=1000)
    with pytest.raises(error):
        store.stage(io.BytesIO(data))
    assert list(tmp_path.iterdir()) == []


def test_path_of_refuses_foreign_names(tmp_path):
    store = UploadStore(tmp_path, max_bytes=10)
    for bad in ("../etc/passwd", ".hidden", "a/b.png"):
        with pytest.raises(ValueError):
            store.path_of(bad)
