"""Beyond submit/status/result: batches, listing, cancel, options, dedupe, webhooks, keys, limits."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rq import Queue, SimpleWorker

from imgsvc import create_app
from imgsvc.queue.worker import ImgsvcWorker
from imgsvc.storage import jobs
from imgsvc.vision.base import Describer, Description
from tests.conftest import image_bytes
from tests.integration.test_api import row_count, stored_files, submit


def files(*payloads: tuple[bytes, str]) -> dict:
    return {"file": [(io.BytesIO(data), name) for data, name in payloads]}


def open_rgb(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def hmac_sha256(secret: str, body: bytes) -> str:
    """The README's signature, computed here by hand (not with the product's own code)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# -- batch -----------------------------------------------------------------------------
def test_batch_accepts_good_files_and_reports_bad_ones(client, run_worker):
    response = client.post(
        "/api/v1/batch",
        data=files((image_bytes("JPEG"), "a.jpg"), (b"not an image", "b.jpg"), (image_bytes("PNG"), "c.png")),
        content_type="multipart/form-data",
    )
    assert response.status_code == 202
    body = response.get_json()
    assert (body["accepted"], body["rejected"]) == (2, 1)
    good, bad, other = body["jobs"]
    assert good["status"] == "queued" and other["status"] == "queued"
    assert bad["error"]["code"] == "unsupported_media_type" and bad["filename"] == "b.jpg"

    run_worker()

    summary = client.get(f"/api/v1/batch/{body['batch_id']}").get_json()
    assert summary["finished"] is True and summary["counts"] == {"done": 2}
    assert {j["job_id"] for j in summary["jobs"]} == {good["job_id"], other["job_id"]}
    assert all(j["image_description"].strip() for j in summary["jobs"])
    # Each result carries the name its file was sent under, so results match files without the submit answer.
    assert {j["job_id"]: j["filename"] for j in summary["jobs"]} == {
        good["job_id"]: "a.jpg",
        other["job_id"]: "c.png",
    }


def test_the_clients_file_name_comes_back_sanitised_as_plain_json_text(client):
    # (no CR/LF or backslashes: the test client would put them into the part's header unescaped)
    hostile = "/home/me/<img src=x onerror=alert(1)>\u202egnp\x07.jpg\t"
    job_id = submit(client, image_bytes("PNG"), filename=hostile, content_type="image/png").get_json()[
        "job_id"
    ]
    queued = client.post(
        "/api/v1/batch",
        data=files((image_bytes("GIF"), "../../../x.gif")),
        content_type="multipart/form-data",
    ).get_json()["jobs"][0]
    assert queued["filename"] == "x.gif"

    listed = client.get("/api/v1/jobs")
    assert listed.mimetype == "application/json"
    names = {job["job_id"]: job["filename"] for job in listed.get_json()["jobs"]}
    assert names == {job_id: "<img src=x onerror=alert(1)>gnp.jpg", queued["job_id"]: "x.gif"}
    assert client.get(f"/api/v1/status/{job_id}").get_json()["filename"] == names[job_id]
    assert client.get(f"/api/v1/result/{job_id}").get_json()["filename"] == names[job_id]


def test_batch_of_only_bad_files_is_400(client, app):
    response = client.post(
        "/api/v1/batch", data=files((b"", "a.jpg"), (b"text", "b.txt")), content_type="multipart/form-data"
    )
    assert response.status_code == 400 and response.get_json()["accepted"] == 0
    assert row_count(app) == 0
    assert client.get("/api/v1/batch/00000000-0000-0000-0000-000000000000").status_code == 404


def test_submit_with_several_files_points_at_batch(client, app):
    response = client.post(
        "/api/v1/submit",
        data=files((image_bytes("JPEG"), "a.jpg"), (image_bytes("PNG"), "b.png")),
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "bad_request" and error["batch_url"] == "/api/v1/batch"
    assert "/api/v1/batch" in error["message"] and "has 2" in error["message"]
    assert row_count(app) == 0


def test_a_batch_summary_is_only_visible_to_the_key_that_submitted_it(settings, redis_db):
    app = create_app(settings.with_(api_keys=("alpha", "beta")))
    client = app.test_client()
    alpha, beta = {"X-API-Key": "alpha"}, {"X-API-Key": "beta"}
    batch_id = client.post(
        "/api/v1/batch",
        data=files((image_bytes("PNG"), "a.png"), (image_bytes("JPEG"), "b.jpg")),
        headers=alpha,
        content_type="multipart/form-data",
    ).get_json()["batch_id"]
    mine = client.get(f"/api/v1/batch/{batch_id}", headers=alpha)
    assert mine.status_code == 200 and mine.get_json()["counts"] == {"queued": 2}
    theirs = client.get(f"/api/v1/batch/{batch_id}", headers=beta)
    assert theirs.status_code == 404 and theirs.get_json()["error"]["code"] == "not_found"
    assert client.get(f"/api/v1/batch/{batch_id}").status_code == 401


def test_a_batch_summary_lists_its_jobs_in_the_order_of_the_files(client):
    payloads = [(image_bytes("PNG", color=(n * 50, 20, 20)), f"{n}.png") for n in range(5)]
    body = client.post("/api/v1/batch", data=files(*payloads), content_type="multipart/form-data").get_json()
    summary = client.get(f"/api/v1/batch/{body['batch_id']}").get_json()
    assert [j["job_id"] for j in summary["jobs"]] == [j["job_id"] for j in body["jobs"]]


# -- listing and cancel ------------------------------------------------------------------
def test_jobs_are_listed_newest_first_with_a_cursor(client):
    ids = [submit(client, image_bytes("PNG", color=(i, 9, 9))).get_json()["job_id"] for i in range(5)]
    first = client.get("/api/v1/jobs?limit=2").get_json()
    second = client.get(f"/api/v1/jobs?limit=2&cursor={first['next_cursor']}").get_json()
    third = client.get(f"/api/v1/jobs?limit=2&cursor={second['next_cursor']}").get_json()
    listed = [j["job_id"] for page in (first, second, third) for j in page["jobs"]]
    assert listed == ids[::-1] and third["next_cursor"] is None
    assert client.get("/api/v1/jobs?status=done").get_json()["jobs"] == []
    for bad in ("status=weird", "limit=0", "limit=abc", "cursor=%%%"):
        assert client.get(f"/api/v1/jobs?{bad}").status_code == 400


def test_cancelling_a_queued_job_removes_it_from_rq_and_a_second_delete_from_disk(
    client, settings, run_worker, jpeg_bytes
):
    job_id = submit(client, jpeg_bytes).get_json()["job_id"]
    response = client.delete(f"/api/v1/jobs/{job_id}")
    assert response.get_json() == {"job_id": job_id, "status": "cancelled", "was": "queued"}
    assert len(stored_files(settings)) == 1  # kept, as a finished job's image is: it can be retried
    run_worker()
    status = client.get(f"/api/v1/status/{job_id}").get_json()
    assert status["status"] == "cancelled" and "cancelled" in status["error"]
    assert status["completed_at"] >= status["created_at"]  # finished: `flask prune` will reap it
    result = client.get(f"/api/v1/result/{job_id}")
    assert result.status_code == 422 and result.get_json()["message"] == "the job was cancelled"
    # a finished job is deleted outright, with its image
    assert client.delete(f"/api/v1/jobs/{job_id}").get_json()["status"] == "deleted"
    assert client.get(f"/api/v1/status/{job_id}").status_code == 404
    assert stored_files(settings) == []


# -- options -------------------------------------------------------------------------------
def test_unknown_or_invalid_options_are_400(client, app):
    data = image_bytes("PNG")
    for form in ({"temperature": "2"}, {"max_length": "0"}, {"max_length": "many"}, {"options": "[1]"}):
        response = client.post(
            "/api/v1/submit",
            data={"file": (io.BytesIO(data), "x.png"), **form},
            content_type="multipart/form-data",
        )
        assert response.status_code == 400, form
    assert row_count(app) == 0


def test_an_option_the_running_model_cannot_honour_says_what_would(client, app, settings):
    from imgsvc.queue.connection import publish_model

    publish_model(app.redis, settings, "builtin:efficientnet-lite0", [])  # what the default model says
    response = client.post(
        "/api/v1/submit",
        data={
            "file": (io.BytesIO(image_bytes("PNG")), "x.png"),
            "max_length": "12",
            "prompt": "a picture of",
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["message"] == (
        "option(s) max_length, prompt not supported by the running model builtin:efficientnet-lite0, "
        "which takes none; max_length and prompt need a transformers captioner "
        "(VISION_MODEL; see docs/models.md, 'Which model runs')"
    )
    assert error["supported"] == []
    assert row_count(app) == 0


def test_max_length_option_reaches_the_model(client, run_worker, tiny_describer):
    data = image_bytes("PNG")
    short = client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(data), "x.png"), "max_length": "2"},
        content_type="multipart/form-data",
    ).get_json()["job_id"]
    long = client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(data), "x.png"), "options": json.dumps({"max_length": 12})},
        content_type="multipart/form-data",
    ).get_json()["job_id"]
    run_worker()
    short_text = client.get(f"/api/v1/result/{short}").get_json()
    long_text = client.get(f"/api/v1/result/{long}").get_json()
    assert short_text["options"] == {"max_length": 2} and long_text["options"] == {"max_length": 12}
    assert len(short_text["image_description"]) < len(long_text["image_description"])


# -- dedupe --------------------------------------------------------------------------------
def test_identical_image_is_answered_from_the_stored_result(client, settings, run_worker, jpeg_bytes):
    first = submit(client, jpeg_bytes).get_json()["job_id"]
    run_worker()  # also publishes which model the workers run
    again = submit(client, jpeg_bytes)
    body = again.get_json()
    assert again.status_code == 202 and body["status"] == "done" and body["cached"] is True
    original = client.get(f"/api/v1/result/{first}").get_json()
    cached = client.get(f"/api/v1/result/{body['job_id']}").get_json()
    assert cached["cached"] is True and original["cached"] is False
    assert cached["image_description"] == original["image_description"]
    assert cached["generated_by"] == original["generated_by"]
    # Answered at once: created, started and completed at one instant, never completed "before" created.
    with client.application.app_context():
        row = jobs.get_job(body["job_id"])
        assert row.created_at == row.started_at == row.completed_at == row.updated_at
    assert len(stored_files(settings)) == 1  # the duplicate was not stored again
    # different options are a different request
    other = client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(jpeg_bytes), "x.jpg"), "max_length": "3"},
        content_type="multipart/form-data",
    ).get_json()
    assert other["status"] == "queued"


def test_dedupe_never_answers_with_another_images_description(client, settings, run_worker, tiny_describer):
    first, second = image_bytes("PNG", color=(250, 10, 10)), image_bytes("PNG", color=(10, 10, 250))
    first_id = submit(client, first, "a.png", "image/png").get_json()["job_id"]
    run_worker()
    response = submit(client, second, "b.png", "image/png").get_json()
    assert response["status"] == "queued" and "cached" not in response
    assert len(stored_files(settings)) == 2
    run_worker()
    result = client.get(f"/api/v1/result/{response['job_id']}").get_json()
    assert result["cached"] is False
    assert result["image_description"] == tiny_describer.describe([open_rgb(second)])[0]
    # and the first image is still answered from its own result
    repeat = submit(client, first, "a.png", "image/png").get_json()
    assert repeat["cached"] is True
    assert (
        client.get(f"/api/v1/result/{repeat['job_id']}").get_json()["image_description"]
        == client.get(f"/api/v1/result/{first_id}").get_json()["image_description"]
    )


def test_dedupe_answers_only_from_a_finished_description(client, settings, run_worker, png_bytes):
    """The same bytes again while the first job waits, or after it failed: a job of its own."""
    run_worker()  # an idle worker says which model runs: dedupe is on
    waiting = submit(client, png_bytes, "a.png", "image/png").get_json()
    again = submit(client, png_bytes, "a.png", "image/png").get_json()
    assert again["status"] == "queued" and "cached" not in again
    for path in stored_files(settings):
        path.write_bytes(b"broken")  # both fail for good
    run_worker()
    assert client.get(f"/api/v1/status/{waiting['job_id']}").get_json()["status"] == "failed"
    after_failure = submit(client, png_bytes, "a.png", "image/png").get_json()
    assert after_failure["status"] == "queued" and "cached" not in after_failure


def test_with_api_keys_dedupe_answers_only_from_the_same_keys_jobs(
    settings, redis_db, tiny_describer, png_bytes
):
    app = create_app(settings.with_(api_keys=("alpha", "beta")))
    client = app.test_client()

    def send(key: str) -> dict:
        return client.post(
            "/api/v1/submit",
            data={"file": (io.BytesIO(png_bytes), "a.png")},
            headers={"X-API-Key": key},
            content_type="multipart/form-data",
        ).get_json()

    send("alpha")
    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer).work(burst=True)
    theirs = send("beta")
    assert theirs["status"] == "queued" and "cached" not in theirs  # beta learns nothing of alpha's upload
    assert send("alpha")["cached"] is True


class SecondModel(Describer):
    """Another model than the tiny BLIP: a different name and its own words."""

    name = "second-model"

    def describe_full(self, images, options=None):
        return [Description(text="a caption by the second model") for _ in images]


def test_dedupe_never_reuses_a_result_of_another_model(client, run_worker, tiny_describer, png_bytes):
    first = submit(client, png_bytes, "a.png", "image/png").get_json()["job_id"]
    run_worker()  # the tiny BLIP describes it
    assert client.get(f"/api/v1/result/{first}").get_json()["generated_by"] == tiny_describer.name
    run_worker(describer=SecondModel())  # the workers now run another model (and say so in Redis)
    again = submit(client, png_bytes, "a.png", "image/png").get_json()
    assert again["status"] == "queued" and "cached" not in again
    run_worker(describer=SecondModel())
    result = client.get(f"/api/v1/result/{again['job_id']}").get_json()
    assert result["generated_by"] == "second-model" and result["cached"] is False
    assert result["image_description"] == "a caption by the second model"


# -- webhooks ------------------------------------------------------------------------------
class Receiver(BaseHTTPRequestHandler):
    calls: list[tuple[dict, bytes]] = []
    fail_first = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Receiver.fail_first > 0:
            Receiver.fail_first -= 1
            self.send_response(503)
        else:
            Receiver.calls.append((dict(self.headers), body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def receiver():
    Receiver.calls, Receiver.fail_first = [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


def test_webhook_is_signed_and_retried_until_delivered(
    settings, redis_db, tiny_describer, receiver, jpeg_bytes
):
    app = create_app(settings.with_(webhook_allow_private=True, webhook_secret="s3cret"))
    client = app.test_client()
    job_id = client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(jpeg_bytes), "x.jpg"), "callback_url": receiver},
        content_type="multipart/form-data",
    ).get_json()["job_id"]
    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer).work(burst=True)
    Receiver.fail_first = 1  # the receiver is down for the first attempt
    hooks = Queue(settings.webhook_queue_name, connection=app.redis)
    for _ in range(3):  # burst runs; the retry is scheduled, a scheduler-enabled burst worker moves it
        SimpleWorker([hooks], connection=app.redis).work(burst=True, with_scheduler=True)
        if Receiver.calls:
            break
        time.sleep(2.1)
    (headers, body), *_ = Receiver.calls
    assert headers["X-Imgsvc-Signature"] == hmac_sha256("s3cret", body)
    payload = json.loads(body)
    assert payload["job_id"] == job_id and payload["status"] == "done"
    assert (
        payload["image_description"] == client.get(f"/api/v1/result/{job_id}").get_json()["image_description"]
    )

    # The same bytes again are answered from the stored result; its webhook's times are in order too.
    Receiver.calls.clear()
    again = client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(jpeg_bytes), "x.jpg"), "callback_url": receiver},
        content_type="multipart/form-data",
    ).get_json()
    assert again["cached"] is True
    SimpleWorker([hooks], connection=app.redis).work(burst=True, with_scheduler=True)
    (_, body), *_ = Receiver.calls
    cached = json.loads(body)
    assert cached["job_id"] == again["job_id"] and cached["cached"] is True
    assert cached["created_at"] == cached["completed_at"]


def run_webhook_worker(app, settings) -> None:
    SimpleWorker([Queue(settings.webhook_queue_name, connection=app.redis)], connection=app.redis).work(
        burst=True
    )


def test_a_failed_job_fires_its_webhook_too(settings, redis_db, tiny_describer, receiver, jpeg_bytes):
    app = create_app(settings.with_(webhook_allow_private=True, webhook_secret="k"))
    client = app.test_client()
    job_id = client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(jpeg_bytes), "x.jpg"), "callback_url": receiver},
        content_type="multipart/form-data",
    ).get_json()["job_id"]
    (stored,) = stored_files(settings)
    stored.write_bytes(b"no longer an image")  # fails for good: no retry can fix it
    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer).work(burst=True)
    assert client.get(f"/api/v1/status/{job_id}").get_json()["status"] == "failed"
    run_webhook_worker(app, settings)
    (headers, body), *_ = Receiver.calls
    payload = json.loads(body)
    assert payload["job_id"] == job_id and payload["status"] == "failed"
    assert payload["error"].startswith("the file is plain text")
    assert headers["X-Imgsvc-Signature"] == hmac_sha256("k", body)


def test_callback_url_must_be_public_http_unless_allowed(client, app):
    for url in ("ftp://example.com/x", "http://127.0.0.1:9/x", "http://10.0.0.1/x", "not a url"):
        response = client.post(
            "/api/v1/submit",
            data={"file": (io.BytesIO(image_bytes("PNG")), "x.png"), "callback_url": url},
            content_type="multipart/form-data",
        )
        assert response.status_code == 400, url
        assert response.get_json()["error"]["code"] == "invalid_callback_url"
    assert row_count(app) == 0


# -- API keys and rate limits ------------------------------------------------------------
def test_api_keys_guard_every_route_and_scope_jobs(settings, redis_db, jpeg_bytes):
    app = create_app(settings.with_(api_keys=("alpha", "beta")))
    client = app.test_client()
    refused = submit(client, jpeg_bytes)
    assert refused.status_code == 401
    assert "Authorization: Bearer" in refused.get_json()["error"]["message"]  # says how to send a key
    assert "X-API-Key" in refused.get_json()["error"]["message"]
    assert client.get("/api/v1/jobs", headers={"X-API-Key": "wrong"}).status_code == 401
    alpha = {"Authorization": "Bearer alpha"}
    beta = {"X-API-Key": "beta"}
    job_id = client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(jpeg_bytes), "x.jpg")},
        headers=alpha,
        content_type="multipart/form-data",
    ).get_json()["job_id"]
    assert client.get(f"/api/v1/status/{job_id}", headers=alpha).status_code == 200
    assert client.get(f"/api/v1/status/{job_id}", headers=beta).status_code == 404
    assert client.get("/api/v1/jobs", headers=beta).get_json()["jobs"] == []
    assert client.get("/healthz").status_code == 200  # health stays open for probes


def test_rate_limit_answers_429_with_retry_after(settings, redis_db):
    app = create_app(settings.with_(rate_limit="3/minute"))
    client = app.test_client()
    codes = [client.get("/api/v1/status/00000000-0000-0000-0000-000000000000").status_code for _ in range(4)]
    assert codes == [404, 404, 404, 429]
    limited = client.get("/api/v1/jobs")
    assert limited.status_code == 429 and limited.is_json
    assert int(limited.headers["Retry-After"]) > 0
    # Without API_KEYS no key is valid: a made-up one opens no bucket of its own (it did).
    assert client.get("/api/v1/jobs", headers={"X-API-Key": "junk-1234"}).status_code == 429


def test_rate_limit_buckets_are_per_valid_key_and_wrong_keys_use_up_the_address(settings, redis_db):
    app = create_app(settings.with_(rate_limit="3/minute", api_keys=("alpha", "beta")))
    client = app.test_client()
    codes = [client.get("/api/v1/jobs", headers={"X-API-Key": f"guess-{n}"}).status_code for n in range(5)]
    assert codes == [401, 401, 401, 429, 429]  # guessing keys is limited like anything else
    assert client.get("/api/v1/jobs", headers={"Authorization": "Bearer \xc3\xa9"}).status_code == 429
    alpha = [client.get("/api/v1/jobs", headers={"X-API-Key": "alpha"}).status_code for _ in range(4)]
    assert alpha == [200, 200, 200, 429]  # a valid key has a bucket of its own
    assert client.get("/api/v1/jobs", headers={"Authorization": "Bearer beta"}).status_code == 200


class NoOptions(Describer):
    """A model that honours no per-job option, like the built-in describer."""

    name = "no-options"

    def describe_full(self, images, options=None):
        return [Description(text="words") for _ in images]


@pytest.mark.parametrize("form", [{"max_length": "5"}, {"prompt": "a picture of"}])
def test_submit_refuses_options_the_running_model_cannot_honour(client, app, settings, run_worker, form):
    def send():
        return client.post(
            "/api/v1/submit",
            data={"file": (io.BytesIO(image_bytes("PNG")), "x.png"), **form},
            content_type="multipart/form-data",
        )

    run_worker(describer=NoOptions())  # an idle worker says what it runs
    refused = send()
    assert refused.status_code == 400 and "not supported" in refused.get_json()["error"]["message"]
    assert row_count(app) == 0 and stored_files(settings) == []
    run_worker()  # now the workers run the tiny BLIP, which honours both options
    assert send().status_code == 202


def test_every_web_process_of_a_deployment_counts_against_one_limit(settings, redis_db):
    """gunicorn runs several processes: the buckets live in Redis, one set per deployment (RQ_QUEUE)."""
    one, two = (create_app(settings.with_(rate_limit="3/minute")).test_client() for _ in range(2))
    codes = [client.get("/api/v1/jobs").status_code for client in (one, two, one, two)]
    assert codes == [200, 200, 200, 429]
    other = create_app(settings.with_(rate_limit="3/minute", queue_name="other")).test_client()
    assert other.get("/api/v1/jobs").status_code == 200  # another deployment sharing the Redis


def test_a_rate_limit_whose_redis_is_down_lets_requests_through(settings, redis_db):
    """The limiter's store failing is no reason to refuse a request that needs no Redis."""
    app = create_app(settings.with_(rate_limit="2/minute", redis_url="redis://127.0.0.1:1/0"))
    client = app.test_client()
    assert [client.get("/api/v1/jobs").status_code for _ in range(3)] == [200, 200, 200]


def test_health_metrics_and_docs_are_never_rate_limited(settings, redis_db):
    app = create_app(settings.with_(rate_limit="2/minute"))
    client = app.test_client()
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
        codes = [client.get(path).status_code for _ in range(4)]
        assert 429 not in codes, (path, codes)
    assert [client.get("/api/v1/jobs").status_code for _ in range(3)] == [200, 200, 429]
    assert client.get("/healthz").status_code == 200  # still open with the address over its limit


def test_prompt_option_conditions_the_caption(client, run_worker, tiny_describer):
    data = image_bytes("PNG")
    job_id = client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(data), "x.png"), "prompt": "a picture of", "max_length": "4"},
        content_type="multipart/form-data",
    ).get_json()["job_id"]
    run_worker()
    result = client.get(f"/api/v1/result/{job_id}").get_json()
    assert result["status"] == "done"
    assert result["image_description"].startswith("a picture of")  # words of the tiny vocabulary


def test_cancel_while_running_discards_the_result(client, settings, run_worker, tiny_describer, png_bytes):
    job_id = submit(client, png_bytes, "a.png", "image/png").get_json()["job_id"]

    class CancelledMidway(type(tiny_describer)):
        """The user presses cancel while the model is running."""

        def describe_full(self, images, options=None):
            response = client.delete(f"/api/v1/jobs/{job_id}")
            assert response.get_json() == {"job_id": job_id, "status": "cancelled", "was": "processing"}
            return super().describe_full(images, options)

    midway = CancelledMidway.__new__(CancelledMidway)
    midway.__dict__.update(tiny_describer.__dict__)
    run_worker(describer=midway)
    status = client.get(f"/api/v1/status/{job_id}").get_json()
    assert status["status"] == "cancelled"
    assert client.get(f"/api/v1/result/{job_id}").status_code == 422
    assert len(stored_files(settings)) == 1  # kept for a retry until UPLOAD_RETENTION or a DELETE
    assert client.delete(f"/api/v1/jobs/{job_id}").get_json()["status"] == "deleted"
    assert stored_files(settings) == []


def test_webhook_events_start_and_completed_each_post_once(settings, redis_db, tiny_describer, receiver):
    app = create_app(settings.with_(webhook_allow_private=True, webhook_secret="k"))
    client = app.test_client()
    job_id = client.post(
        "/api/v1/submit",
        data={
            "file": (io.BytesIO(image_bytes(color=(5, 6, 7))), "x.jpg"),
            "callback_url": receiver,
            "webhook_events": "start,completed",
        },
        content_type="multipart/form-data",
    ).get_json()["job_id"]
    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer).work(burst=True)
    run_webhook_worker(app, settings)
    payloads = [json.loads(body) for _, body in Receiver.calls]
    assert [(p["job_id"], p["status"]) for p in payloads] == [(job_id, "processing"), (job_id, "done")]
    assert all(headers["X-Imgsvc-Signature"] == hmac_sha256("k", body) for headers, body in Receiver.calls)


def test_webhook_events_start_alone_sends_no_completion(settings, redis_db, tiny_describer, receiver):
    app = create_app(settings.with_(webhook_allow_private=True))
    client = app.test_client()
    client.post(
        "/api/v1/submit",
        data={
            "file": (io.BytesIO(image_bytes(color=(8, 6, 7))), "x.jpg"),
            "callback_url": receiver,
            "webhook_events": "start",
        },
        content_type="multipart/form-data",
    )
    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer).work(burst=True)
    run_webhook_worker(app, settings)
    assert [json.loads(body)["status"] for _, body in Receiver.calls] == ["processing"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"webhook_events": "start"}, "webhook_events needs a callback_url to send them to"),
        (
            {"webhook_events": "start,<b>finish</b>", "callback_url": "http://127.0.0.1:9/hook"},
            "webhook_events takes start and completed, comma-separated",
        ),
    ],
)
def test_webhook_events_are_checked_at_submit(settings, redis_db, fields, message):
    client = create_app(settings.with_(webhook_allow_private=True)).test_client()
    response = client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(image_bytes()), "x.jpg")} | fields,
        content_type="multipart/form-data",
    )
    assert response.status_code == 400 and response.get_json()["error"]["message"] == message
