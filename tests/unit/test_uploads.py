"""The upload store streams, limits, hashes and names files itself."""

from __future__ import annotations

import hashlib
import io

import pytest

from imgsvc.errors import EmptyFile, FileTooLarge
from imgsvc.storage.uploads import UploadStore, client_filename


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


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("holiday.jpg", "holiday.jpg"),
        ("C:\\Users\\me\\Pictures\\cat.png", "cat.png"),  # old browsers send the whole path
        ("../../etc/passwd", "passwd"),
        ("two\r\nlines\x00.png", "twolines.png"),
        ("invoice\u202egnp.exe", "invoicegnp.exe"),  # a right-to-left override hides the real extension
        ("Cafe\u0301.jpg", "Caf\u00e9.jpg"),  # one spelling of the same name
        ("<img src=x onerror=alert(1)>.png", "<img src=x onerror=alert(1)>.png"),  # text, kept as text
        ("x" * 300 + ".jpeg", "x" * 250 + ".jpeg"),
        ("   ", None),
        ("..", None),
        ("", None),
        (None, None),
    ],
)
def test_client_filename_keeps_a_short_safe_basename(raw, kept):
    assert client_filename(raw) == kept
