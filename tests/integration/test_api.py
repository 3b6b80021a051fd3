"""Submit -> RQ (real Redis) -> worker (real model) -> SQL -> result, through HTTP."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from imgsvc import create_app
from imgsvc.config import PROJECT_ROOT
from imgsvc.storage import jobs
from imgsvc.storage.db import db
from imgsvc.vision.base import Describer
from tests.conftest import TEST_POSTGRES_URL, image_bytes, worker_env

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def submit(client, data: bytes, filename: str = "photo.jpg", content_type: str = "image/jpeg"):
    return client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(data), filename, content_type)},
        content_type="multipart/form-data",
    )


def stored_files(settings) -> list[Path]:
    return sorted(p for p in settings.upload_dir.glob("*") if p.is_file())


def row_count(app) -> int:
    with app.app_context():
        return db.session.query(jobs.Job).count()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_image_goes_from_submit_to_described_result(client, settings, run_worker, tiny_model_dir, fmt):
    response = submit(client, image_bytes(fmt), filename="../../etc/passwd", content_type="text/plain")
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "queued" and body["message"] == "Job submitted successfully"
    job_id = body["job_id"]
    assert str(uuid.UUID(job_id)) == job_id
    assert response.headers["Location"].endswith(f"/api/v1/status/{job_id}")

    status = client.get(f"/api/v1/status/{job_id}").get_json()
    assert status["status"] == "queued" and ISO_UTC.match(status["created_at"])
    pending = client.get(f"/api/v1/result/{job_id}")
    assert pending.status_code == 202 and pending.get_json()["status"] == "queued"

    run_worker()

    assert client.get(f"/api/v1/status/{job_id}").get_json()["status"] == "done"
    result = client.get(f"/api/v1/result/{job_id}")
    assert result.status_code == 200
    data = result.get_json()
    assert data["job_id"] == job_id and data["status"] == "done"
    assert isinstance(data["image_description"], str) and data["image_description"].strip()
    assert data["generated_by"] == str(tiny_model_dir)
    assert ISO_UTC.match(data["created_at"]) and ISO_UTC.match(data["completed_at"])
    assert data["completed_at"] >= data["created_at"]
    started = client.get(f"/api/v1/status/{job_id}").get_json()["started_at"]
    assert data["created_at"] <= started <= data["completed_at"]
    # stored under a server-chosen name, never the client's
    (stored,) = stored_files(settings)
    assert re.fullmatch(r"[0-9a-f]{32}\.(jpg|png|webp|gif|bmp|tiff)", stored.name)


def test_description_comes_from_the_model(client, run_worker, tiny_describer):
    """The stored text is exactly what the loaded model says for that image."""
    data = image_bytes("PNG", size=(80, 60), color=(10, 120, 200))
    job_id = submit(client, data, "a.png", "image/png").get_json()["job_id"]
    run_worker()
    expected = tiny_describer.describe([Image.open(io.BytesIO(data)).convert("RGB")])[0]
    assert client.get(f"/api/v1/result/{job_id}").get_json()["image_description"] == expected


def test_missing_file_field_is_400(client, app, settings):
    response = client.post("/api/v1/submit", data={"other": "x"}, content_type="multipart/form-data")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "missing_file"
    response = client.post("/api/v1/submit", json={"file": "abc"})
    assert response.status_code == 400
    assert row_count(app) == 0 and stored_files(settings) == []


def test_empty_file_is_400(client, app, settings):
    response = submit(client, b"")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "empty_file"
    assert row_count(app) == 0 and stored_files(settings) == []


@pytest.mark.parametrize(
    ("payload", "detected"),
    [
        (b"this is plain text, not a picture" * 10, "plain text"),
        (b"%PDF-1.4\n" + b"0" * 500, "a PDF document"),
        (b"<!doctype html><title>Sign in</title>", "an HTML document"),
        (b"<svg xmlns='http://www.w3.org/2000/svg' width='9' height='9'/>", "an SVG image"),
        (b"PK\x03\x04" + bytes(200), "a ZIP archive"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(100), "a HEIC image"),
        (bytes(range(7, 256)) * 2, "unknown binary data"),
    ],
    ids=["text", "pdf", "html", "svg", "zip", "heic", "binary"],
)
def test_non_image_is_415_and_says_what_the_file_is(client, app, settings, payload, detected):
    response = submit(client, payload, filename="holiday.jpg", content_type="image/jpeg")
    assert response.status_code == 415
    error = response.get_json()["error"]
    assert error["code"] == "unsupported_media_type" and error["detected"] == detected
    assert (
        error["message"] == f"the file is {detected}; accepted formats are JPEG, PNG, WebP, GIF, BMP and TIFF"
    )
    assert row_count(app) == 0 and stored_files(settings) == []


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (image_bytes("JPEG")[:300], "a JPEG segment ends past the end of the file (truncated file)"),
        (image_bytes("PNG")[:-40], "a PNG chunk ends past the end of the file (truncated file)"),
    ],
    ids=["truncated-jpeg", "truncated-png"],
)
def test_broken_image_is_415_whatever_the_name_says(client, app, settings, payload, reason):
    response = submit(client, payload, filename="holiday.jpg", content_type="image/jpeg")
    assert response.status_code == 415
    error = response.get_json()["error"]
    assert error["code"] == "unsupported_media_type"
    assert error["message"] == f"the file cannot be read as an image: {reason}"
    assert str(settings.upload_dir) not in error["message"]  # no server paths in errors
    assert row_count(app) == 0 and stored_files(settings) == []


def test_disallowed_format_is_415(client, app, settings):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="ICO")
    response = submit(client, buf.getvalue(), "x.ico", "image/x-icon")
    assert response.status_code == 415
    assert response.get_json()["error"]["message"].startswith("the file is an ICO icon; accepted formats are")
    assert row_count(app) == 0


def test_file_over_limit_is_413_json(settings, redis_db):
    app = create_app(settings.with_(max_file_size=2000))
    client = app.test_client()
    response = submit(client, image_bytes("BMP", size=(64, 64)))  # ~12 KB, body still under the request cap
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "file_too_large"
    huge = submit(client, b"\xff" * 200_000)  # over MAX_CONTENT_LENGTH: refused before parsing
    assert huge.status_code == 413 and huge.is_json
    assert row_count(app) == 0 and stored_files(settings) == []


MB = 1024 * 1024


def test_too_large_reads_the_same_for_submit_and_batch_and_names_the_size(settings, redis_db):
    """The page's own wording ("this file is 10.5 MB; the limit is 10 MB") wherever the check happens."""
    app = create_app(settings.with_(max_file_size=MB))
    client = app.test_client()

    refused_before_parsing = submit(client, b"\xff" * (MB + MB // 2))  # over the whole-request cap
    streamed_then_refused = submit(client, b"\xff" * (MB + 10 * 1024))  # under the cap, over the file limit
    batch = client.post(
        "/api/v1/batch",
        data={
            "file": [(io.BytesIO(b"\xff" * (MB + MB // 2)), "big.jpg"), (io.BytesIO(image_bytes()), "ok.jpg")]
        },
        content_type="multipart/form-data",
    )

    assert refused_before_parsing.status_code == 413 == streamed_then_refused.status_code
    assert refused_before_parsing.get_json()["error"]["message"] == "this file is 1.5 MB; the limit is 1 MB"
    # Just over: rounded to tenths the two sizes would read the same, so both are in bytes.
    assert streamed_then_refused.get_json()["error"]["message"] == (
        f"this file is {MB + 10 * 1024} bytes; the limit is {MB} bytes"
    )
    big, ok = batch.get_json()["jobs"]
    assert big["error"]["code"] == "file_too_large" and "job_id" in ok
    assert big["error"]["message"] == "this file is 1.5 MB; the limit is 1 MB"
    assert big["error"]["size_bytes"] == MB + MB // 2 and big["error"]["max_bytes"] == MB


def test_decompression_bomb_is_refused_before_decoding(client, app, settings):
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, format="PNG")  # 144 Mpx in a few KB
    assert len(bomb.getvalue()) < 100_000
    response = submit(client, bomb.getvalue(), "bomb.png", "image/png")
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "image_too_large"
    assert row_count(app) == 0 and stored_files(settings) == []


def png_of(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 160, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_max_image_pixels_is_enforced_at_submit(settings, redis_db):
    """A limit far below Pillow's own (~89 Mpx), so only imgsvc's check can refuse."""
    app = create_app(settings.with_(max_image_pixels=10_000))
    client = app.test_client()
    response = submit(client, png_of(200, 100), "wide.png", "image/png")  # 20,000 pixels
    assert response.status_code == 413
    error = response.get_json()["error"]
    assert error["code"] == "image_too_large" and "10000" in error["message"]
    assert row_count(app) == 0 and stored_files(settings) == []
    assert submit(client, png_of(100, 100), "square.png", "image/png").status_code == 202  # exactly the limit


class Seeing(Describer):
    """The real model, remembering every image it was handed and counting its forward passes."""

    def __init__(self, inner: Describer) -> None:
        self.inner = inner
        self.name = inner.name
        self.supported_options = inner.supported_options
        self.images: list[Image.Image] = []

    def describe_full(self, images, options=None):
        self.images += [image.copy() for image in images]
        return self.inner.describe_full(images, options)


def test_worker_refuses_an_image_over_its_own_pixel_limit(settings, redis_db, tiny_describer):
    """Accepted at submit under one MAX_IMAGE_PIXELS, refused by a worker running a smaller one."""
    web = create_app(settings)
    job_id = submit(web.test_client(), png_of(200, 100), "wide.png", "image/png").get_json()["job_id"]
    worker_app = create_app(settings.with_(max_image_pixels=10_000))
    seeing = Seeing(tiny_describer)
    from imgsvc.queue.worker import ImgsvcWorker

    ImgsvcWorker([worker_app.task_queue], connection=worker_app.redis, app=worker_app, describer=seeing).work(
        burst=True
    )
    status = web.test_client().get(f"/api/v1/status/{job_id}").get_json()
    assert status["status"] == "failed" and status["attempts"] == 1  # no retry can fix it
    assert "pixels" in status["error"]
    assert seeing.images == []
    assert len(stored_files(settings)) == 1  # kept until UPLOAD_RETENTION, for a requeue from RQ


def test_an_animated_gif_is_described_from_its_first_frame(client, settings, run_worker, tiny_describer):
    first = Image.new("RGB", (64, 48), (230, 20, 20))
    later = Image.new("RGB", (32, 16), (20, 20, 230))  # smaller, in the top-left corner
    buf = io.BytesIO()
    first.save(buf, format="GIF", save_all=True, append_images=[later], duration=100, loop=0)
    job_id = submit(client, buf.getvalue(), "anim.gif", "image/gif").get_json()["job_id"]
    seeing = Seeing(tiny_describer)
    run_worker(describer=seeing)
    (seen,) = seeing.images
    assert seen.size == (64, 48)
    (red_low, _), _, (_, blue_high) = seen.getextrema()
    assert red_low > 200 and blue_high < 60  # red everywhere: no pixel of the later, blue frame
    result = client.get(f"/api/v1/result/{job_id}").get_json()
    assert result["image"] == {"format": "GIF", "width": 64, "height": 48}
    assert result["image_description"] == tiny_describer.describe([first])[0]


@pytest.mark.parametrize("route", ["status", "result"])
@pytest.mark.parametrize(
    "job_id", ["6dad5cc4-598c-4c7b-bcbe-08b059fc2395", "not-a-uuid", "1' OR '1'='1", "..%2F..%2Fetc"]
)
def test_unknown_or_malformed_job_id_is_404(client, route, job_id):
    response = client.get(f"/api/v1/{route}/{job_id}")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_redis_down_at_submit_is_503_and_leaves_nothing(settings, redis_db, jpeg_bytes):
    app = create_app(settings.with_(redis_url="redis://127.0.0.1:1/0"))
    response = submit(app.test_client(), jpeg_bytes)
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "queue_unavailable"
    assert row_count(app) == 0 and stored_files(settings) == []


def test_unknown_route_and_method_are_json(client):
    assert client.get("/api/v1/nope").get_json()["error"]["status"] == 404
    response = client.get("/api/v1/submit")
    assert response.status_code == 405 and response.is_json


class ExplodingDescriber(Describer):
    """A model whose forward pass raises, as an out-of-memory or a driver error would."""

    name = "exploding"

    def __init__(self) -> None:
        self.calls = 0

    def describe_full(self, images, options=None):
        self.calls += 1
        raise RuntimeError("CUDA error: device-side assert")


@pytest.mark.parametrize("retries", [1, 2])
def test_model_error_is_retried_then_failed(settings, redis_db, jpeg_bytes, retries):
    app = create_app(settings.with_(task_max_retries=retries))
    client = app.test_client()
    job_id = submit(client, jpeg_bytes).get_json()["job_id"]
    from imgsvc.queue.worker import ImgsvcWorker

    describer = ExplodingDescriber()
    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=describer).work(burst=True)

    assert describer.calls == retries + 1  # the first try and TASK_MAX_RETRIES retries
    status = client.get(f"/api/v1/status/{job_id}").get_json()
    assert status["status"] == "failed" and status["attempts"] == retries + 1
    assert "device-side assert" in status["error"]
    result = client.get(f"/api/v1/result/{job_id}")
    assert result.status_code == 422 and result.get_json()["status"] == "failed"
    assert result.get_json()["message"] == "the job failed; its error says why"


class FailsOnce(Describer):
    """The first forward pass raises (a transient fault); later ones are the real model's."""

    def __init__(self, inner: Describer) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls = 0

    def describe_full(self, images, options=None):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("CUDA out of memory")
        return self.inner.describe_full(images, options)


def test_a_retry_waits_task_retry_delay(settings, redis_db, tiny_describer, jpeg_bytes):
    app = create_app(settings.with_(task_max_retries=2, task_retry_delay=3600))
    client = app.test_client()
    job_id = submit(client, jpeg_bytes).get_json()["job_id"]
    from imgsvc.queue.worker import ImgsvcWorker

    describer = FailsOnce(tiny_describer)
    submitted = int(time.time())  # RQ keeps whole seconds
    for _ in range(2):  # the second run has the scheduler on: the retry is still not due
        ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=describer).work(
            burst=True, with_scheduler=True
        )
    assert describer.calls == 1
    status = client.get(f"/api/v1/status/{job_id}").get_json()
    assert status["status"] == "queued" and "out of memory" in status["error"]
    due = app.task_queue.scheduled_job_registry.get_scheduled_time(job_id).timestamp()
    assert due >= submitted + 3600


def test_jobs_run_in_the_order_they_were_submitted(client, run_worker, tiny_describer):
    colors = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]
    for color in colors:
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), color).save(buf, format="PNG")
        submit(client, buf.getvalue(), "x.png", "image/png")
    seeing = Seeing(tiny_describer)
    run_worker(describer=seeing)
    assert [image.getpixel((0, 0)) for image in seeing.images] == colors


def test_a_finished_job_is_never_claimed_again(client, app, settings, run_worker, tiny_describer):
    """A job RQ hands out again (a redelivery, a second enqueue) after its row finished is skipped;
    a failed one runs again (that is what ``rq requeue`` asks for) and fails again, for the same reason."""
    done = submit(client, image_bytes("PNG", color=(1, 2, 3)), "a.png").get_json()["job_id"]
    failed = submit(client, image_bytes("PNG", color=(4, 5, 6)), "b.png").get_json()["job_id"]
    cancelled = submit(client, image_bytes("PNG", color=(7, 8, 9)), "c.png").get_json()["job_id"]
    with app.app_context():
        (settings.upload_dir / jobs.get_job(failed).upload_name).write_bytes(b"broken")
    assert client.delete(f"/api/v1/jobs/{cancelled}").get_json()["status"] == "cancelled"
    run_worker()
    ids = (done, failed, cancelled)
    before = {job_id: client.get(f"/api/v1/status/{job_id}").get_json() for job_id in ids}
    assert [before[j]["status"] for j in ids] == ["done", "failed", "cancelled"]
    description = client.get(f"/api/v1/result/{done}").get_json()["image_description"]

    from imgsvc.queue.connection import enqueue_describe

    for job_id in ids:
        enqueue_describe(app.task_queue, settings, job_id)
    seeing = Seeing(tiny_describer)
    run_worker(describer=seeing)
    assert seeing.images == []  # the broken image never reaches the model
    for job_id in (done, cancelled):
        assert client.get(f"/api/v1/status/{job_id}").get_json() == before[job_id]
    again = client.get(f"/api/v1/status/{failed}").get_json()
    assert (again["status"], again["error"], again["attempts"]) == ("failed", before[failed]["error"], 1)
    assert again["completed_at"] > before[failed]["completed_at"]
    assert client.get(f"/api/v1/result/{done}").get_json()["image_description"] == description


def test_image_that_stops_decoding_fails_at_once_without_retries(
    client, app, settings, run_worker, jpeg_bytes
):
    job_id = submit(client, jpeg_bytes).get_json()["job_id"]
    (stored,) = stored_files(settings)
    stored.write_bytes(b"garbage now")  # disk corruption between submit and work
    run_worker()
    status = client.get(f"/api/v1/status/{job_id}").get_json()
    assert status["status"] == "failed" and status["attempts"] == 1
    assert status["error"].startswith("the file is plain text; accepted formats are JPEG")
    assert status["completed_at"] >= status["created_at"]  # finished: `flask prune` will reap it


def test_postgresql_database_url_works(settings, postgres_url, run_worker, tiny_describer, png_bytes):
    from sqlalchemy import create_engine, inspect, text

    # A table named like ours where a plain URL would put ours: it must come through untouched.
    outside = create_engine(TEST_POSTGRES_URL)
    with outside.begin() as connection:
        ours = not inspect(connection).has_table("jobs", schema="public")
        if ours:
            connection.execute(text("CREATE TABLE public.jobs (note text)"))
            connection.execute(text("INSERT INTO public.jobs VALUES ('not the tests')"))
        count = "SELECT count(*) FROM public.jobs"
        rows_before = connection.execute(text(count)).scalar()
    app = create_app(settings.with_(database_url=postgres_url))
    client = app.test_client()
    try:
        job_id = submit(client, png_bytes, "a.png", "image/png").get_json()["job_id"]
        from imgsvc.queue.worker import ImgsvcWorker

        ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer).work(
            burst=True
        )
        result = client.get(f"/api/v1/result/{job_id}").get_json()
        assert result["status"] == "done" and result["image_description"].strip()
        with app.app_context():
            assert db.engine.dialect.name == "postgresql"
            db.engine.dispose()
        with outside.begin() as connection:
            assert connection.execute(text(count)).scalar() == rows_before
    finally:
        if ours:
            with outside.begin() as connection:
                connection.execute(text("DROP TABLE IF EXISTS public.jobs"))
        outside.dispose()


def run_worker_script(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "worker.py", "--burst"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_worker_script_runs_jobs_in_a_subprocess(client, settings, tiny_model_dir, jpeg_bytes):
    job_id = submit(client, jpeg_bytes).get_json()["job_id"]
    env = worker_env(settings)
    proc = run_worker_script(env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ": model loaded" in proc.stderr  # LOG_FORMAT=text, the default: a line a person reads
    result = client.get(f"/api/v1/result/{job_id}").get_json()
    assert result["status"] == "done" and result["generated_by"] == str(tiny_model_dir)


def test_worker_with_unloadable_model_exits_at_start(settings, tmp_path):
    env = worker_env(settings, VISION_MODEL=str(tmp_path / "no-such-model"))
    proc = run_worker_script(env)
    assert proc.returncode == 2
    assert "cannot load the model" in proc.stderr
