"""Infrastructure faults under a request are 503 + Retry-After, name no address, and leave nothing behind.

Each fault is real where the kernel can make it so for root: a SQLite write lock held by another
connection, writes that land on /dev/full (ENOSPC), a directory the kernel refuses (EACCES on /sys).
Only a read-only file system (EROFS) is injected.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import sqlite3
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import event

from imgsvc import create_app
from imgsvc.storage.db import db
from imgsvc.web.auth import owner_of
from tests.integration.test_api import row_count


def submit(client, data: bytes, **fields: str):
    return client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(data), "x.jpg"), **fields},
        headers={"X-API-Key": "alpha"},
        content_type="multipart/form-data",
    )


def uploads_left(settings) -> list[Path]:
    """Every file in UPLOAD_DIR, the hidden staging files included."""
    return sorted(settings.upload_dir.iterdir())


def assert_unavailable(response, code: str) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert int(response.headers["Retry-After"]) > 0
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"].endswith("is unavailable; retry shortly")


@pytest.fixture()
def keyed_app(settings):
    app = create_app(settings.with_(api_keys=("alpha",), webhook_allow_private=True))
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_sqlite_locked_past_busy_timeout_is_503_and_its_log_hides_the_parameters(
    keyed_app, settings, jpeg_bytes, caplog
):
    with keyed_app.app_context():  # wait 0.2 s for the lock, not 10 s
        engine = db.engine
        event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA busy_timeout=200"))
        engine.dispose()
    callback_url = "http://127.0.0.1:9/secret-token-4f2a"
    locker = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"))
    locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with caplog.at_level(logging.WARNING, logger="imgsvc.web"):
            response = submit(keyed_app.test_client(), jpeg_bytes, callback_url=callback_url)
    finally:
        locker.rollback()
        locker.close()
    assert_unavailable(response, "database_unavailable")
    assert "locked" not in response.get_data(as_text=True)
    assert row_count(keyed_app) == 0 and uploads_left(settings) == []
    (record,) = [r for r in caplog.records if r.getMessage() == "service unavailable"]
    assert "database is locked" in record.error and "parameters hidden" in record.error
    logged = "\n".join(str(vars(r)) for r in caplog.records)
    assert callback_url not in logged and owner_of("alpha") not in logged


def test_a_full_upload_disk_is_503_and_leaves_no_file(keyed_app, settings, jpeg_bytes, monkeypatch):
    create_temp = tempfile.mkstemp

    def on_a_full_disk(*args, **kwargs):
        fd, path = create_temp(*args, **kwargs)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, fd)  # every write to the staged file now fails with ENOSPC
        os.close(full)
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", on_a_full_disk)
    response = submit(keyed_app.test_client(), jpeg_bytes)
    assert_unavailable(response, "storage_unavailable")
    assert str(settings.upload_dir) not in response.get_data(as_text=True)
    assert row_count(keyed_app) == 0 and uploads_left(settings) == []


def test_an_upload_dir_the_kernel_refuses_is_503(settings, jpeg_bytes):
    """/sys refuses new files even to root (EACCES; EROFS where it is mounted read-only)."""
    app = create_app(settings.with_(api_keys=("alpha",), upload_dir=Path("/sys")))
    client = app.test_client()
    assert_unavailable(submit(client, jpeg_bytes), "storage_unavailable")
    batch = client.post(
        "/api/v1/batch",
        data={"file": [(io.BytesIO(jpeg_bytes), "a.jpg"), (io.BytesIO(jpeg_bytes), "b.jpg")]},
        headers={"X-API-Key": "alpha"},
        content_type="multipart/form-data",
    )
    assert_unavailable(batch, "storage_unavailable")  # the disk's fault, not the files': not a 400
    assert row_count(app) == 0


def test_a_read_only_upload_dir_at_commit_is_503_and_the_staged_file_goes(
    keyed_app, settings, jpeg_bytes, monkeypatch
):
    def read_only(self, target):
        raise OSError(errno.EROFS, "Read-only file system", str(target))

    monkeypatch.setattr(Path, "rename", read_only)
    assert_unavailable(submit(keyed_app.test_client(), jpeg_bytes), "storage_unavailable")
    assert row_count(keyed_app) == 0 and uploads_left(settings) == []
