"""Issue 26's features through what production runs: gunicorn with gunicorn.conf.py, a real worker
(the tiny model, slowed to 1.5 s a batch so a job is seen processing), the webhook worker, and a
real nginx rendered from deploy/nginx.conf.template in front: waits, event streams, the CLI's wait,
retries, idempotent submits, webhook events and images by URL.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from imgsvc.config import PROJECT_ROOT
from tests.conftest import TEST_REDIS_URL, empty_owned_db, image_bytes
from tests.image_server import ImageServer, Page
from tests.integration.procs import (
    NGINX,
    free_port,
    kill_group,
    start_nginx,
    start_worker,
    wait_until,
)
from tests.loopback import SITE_DIR

needs_nginx = pytest.mark.skipif(
    not os.access(NGINX, os.X_OK), reason="nginx is not installed (.ci/run installs it with apt)"
)


@dataclass
class Served:
    web: str
    proxy: str
    tmp: Path

    def submit(self, base: str, color: tuple[int, int, int]) -> str:
        files = {"file": ("x.jpg", image_bytes(color=color), "image/jpeg")}
        response = requests.post(f"{base}/api/v1/submit", files=files, timeout=30)
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    def status(self, job_id: str) -> str:
        return requests.get(f"{self.web}/api/v1/status/{job_id}", timeout=30).json()["status"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, owned_redis, tiny_model_dir) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("served")
    empty_owned_db(owned_redis)
    web_port, proxy_port = free_port(), free_port()
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": f"{SITE_DIR}{os.pathsep}{PROJECT_ROOT}",  # the loopback-only fence
        "HF_HUB_OFFLINE": "1",
        "REDIS_URL": TEST_REDIS_URL,
        "DATABASE_URL": f"sqlite:///{tmp / 'imgsvc.sqlite'}",
        "UPLOAD_DIR": str(tmp / "uploads"),
        "VISION_MODEL": str(tiny_model_dir),
        "MAX_NEW_TOKENS": "5",
        "TORCH_THREADS": "1",
        "WEB_WORKERS": "1",
        "WEB_THREADS": "4",  # the shipped default: two requests may wait at once
        "LOG_LEVEL": "DEBUG",  # the web log's line per request (polls at DEBUG) is what the CLI test counts
        "LOG_FORMAT": "json",
        "WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is this test, on loopback
        "IMAGE_URL_ALLOW_PRIVATE": "true",  # and so is the image server
        "WEBHOOK_SECRET": "live",
    }
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{web_port}"]
    # Every process started is stopped, even when a later one fails to start (nginx absent): a
    # worker left behind would take the next tests' jobs from the shared queue.
    with contextlib.ExitStack() as started:

        def spawn(args: list[str], log: str) -> subprocess.Popen:
            """Start a process in its own group, logging to tmp/log; stopped when the fixture ends."""
            with (tmp / log).open("wb") as out:
                proc = subprocess.Popen(
                    args,
                    cwd=PROJECT_ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            started.callback(kill_group, proc, signal.SIGTERM)
            return proc

        spawn([*command, "--no-control-socket", "wsgi:app"], "web.log")
        # One after the other: two processes creating the SQLite schema at once can collide.
        assert wait_until(lambda: _answers(f"http://127.0.0.1:{web_port}/healthz"), timeout=60, interval=0.2)
        worker = start_worker(env, delay=1.5, log=tmp / "worker.log")
        started.callback(kill_group, worker, signal.SIGTERM)
        rq = str(Path(sys.executable).parent / "rq")
        spawn([rq, "worker", "--url", TEST_REDIS_URL, "--with-scheduler", "imgsvc-webhooks"], "webhooks.log")
        nginx = start_nginx(tmp, proxy_port, web_port)
        started.callback(kill_group, nginx, signal.SIGTERM)
        served = Served(f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{proxy_port}", tmp)
        ready = wait_until(lambda: _answers(served.proxy + "/readyz"), timeout=120, interval=0.2)
        logs = "".join((tmp / name).read_text()[-2000:] for name in ("web.log", "worker.log", "error.log"))
        assert ready, logs
        yield served


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


@needs_nginx
@pytest.mark.parametrize("via", ["web", "proxy"])
def test_submit_then_one_result_request_that_waits_gets_the_description(served, via):
    base = getattr(served, via)
    job_id = served.submit(base, (10, 20, 200 if via == "web" else 100))
    response = requests.get(f"{base}/api/v1/result/{job_id}", headers={"Prefer": "wait=60"}, timeout=90)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "done" and response.json()["image_description"]
    # Applied (it waited), unless the slowed worker had already finished the job when it arrived.
    assert response.headers.get("Preference-Applied") in ("wait=60", None)


@needs_nginx
def test_events_arrive_through_the_proxy_as_they_happen(served):
    """Each event reaches the client when it is written: the stream's first event comes while the
    job is still unfinished, not with the rest when the stream ends."""
    job_id = served.submit(served.proxy, (200, 200, 10))
    connection = http.client.HTTPConnection("127.0.0.1", int(served.proxy.rsplit(":", 1)[1]), timeout=60)
    try:
        connection.request("GET", f"/api/v1/jobs/{job_id}/events")
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
        first = _next_event(response)
        status_then = served.status(job_id)
        events = [first]
        while events[-1][0] not in ("done", "failed", "cancelled"):
            events.append(_next_event(response))
    finally:
        connection.close()
    assert first[0] in ("queued", "processing") and status_then in ("queued", "processing")
    assert events[-1][0] == "done" and events[-1][1]["image_description"]
    assert [name for name, _ in events] == sorted(
        {n for n, _ in events}, key=["queued", "processing", "done"].index
    )


@needs_nginx
def test_waiting_clients_never_take_the_threads_the_others_need(served):
    """WEB_THREADS=4: two requests wait, a third is answered at once (no Preference-Applied), and
    /healthz answers meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    # Jobs the worker will not reach for a while: queued behind each other at 1.5 s a batch.
    job_ids = [served.submit(served.web, (i, 99, 9)) for i in range(6)]
    held_ids, probe_id = job_ids[-3:-1], job_ids[-1]
    with ThreadPoolExecutor(2) as pool:
        held = [
            pool.submit(
                requests.get, f"{served.proxy}/api/v1/status/{j}", headers={"Prefer": "wait=60"}, timeout=90
            )
            for j in held_ids
        ]
        assert wait_until(lambda: _waiting(served) == 2, timeout=30)
        now = requests.get(
            f"{served.proxy}/api/v1/status/{probe_id}", headers={"Prefer": "wait=60"}, timeout=90
        )
        health = requests.get(f"{served.proxy}/healthz", timeout=10)
        answers = [future.result(timeout=90) for future in held]
    assert "Preference-Applied" not in now.headers and now.json()["status"] in ("queued", "processing")
    assert health.status_code == 200
    assert [a.json()["status"] for a in answers] == ["done", "done"]
    assert all(a.headers["Preference-Applied"] == "wait=60" for a in answers)


def _waiting(served: Served) -> int:
    """How many clients the web process holds waiting: the subscribers Redis counts for our channels."""
    from redis import Redis

    with Redis.from_url(TEST_REDIS_URL) as redis:
        return len(redis.pubsub_channels("imgsvc:job-changed:*"))


def _next_event(response: http.client.HTTPResponse) -> tuple[str, dict]:
    """Read lines up to the next named event (comments skipped); (name, data)."""
    name, data = None, None
    while True:
        line = response.readline().decode()
        if not line:
            raise AssertionError("the stream ended before a finished state")
        line = line.rstrip("\n")
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
        elif not line and name is not None:
            return name, data or {}


@needs_nginx
def test_the_cli_waits_for_each_job_with_one_result_request(served, tmp_path):
    """``imgsvc submit --wait``: the server holds the result request until the job ends, instead of
    the CLI polling every half second while the slowed worker takes its 1.5 s."""
    photo = tmp_path / "blue.png"
    photo.write_bytes(image_bytes("PNG", color=(3, 4, 250)))
    done = subprocess.run(
        [sys.executable, "-m", "imgsvc", "submit", "--url", served.proxy, "--timeout", "60", str(photo)],
        cwd=PROJECT_ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "done" and record["image_description"]
    requests_for_it = [
        line
        for line in (served.tmp / "web.log").read_text().splitlines()
        if f'"/api/v1/result/{record["job_id"]}"' in line
    ]
    assert len(requests_for_it) == 1


@needs_nginx
def test_one_submit_through_the_proxy_answers_with_the_description(served):
    files = {"file": ("x.png", image_bytes("PNG", color=(77, 1, 200)), "image/png")}
    response = requests.post(
        f"{served.proxy}/api/v1/submit", files=files, headers={"Prefer": "wait=60"}, timeout=90
    )
    assert response.status_code == 200, response.text
    assert response.headers["Preference-Applied"] == "wait=60"
    assert response.json()["status"] == "done" and response.json()["image_description"]


@needs_nginx
def test_a_cancelled_job_retried_through_the_proxy_runs_as_attempt_two(served):
    job_id = served.submit(served.proxy, (120, 1, 1))
    assert requests.delete(f"{served.proxy}/api/v1/jobs/{job_id}", timeout=30).json()["status"] == "cancelled"
    retried = requests.post(f"{served.proxy}/api/v1/jobs/{job_id}/retry", timeout=30)
    assert retried.status_code == 202 and retried.json()["attempt"] == 2
    again = requests.post(f"{served.proxy}/api/v1/jobs/{job_id}/retry", timeout=30)
    assert again.status_code == 409  # it is queued again: nothing to retry
    result = requests.get(f"{served.proxy}/api/v1/result/{job_id}", headers={"Prefer": "wait=60"}, timeout=90)
    assert result.status_code == 200 and result.json()["attempt"] == 2 and result.json()["job_id"] == job_id


@needs_nginx
def test_a_submit_sent_twice_with_its_idempotency_key_makes_one_job(served):
    """Each send encodes the multipart body afresh (a new boundary): the key and the request's
    meaning decide, not its bytes."""
    image = image_bytes("PNG", color=(9, 200, 9))
    answers = [
        requests.post(
            f"{served.proxy}/api/v1/submit",
            files={"file": ("same.png", image, "image/png")},
            headers={"Idempotency-Key": "live-key-1"},
            timeout=30,
        )
        for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert len({a.json()["job_id"] for a in answers}) == 1
    other = requests.post(
        f"{served.proxy}/api/v1/submit",
        files={"file": ("other.png", image_bytes("PNG", color=(9, 9, 200)), "image/png")},
        headers={"Idempotency-Key": "live-key-1"},
        timeout=30,
    )
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"


@needs_nginx
def test_webhook_events_start_and_completed_reach_the_receiver_signed(served):
    import hashlib
    import hmac
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[tuple[str, bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers["X-Imgsvc-Signature"], body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        files = {"file": ("hook.png", image_bytes("PNG", color=(250, 250, 1)), "image/png")}
        fields = {
            "callback_url": f"http://127.0.0.1:{server.server_port}/hook",
            "webhook_events": "start,completed",
        }
        job_id = requests.post(f"{served.proxy}/api/v1/submit", files=files, data=fields, timeout=30).json()[
            "job_id"
        ]
        assert wait_until(lambda: len(received) >= 2, timeout=60, interval=0.1)
    finally:
        server.shutdown()
    statuses = sorted(json.loads(body)["status"] for _, body in received)
    assert statuses == ["done", "processing"]
    assert all(json.loads(body)["job_id"] == job_id for _, body in received)
    for signature, body in received:
        assert signature == "sha256=" + hmac.new(b"live", body, hashlib.sha256).hexdigest()


@needs_nginx
def test_an_image_url_is_fetched_by_the_real_worker_and_described(served):
    """gunicorn only vets the URL; the worker process fetches it (from this test, on loopback)."""
    png = image_bytes("PNG", size=(32, 24), color=(3, 250, 9))
    with ImageServer({"/live.png": Page(body=png)}) as images:
        response = requests.post(
            f"{served.proxy}/api/v1/submit",
            data={"image_url": images.url("/live.png")},
            headers={"Prefer": "wait=60"},
            timeout=90,
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "done" and body["image_description"]
    assert body["image"] == {"format": "PNG", "width": 32, "height": 24}
    assert images.hits == ["/live.png"] and images.requests[0]["User-Agent"] == "imgsvc-fetch"
