"""Decode bombs through the API and a real worker: refused at submit, or bounded in the worker.

The security review's files: a progressive JPEG repeating one scan 20,000 times (42 s in
the web request and again in the worker), a 70 KB WebP with a 6300x6300 canvas (612 MB
per upload in the web process), truncated files, and files whose headers are fine but
whose pixels are not.
"""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image
from sqlalchemy import select

from bench.bombs import progressive_scan_bomb
from imgsvc import create_app
from imgsvc.images import MAX_JPEG_SCANS
from imgsvc.queue.worker import ImgsvcWorker
from imgsvc.storage import jobs
from imgsvc.storage.db import db
from tests.conftest import image_bytes


def submit(client, data: bytes, name: str = "upload.bin"):
    return client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(data), name, "application/octet-stream")},
        content_type="multipart/form-data",
    )


def rows(app) -> dict[str, jobs.Job]:
    with app.app_context():
        found = {row.id: row for row in db.session.scalars(select(jobs.Job))}
        db.session.expunge_all()
        return found


def broken_pixels_png() -> bytes:
    """Headers and chunk structure intact, the compressed pixels garbage."""
    data = bytearray(image_bytes("PNG"))
    at = data.index(b"IDAT")
    (length,) = struct.unpack_from(">I", data, at - 4)
    data[at + 4 : at + 4 + length] = b"\xff" * length
    return bytes(data)


def test_scan_bomb_is_refused_at_submit_without_decoding(client, app, scan_bomb):
    response = submit(client, scan_bomb)
    assert response.status_code == 413, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "image_too_large" and "scans" in error["message"]
    assert rows(app) == {} and app.task_queue.count == 0
    assert [p.name for p in app.uploads.root.iterdir()] == []  # the staged file is gone too


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_truncated_upload_is_415_at_submit(client, fmt):
    buffer = io.BytesIO()
    Image.effect_noise((128, 96), 60).convert("RGB").save(buffer, fmt)
    data = buffer.getvalue()
    response = submit(client, data[: len(data) // 2])
    assert response.status_code == 415, response.get_json()
    assert "truncated" in response.get_json()["error"]["message"]


def test_bombs_that_pass_the_header_check_fail_alone_and_for_good_in_the_worker(
    settings, tiny_describer, webp_bomb
):
    """A 6300x6300 WebP is a legal size; decoding it costs ~650 MB, so under a 400 MB budget it
    fails, and a broken PNG fails at its first try: neither is retried, nor spoils its batch."""
    app = create_app(settings.with_(decode_memory_mb=400, batch_size=4, task_max_retries=3))
    client = app.test_client()
    ids = {
        "webp": submit(client, webp_bomb).get_json()["job_id"],
        "broken": submit(client, broken_pixels_png()).get_json()["job_id"],
        "fine": submit(client, image_bytes("PNG")).get_json()["job_id"],
        "fine too": submit(client, image_bytes("JPEG")).get_json()["job_id"],
    }
    worker = ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer)
    worker.work(burst=True)

    final = rows(app)
    by_name = {name: final[job_id] for name, job_id in ids.items()}
    assert by_name["fine"].status == by_name["fine too"].status == jobs.Status.DONE
    for name in ("webp", "broken"):
        assert by_name[name].status == jobs.Status.FAILED and by_name[name].attempts == 1, name
    assert "DECODE_MEMORY_MB=400" in by_name["webp"].error or "cannot decode" in by_name["webp"].error
    assert "cannot be decoded" in by_name["broken"].error
    assert worker.runtime.decoder.starts == 1  # failures inside the budget need no restart
    # the failed jobs' uploads are kept until UPLOAD_RETENTION (for a requeue), and RQ failed them too
    assert sorted(p.name for p in app.uploads.root.iterdir()) == sorted(
        row.upload_name for row in final.values()
    )
    assert set(app.task_queue.failed_job_registry.get_job_ids()) == {ids["webp"], ids["broken"]}


def test_an_image_over_the_decode_deadline_fails_its_job_only(settings, tiny_describer, scan_bomb):
    app = create_app(settings.with_(decode_timeout=1, task_max_retries=3))
    client = app.test_client()
    slow = submit(client, progressive_scan_bomb(6000, MAX_JPEG_SCANS - 9)).get_json()["job_id"]
    fine = submit(client, image_bytes("PNG")).get_json()["job_id"]
    # 100 scans of a 6000x6000 image decode in well under a second on a quiet machine; make
    # this one slow for sure by letting the check pass a file it would otherwise refuse.
    with app.app_context():
        row = jobs.get_job(slow)
        app.uploads.path_of(row.upload_name).write_bytes(scan_bomb)
    worker = ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer)
    worker.work(burst=True)

    final = rows(app)
    assert final[fine].status == jobs.Status.DONE
    assert final[slow].status == jobs.Status.FAILED and final[slow].attempts == 1
    assert "DECODE_TIMEOUT=1 s" in final[slow].error
    assert worker.runtime.decoder.starts == 2


def test_a_decoder_that_cannot_start_retries_the_job_instead_of_failing_it(
    settings, tiny_describer, monkeypatch
):
    import os
    import signal
    import sys

    app = create_app(settings.with_(task_max_retries=1, task_retry_delay=0))
    job_id = submit(app.test_client(), image_bytes("PNG")).get_json()["job_id"]
    worker = ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer)
    runtime = worker.load_runtime()  # the child starts here
    os.kill(runtime.decoder.decoders[0]._child.pid, signal.SIGKILL)
    runtime.decoder.decoders[0]._child.wait()
    monkeypatch.setattr(sys, "executable", "/bin/false")  # and cannot be started again
    worker.work(burst=True)

    row = rows(app)[job_id]
    assert row.status == jobs.Status.FAILED and row.attempts == 2  # both tries, as for any fault
    assert "DecoderUnavailable" in row.error and "cannot decode" not in row.error
