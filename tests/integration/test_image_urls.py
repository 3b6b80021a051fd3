"""Images by URL (issue 26): submit ``image_url`` -> the real worker fetches it from a loopback
server -> the same checks and model as an upload; refusals at submit and ``fetch_failed`` jobs.

The server is on 127.0.0.1, so the private-address allowance (IMAGE_URL_ALLOW_PRIVATE) is on
wherever a fetch should succeed; the refusals are tested with it off.
"""

from __future__ import annotations

import io
import ipaddress
import socket

import pytest

from imgsvc import outbound_urls
from imgsvc.queue import fetches
from tests.conftest import image_bytes
from tests.image_server import ImageServer, Page
from tests.integration.test_api import row_count, stored_files
from tests.integration.test_waits import held_post

JPEG = image_bytes("JPEG", size=(40, 30))


def submit_url(client, url: str, **fields):
    return client.post(
        "/api/v1/submit", data={"image_url": url, **fields}, content_type="multipart/form-data"
    )


@pytest.fixture()
def allowed(app, settings):
    """Loopback may be fetched (the allowance is on), and RQ retries a failure twice."""
    app.config["IMGSVC"] = settings.with_(image_url_allow_private=True, task_max_retries=2)


def test_an_image_url_is_fetched_by_the_worker_and_described(client, app, settings, run_worker, allowed):
    with ImageServer({"/photos/cat.jpg": Page(body=JPEG)}) as server:
        response = submit_url(client, server.url("/photos/cat.jpg"))
        assert response.status_code == 202, response.get_json()
        job_id = response.get_json()["job_id"]
        assert server.hits == []  # the web side never fetches
        assert client.get(f"/api/v1/status/{job_id}").get_json()["status"] == "queued"
        run_worker()
    assert server.hits == ["/photos/cat.jpg"]
    result = client.get(f"/api/v1/result/{job_id}")
    assert result.status_code == 200
    body = result.get_json()
    assert body["status"] == "done" and body["image_description"]
    assert body["image"] == {"format": "JPEG", "width": 40, "height": 30}
    assert [p.read_bytes() for p in stored_files(settings)] == [JPEG]  # stored as an upload is


def test_a_submit_that_waits_on_an_image_url_answers_with_the_fetched_image(client, run_worker, allowed):
    """The held submit answers from the result the worker publishes: it must show the image the
    fetch stored (the row the worker claimed had none yet), as GET /result does."""
    with ImageServer({"/w.jpg": Page(body=JPEG)}) as server:
        response = held_post(client, {"image_url": server.url("/w.jpg")}, run_worker)
    assert response.status_code == 200
    body = response.get_json()
    assert body["image"] == {"format": "JPEG", "width": 40, "height": 30}
    assert body == client.get(f"/api/v1/result/{body['job_id']}").get_json()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/a.jpg",
        "http://[fd00::1]/",
        "http://[::ffff:127.0.0.1]/",
    ],
)
def test_a_private_address_is_refused_at_submit_with_422_and_nothing_queued(
    client, app, settings, monkeypatch, url
):
    def no_connect(*args, **kwargs):
        raise AssertionError("the web side connected")

    monkeypatch.setattr(socket, "create_connection", no_connect)
    response = submit_url(client, url)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "invalid_image_url" and "not public" in error["message"]
    assert row_count(app) == 0 and app.task_queue.count == 0


def test_the_webhook_allowance_does_not_open_image_urls(client, app, settings):
    """A local webhook receiver (WEBHOOK_ALLOW_PRIVATE) must not let clients reach the worker's network."""
    app.config["IMGSVC"] = settings.with_(webhook_allow_private=True)
    response = submit_url(client, "http://127.0.0.1:6379/")
    assert response.status_code == 422
    assert "IMAGE_URL_ALLOW_PRIVATE=true" in response.get_json()["error"]["message"]
    assert row_count(app) == 0


@pytest.mark.parametrize("url", ["ftp://example.com/a.jpg", "file:///etc/passwd", "not a url"])
def test_a_url_that_is_not_http_is_refused_at_submit(client, app, url):
    response = submit_url(client, url)
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "invalid_image_url"
    assert row_count(app) == 0


def test_file_and_image_url_together_are_400(client, app):
    response = client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(JPEG), "a.jpg"), "image_url": "http://127.0.0.1/a.jpg"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "bad_request"
    assert "not both" in response.get_json()["error"]["message"]
    assert row_count(app) == 0


def test_neither_file_nor_image_url_is_400_naming_both(client, app):
    response = submit_url(client, "")  # empty counts as absent, as for every field
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "missing_file" and "'image_url'" in error["message"]


def test_a_batch_takes_files_only(client, app, allowed):
    response = client.post(
        "/api/v1/batch",
        data={"file": (io.BytesIO(JPEG), "a.jpg"), "image_url": "http://127.0.0.1/a.jpg"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400 and "files only" in response.get_json()["error"]["message"]
    assert row_count(app) == 0


def test_a_body_that_is_not_an_image_fails_for_good_without_retries(client, run_worker, allowed):
    with ImageServer({"/page": Page(body=b"<html>a web page, not a picture</html>")}) as server:
        job_id = submit_url(client, server.url("/page")).get_json()["job_id"]
        run_worker()
    assert server.hits == ["/page"]  # TASK_MAX_RETRIES is 2, but no retry can fix this
    status = client.get(f"/api/v1/status/{job_id}").get_json()
    assert status["status"] == "failed" and status["attempts"] == 1
    assert status["error"].startswith("fetch_failed: not an image that can be described: the file is")
    result = client.get(f"/api/v1/result/{job_id}")
    assert result.status_code == 422 and result.get_json()["error"] == status["error"]


def test_a_server_error_is_retried_then_fails_with_fetch_failed(client, run_worker, allowed):
    with ImageServer({"/busy.jpg": Page(status=503, body=b"try later")}) as server:
        job_id = submit_url(client, server.url("/busy.jpg")).get_json()["job_id"]
        run_worker()
    assert server.hits == ["/busy.jpg"] * 3  # the first try and TASK_MAX_RETRIES=2 retries
    status = client.get(f"/api/v1/status/{job_id}").get_json()
    assert status["status"] == "failed" and status["attempts"] == 3
    assert status["error"] == "fetch_failed: the server answered HTTP 503"


def test_a_transient_failure_then_success_describes_the_image(client, run_worker, allowed):
    pages = {"/flaky.jpg": Page(status=500)}
    with ImageServer(pages) as server:
        job_id = submit_url(client, server.url("/flaky.jpg")).get_json()["job_id"]
        run_worker(max_jobs=1)
        assert client.get(f"/api/v1/status/{job_id}").get_json()["error"] == (
            "fetch_failed: the server answered HTTP 500"
        )
        server.pages["/flaky.jpg"] = Page(body=JPEG)
        run_worker()
    assert client.get(f"/api/v1/result/{job_id}").get_json()["status"] == "done"


def test_a_redirect_to_a_refused_address_fails_the_job_for_good(
    client, app, settings, run_worker, monkeypatch
):
    """127.0.0.1 plays a public host here (the allowance stays off); it redirects to the metadata address."""
    real = outbound_urls.is_public
    loopback = ipaddress.ip_address("127.0.0.1")
    monkeypatch.setattr(outbound_urls, "is_public", lambda a: a == loopback or real(a))
    monkeypatch.setattr(fetches, "is_public", lambda a: a == loopback or real(a))
    app.config["IMGSVC"] = settings.with_(task_max_retries=2)
    target = "http://169.254.169.254/latest/meta-data/iam/"
    with ImageServer({"/a.jpg": Page(status=302, headers={"Location": target})}) as server:
        job_id = submit_url(client, server.url("/a.jpg")).get_json()["job_id"]
        run_worker()
    assert server.hits == ["/a.jpg"]
    status = client.get(f"/api/v1/status/{job_id}").get_json()
    assert status["status"] == "failed" and status["attempts"] == 1
    assert status["error"].startswith(
        "fetch_failed: refused: image_url resolves to an address that is not public"
    )


def test_a_failed_fetch_can_be_retried_and_fetches_again(client, run_worker, allowed):
    with ImageServer({"/later.jpg": Page(status=404)}) as server:
        job_id = submit_url(client, server.url("/later.jpg")).get_json()["job_id"]
        run_worker()
        assert client.get(f"/api/v1/status/{job_id}").get_json()["status"] == "failed"
        server.pages["/later.jpg"] = Page(body=JPEG)
        response = client.post(f"/api/v1/jobs/{job_id}/retry")
        assert response.status_code == 202 and response.get_json()["attempt"] == 2
        run_worker()
    assert server.hits == ["/later.jpg", "/later.jpg"]
    assert client.get(f"/api/v1/result/{job_id}").get_json()["status"] == "done"


def test_an_idempotency_key_replays_an_image_url_submit(client, app, allowed):
    headers = {"Idempotency-Key": "url-1"}
    first = client.post("/api/v1/submit", data={"image_url": "http://127.0.0.1:9/a.jpg"}, headers=headers)
    again = client.post("/api/v1/submit", data={"image_url": "http://127.0.0.1:9/a.jpg"}, headers=headers)
    other = client.post("/api/v1/submit", data={"image_url": "http://127.0.0.1:9/b.jpg"}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.get_json()["job_id"] == first.get_json()["job_id"] and row_count(app) == 1
    assert other.status_code == 422 and other.get_json()["error"]["code"] == "idempotency_key_reused"


def test_the_bytes_quota_counts_an_image_url_job_as_max_file_size(client, app, settings):
    """The fetch may store up to MAX_FILE_SIZE, unknown at submit: a bytes quota counts that much,
    so URLs are no way round QUOTA_BYTES_PER_DAY (without a jobs quota, nothing else would bound it)."""
    app.config["IMGSVC"] = settings.with_(
        image_url_allow_private=True, quota_bytes_per_day=settings.max_file_size * 2
    )
    accepted = [submit_url(client, f"http://127.0.0.1:9/{n}.jpg").status_code for n in range(2)]
    refused = submit_url(client, "http://127.0.0.1:9/2.jpg")
    assert accepted == [202, 202]
    assert refused.status_code == 429
    assert "bytes of uploads is used up" in refused.get_json()["error"]["message"]
    assert row_count(app) == 2


def test_slow_urls_in_a_batch_cost_it_one_image_url_timeout_not_one_each(client, app, settings, run_worker):
    """A batch's images are fetched side by side: four URLs that drip for ever end together after
    IMAGE_URL_TIMEOUT (1 s). One after another they would take 4 s, past JOB_TIMEOUT (3 s), and
    another client's upload in the same batch would fail with them."""
    app.config["IMGSVC"] = settings.with_(
        image_url_allow_private=True, batch_size=5, image_url_timeout=1, job_timeout=3, task_max_retries=0
    )
    drip = Page(body=JPEG, chunk=1, drip=0.2)
    with ImageServer({f"/slow{n}.jpg": drip for n in range(4)}) as server:
        slow = [submit_url(client, server.url(f"/slow{n}.jpg")).get_json()["job_id"] for n in range(4)]
        upload = client.post(
            "/api/v1/submit", data={"file": (io.BytesIO(JPEG), "a.jpg")}, content_type="multipart/form-data"
        ).get_json()["job_id"]
        run_worker()
    assert client.get(f"/api/v1/status/{upload}").get_json()["status"] == "done"
    errors = {client.get(f"/api/v1/status/{job_id}").get_json()["error"] for job_id in slow}
    assert errors == {"fetch_failed: no complete answer within 1 s (IMAGE_URL_TIMEOUT)"}
