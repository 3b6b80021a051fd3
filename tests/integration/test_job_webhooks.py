"""A job's webhook, end to end (submit, worker, webhook worker, a receiver on loopback): signed,
retried, fired for failures too, per ``webhook_events``; ``callback_url`` checked at submit.
Delivery itself is ``tests/queue/test_webhooks.py``."""

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
from tests.conftest import image_bytes
from tests.integration.test_api import row_count, stored_files


def hmac_sha256(secret: str, body: bytes) -> str:
    """The README's signature, computed here by hand (not with the product's own code)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


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


def submit_with_hook(client, image: bytes, receiver: str, **fields: str) -> dict:
    """Submit ``image`` with ``callback_url=receiver`` (and any other form fields); the JSON answer."""
    return client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(image), "x.jpg"), "callback_url": receiver, **fields},
        content_type="multipart/form-data",
    ).get_json()


def test_webhook_is_signed_and_retried_until_delivered(
    settings, redis_db, tiny_describer, receiver, jpeg_bytes
):
    app = create_app(settings.with_(webhook_allow_private=True, webhook_secret="s3cret"))
    client = app.test_client()
    job_id = submit_with_hook(client, jpeg_bytes, receiver)["job_id"]
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
    again = submit_with_hook(client, jpeg_bytes, receiver)
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
    job_id = submit_with_hook(client, jpeg_bytes, receiver)["job_id"]
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


def test_webhook_events_start_and_completed_each_post_once(settings, redis_db, tiny_describer, receiver):
    app = create_app(settings.with_(webhook_allow_private=True, webhook_secret="k"))
    client = app.test_client()
    image = image_bytes(color=(5, 6, 7))
    job_id = submit_with_hook(client, image, receiver, webhook_events="start,completed")["job_id"]
    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer).work(burst=True)
    run_webhook_worker(app, settings)
    payloads = [json.loads(body) for _, body in Receiver.calls]
    assert [(p["job_id"], p["status"]) for p in payloads] == [(job_id, "processing"), (job_id, "done")]
    assert all(headers["X-Imgsvc-Signature"] == hmac_sha256("k", body) for headers, body in Receiver.calls)


def test_webhook_events_start_alone_sends_no_completion(settings, redis_db, tiny_describer, receiver):
    app = create_app(settings.with_(webhook_allow_private=True))
    client = app.test_client()
    submit_with_hook(client, image_bytes(color=(8, 6, 7)), receiver, webhook_events="start")
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
