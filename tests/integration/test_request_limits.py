"""What a request may carry and who may read what (issue 23, rows 4, 6 and 10), through the app."""

from __future__ import annotations

import io

import pytest

import imgsvc.web
from imgsvc import create_app
from tests.integration.test_api import submit


@pytest.fixture()
def staged(monkeypatch) -> list[object]:
    """Every staging file the request parser opens (each one an open temp file)."""
    opened: list[object] = []
    real = imgsvc.web.StagingFile

    def counting(*args, **kwargs):
        opened.append(real(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(imgsvc.web, "StagingFile", counting)
    return opened


def many_parts(count: int, name: str = "file") -> bytes:
    boundary = "parts"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="p"\r\n\r\nx\r\n'
    return (part * count + f"--{boundary}--\r\n").encode()


def post_form(client, path: str, body: bytes):
    return client.post(path, data=body, content_type="multipart/form-data; boundary=parts")


# -- row 6: form parts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/v1/submit", "/api/v1/batch"])
def test_a_form_of_1500_parts_is_refused_for_its_parts_before_they_are_staged(client, staged, path):
    response = post_form(client, path, many_parts(1500))
    assert response.status_code == 413
    error = response.get_json()["error"]
    assert error["code"] == "too_many_form_parts"
    assert error["message"].startswith("the form has more than 25 parts; the limit is 25")
    assert len(staged) <= 25


def test_the_part_limit_follows_max_batch_files_and_max_form_parts(settings, redis_db):
    assert settings.form_parts_limit == settings.max_batch_files + 5
    client = create_app(settings.with_(max_form_parts=3)).test_client()
    assert (
        post_form(client, "/api/v1/batch", many_parts(4)).get_json()["error"]["code"] == "too_many_form_parts"
    )
    assert post_form(client, "/api/v1/batch", many_parts(3)).status_code == 400  # parsed: "x" is no image


def test_a_full_batch_with_its_fields_is_within_the_part_limit(client, settings, jpeg_bytes):
    files = [(io.BytesIO(jpeg_bytes + bytes([n])), f"{n}.jpg") for n in range(settings.max_batch_files)]
    response = client.post(
        "/api/v1/batch",
        data={"file": files, "options": "{}", "callback_url": ""},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["accepted"] == settings.max_batch_files


def test_a_file_part_under_another_name_is_refused_before_it_is_staged(client, staged):
    response = post_form(client, "/api/v1/submit", many_parts(1, name="image"))
    assert response.status_code == 400
    assert response.get_json()["error"]["message"] == "a file can only be sent in the form field 'file'"
    assert staged == []
    assert submit(client, b"not an image").status_code == 415  # the field named file is parsed as before


# -- row 10: nosniff, and who reads /metrics and /readyz ---------------------------------------------
def test_every_response_says_nosniff(settings, redis_db):
    client = create_app(settings.with_(rq_dashboard_username="ops", rq_dashboard_password="pw")).test_client()
    responses = {
        "healthz": client.get("/healthz"),
        "readyz": client.get("/readyz"),
        "metrics": client.get("/metrics"),
        "jobs": client.get("/api/v1/jobs"),
        "page": client.get("/"),
        "openapi": client.get("/openapi.json"),
        "no such route": client.get("/nowhere"),
        "415": submit(client, b"%PDF-1.4 not an image"),
        "413": post_form(client, "/api/v1/submit", many_parts(100)),
        "dashboard 401": client.get("/rq/"),
    }
    assert {name: r.headers.get("X-Content-Type-Options") for name, r in responses.items()} == dict.fromkeys(
        responses, "nosniff"
    )


def test_the_standalone_dashboard_says_nosniff(monkeypatch, settings):
    from imgsvc.web.dashboard import create_dashboard_app

    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("RQ_DASHBOARD_USERNAME", "ops")
    monkeypatch.setenv("RQ_DASHBOARD_PASSWORD", "pw")
    client = create_dashboard_app().test_client()
    assert client.get("/rq/").headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/rq/", auth=("ops", "pw")).headers["X-Content-Type-Options"] == "nosniff"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("api_keys", "metrics_token", "headers", "open_"),
    [
        ((), "", {}, True),  # development: nothing configured, nothing to hide behind
        (("alpha",), "", {}, False),
        (("alpha",), "", bearer("alpha"), False),  # an API key is a client's, not an operator's
        (("alpha",), "m-token", bearer("m-token"), True),
        (("alpha",), "m-token", bearer("alpha"), False),
        (("alpha",), "m-token", {"X-API-Key": "m-token"}, True),
        ((), "m-token", {}, False),
        ((), "m-token", bearer("m-token"), True),
        ((), "m-token", bearer("m-tokeN"), False),
        ((), "m-token", bearer("ünïcode"), False),
    ],
)
def test_metrics_and_readiness_details_are_for_operators(
    settings, redis_db, api_keys, metrics_token, headers, open_
):
    client = create_app(settings.with_(api_keys=api_keys, metrics_token=metrics_token)).test_client()
    metrics = client.get("/metrics", headers=headers)
    ready = client.get("/readyz", headers=headers)
    assert (
        ready.status_code == 503 and ready.get_json()["status"] == "not ready"
    )  # no worker: probes still see it
    if open_:
        assert metrics.status_code == 200 and "imgsvc_" in metrics.get_data(as_text=True)
        assert ready.get_json()["checks"]["workers"] == 0
    else:
        assert metrics.status_code == 401
        assert metrics.get_json()["error"]["message"].startswith("metrics need METRICS_TOKEN")
        assert "checks" not in ready.get_json()


# -- row 4: daily quotas per key and per address ---------------------------------------------------------
def distinct_jpegs(jpeg_bytes: bytes, count: int) -> list[bytes]:
    """Distinct images of the same size: a one-byte comment (COM) segment each, after SOI.
    (Padding after the end would not do: it is cut off, and the copies are one image.)"""
    return [jpeg_bytes[:2] + b"\xff\xfe\x00\x03" + bytes([n]) + jpeg_bytes[2:] for n in range(count)]


def test_a_client_over_its_daily_jobs_quota_gets_429_with_retry_after(settings, redis_db, jpeg_bytes):
    client = create_app(settings.with_(quota_jobs_per_day=2)).test_client()
    images = distinct_jpegs(jpeg_bytes, 3)
    assert submit(client, b"not an image").status_code == 415  # refused files count nothing
    assert [submit(client, image).status_code for image in images[:2]] == [202, 202]
    refused = submit(client, images[2])
    assert refused.status_code == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 24 * 3600
    error = refused.get_json()["error"]
    assert error["code"] == "too_many_requests"
    assert error["message"] == "this client's daily quota of 2 jobs is used up; it resets at midnight UTC"
    other = {"REMOTE_ADDR": "127.0.0.2"}  # another address has its own quota
    assert (
        client.post(
            "/api/v1/submit",
            data={"file": (io.BytesIO(images[2]), "x.jpg")},
            content_type="multipart/form-data",
            environ_base=other,
        ).status_code
        == 202
    )


def test_the_bytes_quota_counts_stored_bytes(settings, redis_db, jpeg_bytes):
    client = create_app(settings.with_(quota_bytes_per_day=len(jpeg_bytes) * 5 // 2)).test_client()
    first, second, third = distinct_jpegs(jpeg_bytes, 3)
    assert [submit(client, first).status_code, submit(client, second).status_code] == [202, 202]
    refused = submit(client, third)
    assert (
        refused.status_code == 429 and "bytes of uploads is used up" in refused.get_json()["error"]["message"]
    )


def test_the_bytes_quota_charges_the_image_not_what_was_appended_to_it(settings, redis_db, jpeg_bytes):
    """Row 4: a small JPEG + 9 MB of zeros stores, and is charged, the JPEG's bytes only."""
    images = distinct_jpegs(jpeg_bytes, 3)
    client = create_app(settings.with_(quota_bytes_per_day=len(images[0]) * 2)).test_client()
    padded = [image + bytes(9 * 1024 * 1024) for image in images]
    assert [submit(client, image).status_code for image in padded[:2]] == [202, 202]
    stored = sorted(path.read_bytes() for path in settings.upload_dir.glob("*.jpg"))
    assert stored == sorted(images[:2])
    assert submit(client, padded[2]).status_code == 429  # the quota is used up by two images' bytes


def test_quotas_are_per_valid_key(settings, redis_db, jpeg_bytes):
    client = create_app(settings.with_(quota_jobs_per_day=1, api_keys=("alpha", "beta"))).test_client()
    images = distinct_jpegs(jpeg_bytes, 3)

    def send(key: str, image: bytes) -> int:
        data = {"file": (io.BytesIO(image), "x.jpg")}
        return client.post(
            "/api/v1/submit", data=data, content_type="multipart/form-data", headers={"X-API-Key": key}
        ).status_code

    assert [send("alpha", images[0]), send("alpha", images[1]), send("beta", images[2])] == [202, 429, 202]


def test_a_client_over_its_quota_is_refused_before_its_upload_is_staged(
    settings, redis_db, jpeg_bytes, staged
):
    client = create_app(settings.with_(quota_jobs_per_day=1)).test_client()
    assert submit(client, jpeg_bytes).status_code == 202
    staged.clear()
    assert submit(client, distinct_jpegs(jpeg_bytes, 1)[0]).status_code == 429
    assert staged == []


def test_a_batch_takes_what_the_quota_allows(settings, redis_db, jpeg_bytes):
    client = create_app(settings.with_(quota_jobs_per_day=3)).test_client()
    files = [(io.BytesIO(image), f"{n}.jpg") for n, image in enumerate(distinct_jpegs(jpeg_bytes, 5))]
    body = client.post("/api/v1/batch", data={"file": files}, content_type="multipart/form-data").get_json()
    assert body["accepted"] == 3
    assert [job.get("status") or job["error"]["status"] for job in body["jobs"]] == ["queued"] * 3 + [
        429,
        429,
    ]
    again = {"file": (io.BytesIO(distinct_jpegs(jpeg_bytes, 10)[9]), "again.jpg")}
    assert client.post("/api/v1/batch", data=again, content_type="multipart/form-data").status_code == 429


# -- row 1: one header-check budget per request -------------------------------------------------------
def test_the_files_of_one_request_share_one_header_check_deadline(
    settings, redis_db, jpeg_bytes, monkeypatch
):
    import time

    import imgsvc.submissions

    deadlines: list[float] = []
    real = imgsvc.submissions.inspect_image

    def recording(path, max_pixels, max_frames, deadline):
        deadlines.append(deadline)
        return real(path, max_pixels, max_frames, deadline)

    monkeypatch.setattr(imgsvc.submissions, "inspect_image", recording)
    client = create_app(settings.with_(header_check_ms=1500)).test_client()
    files = [(io.BytesIO(image), f"{n}.jpg") for n, image in enumerate(distinct_jpegs(jpeg_bytes, 3))]
    started = time.monotonic()
    assert (
        client.post("/api/v1/batch", data={"file": files}, content_type="multipart/form-data").status_code
        == 202
    )
    assert len(deadlines) == 3 and len(set(deadlines)) == 1
    assert started < deadlines[0] - 1.5 <= time.monotonic()
    assert submit(client, jpeg_bytes).status_code == 202
    assert deadlines[-1] > deadlines[0]  # a new request, a new budget


def test_a_request_past_its_header_check_budget_is_413(settings, redis_db, jpeg_bytes, monkeypatch):
    import imgsvc.submissions

    real = imgsvc.submissions.inspect_image
    monkeypatch.setattr(
        imgsvc.submissions, "inspect_image", lambda p, px, fr, deadline: real(p, px, fr, deadline - 60)
    )
    client = create_app(settings.with_(header_check_ms=1000)).test_client()
    refused = submit(client, jpeg_bytes)
    assert refused.status_code == 413
    assert "ran out of its time budget" in refused.get_json()["error"]["message"]
