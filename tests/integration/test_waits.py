"""Waiting for a job in one request: ``Prefer: wait=N`` on status and result, and server-sent events.

In-process: the app's test client in threads, a real Redis, the real worker (burst mode). The
live gunicorn and nginx runs are in tests/integration/test_live_api.py.
"""

from __future__ import annotations

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from imgsvc.config import Settings
from imgsvc.web import waits
from imgsvc.web.waits import preferred_wait
from tests.conftest import image_bytes
from tests.integration.test_api import submit


def parse_events(text: str) -> list[tuple[str, dict]]:
    """``(event name, data)`` for each event of a text/event-stream body; comments skipped."""
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith(":")]
        fields = dict(line.split(": ", 1) for line in lines if ": " in line)
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("wait=5", 5),
        ("respond-async, wait=12", 12),
        ('wait="7"', 7),
        ("WAIT = 3", 3),
        ("wait=600", 60),  # cut to MAX_WAIT
        ("wait=abc", None),
        ("return=minimal", None),
        ("", None),
    ],
)
def test_prefer_wait_is_read_as_rfc_7240_says_and_cut_to_max_wait(header, seconds):
    assert preferred_wait(header, Settings()) == seconds


def test_max_wait_zero_turns_waiting_off():
    assert preferred_wait("wait=5", Settings(max_wait=0)) is None


def test_a_status_that_waits_answers_when_the_worker_finishes_the_job(client, run_worker):
    job_id = submit(client, image_bytes()).get_json()["job_id"]
    with ThreadPoolExecutor(2) as pool:
        waiting = [
            pool.submit(client.get, f"/api/v1/{what}/{job_id}", headers={"Prefer": "wait=60"})
            for what in ("status", "result")
        ]
        # Both requests are subscribed before the worker runs, or the worker runs first and they
        # find the job done: either way they answer with the finished job, long before 60 s.
        run_worker()
        status, result = (future.result(timeout=30) for future in waiting)
    assert status.status_code == 200 and status.get_json()["status"] == "done"
    assert result.status_code == 200 and result.get_json()["image_description"]
    assert result.headers["Vary"] == "Prefer"


def test_a_wait_that_runs_out_gives_the_usual_answer_and_says_the_wait_was_applied(client):
    job_id = submit(client, image_bytes()).get_json()["job_id"]  # no worker: it stays queued
    response = client.get(f"/api/v1/result/{job_id}", headers={"Prefer": "wait=1"})
    assert response.status_code == 202 and response.get_json()["status"] == "queued"
    assert response.headers["Preference-Applied"] == "wait=1"


def test_a_finished_job_is_answered_at_once_without_a_wait(client, run_worker):
    job_id = submit(client, image_bytes()).get_json()["job_id"]
    run_worker()
    response = client.get(f"/api/v1/status/{job_id}", headers={"Prefer": "wait=60"})
    assert response.get_json()["status"] == "done" and "Preference-Applied" not in response.headers


def test_a_cancel_wakes_a_waiting_request(client):
    job_id = submit(client, image_bytes()).get_json()["job_id"]
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.get, f"/api/v1/result/{job_id}", headers={"Prefer": "wait=60"})
        assert client.delete(f"/api/v1/jobs/{job_id}").get_json()["status"] == "cancelled"
        response = waiting.result(timeout=30)
    assert response.status_code == 422 and response.get_json()["status"] == "cancelled"


def test_when_every_waiting_slot_is_taken_the_answer_comes_at_once_without_preference_applied(
    app, client, settings
):
    # WEB_THREADS=3: one request may wait, the others are answered at once.
    app.config["IMGSVC"] = settings.with_(web_threads=3)
    first, second = (submit(client, image_bytes(color=(c, 0, 0))).get_json()["job_id"] for c in (1, 2))
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(client.get, f"/api/v1/status/{first}", headers={"Prefer": "wait=60"})
        watcher = app.extensions.get("imgsvc.watcher")
        while watcher is None or watcher.waiting < 1:
            watcher = app.extensions.get("imgsvc.watcher")
            threading.Event().wait(0.01)
        now = client.get(f"/api/v1/status/{second}", headers={"Prefer": "wait=60"})
        assert now.get_json()["status"] == "queued" and "Preference-Applied" not in now.headers
        client.delete(f"/api/v1/jobs/{first}")  # lets the held request go
        assert held.result(timeout=30).get_json()["status"] == "cancelled"


def test_the_event_stream_says_each_state_and_ends_with_the_result(client, run_worker):
    job_id = submit(client, image_bytes()).get_json()["job_id"]
    with ThreadPoolExecutor(1) as pool:
        streaming = pool.submit(lambda: client.get(f"/api/v1/jobs/{job_id}/events").get_data(as_text=True))
        run_worker()
        events = parse_events(streaming.result(timeout=30))
    names = [name for name, _ in events]
    assert names[0] in ("queued", "processing", "done") and names[-1] == "done"
    assert names == sorted(set(names), key=["queued", "processing", "done"].index)  # in order, no repeats
    assert events[-1][1]["job_id"] == job_id and events[-1][1]["image_description"]


def test_the_event_stream_of_a_finished_job_is_one_event(client, run_worker):
    job_id = submit(client, image_bytes()).get_json()["job_id"]
    client.delete(f"/api/v1/jobs/{job_id}")
    response = client.get(f"/api/v1/jobs/{job_id}/events")
    assert response.mimetype == "text/event-stream" and response.headers["X-Accel-Buffering"] == "no"
    assert [name for name, _ in parse_events(response.get_data(as_text=True))] == ["cancelled"]


def test_the_event_stream_of_an_unknown_job_is_404(client):
    response = client.get("/api/v1/jobs/5b0e5f7c-3f1b-4a55-9d5e-0b1c2d3e4f50/events")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


def test_a_submit_that_waits_answers_with_the_description(client, run_worker):
    """One request per job: the submit is held until the worker writes the row, then answered as
    /result would answer."""
    response = held_submit(client, image_bytes(color=(40, 50, 60)), run_worker)
    assert response.status_code == 200 and response.headers["Preference-Applied"] == "wait=60"
    body = response.get_json()
    assert body["status"] == "done" and body["image_description"]
    assert response.headers["Location"].endswith(f"/api/v1/status/{body['job_id']}")


def held_submit(client, image: bytes, run_worker=None):
    """A submit of ``image`` with ``Prefer: wait=60``: :func:`held_post`."""
    return held_post(client, {"file": (io.BytesIO(image), "a.jpg", "image/jpeg")}, run_worker)


def held_post(client, data: dict, run_worker=None):
    """A submit of the form ``data`` with ``Prefer: wait=60`` in a thread; the worker (if given)
    runs whatever is queued until the held submit answers."""
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            client.post,
            "/api/v1/submit",
            data=data,
            content_type="multipart/form-data",
            headers={"Prefer": "wait=60"},
        )
        for _ in range(200):
            if run_worker is not None:
                run_worker()
            if waiting.done():
                break
            threading.Event().wait(0.05)
        return waiting.result(timeout=30)


def test_a_submit_that_waits_answers_as_result_does_without_reading_the_row_back(
    client, run_worker, monkeypatch
):
    """The worker publishes the result it committed; the held submit answers with it, and it is
    the very body GET /result reads from the row afterwards."""
    reads = []
    read_row = waits.fresh_job
    monkeypatch.setattr(waits, "fresh_job", lambda job_id: reads.append(job_id) or read_row(job_id))
    response = held_submit(client, image_bytes(color=(70, 20, 90)), run_worker)
    assert response.status_code == 200
    body = response.get_json()
    assert reads == []
    assert body == client.get(f"/api/v1/result/{body['job_id']}").get_json()
    assert body["filename"] == "a.jpg" and body["image"]["format"] == "JPEG" and body["attempt"] == 1


def test_a_submit_that_waits_is_answered_when_its_job_is_cancelled(client):
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(submit_with, client, image_bytes(color=(5, 6, 7)), {"Prefer": "wait=60"})
        while not (listed := client.get("/api/v1/jobs").get_json()["jobs"]):
            threading.Event().wait(0.02)
        assert client.delete(f"/api/v1/jobs/{listed[0]['job_id']}").get_json()["status"] == "cancelled"
        response = waiting.result(timeout=30)
    assert response.status_code == 422 and response.get_json()["status"] == "cancelled"


def test_a_submit_that_waits_in_vain_gets_the_usual_202(client):
    response = submit_with(client, image_bytes(color=(1, 2, 3)), {"Prefer": "wait=1"})
    assert response.status_code == 202 and response.get_json()["status"] == "queued"
    assert response.headers["Preference-Applied"] == "wait=1"


def test_a_submit_of_a_cached_image_that_waits_gets_the_result_at_once(client, run_worker):
    image = image_bytes(color=(9, 9, 9))
    submit(client, image)
    run_worker()
    response = submit_with(client, image, {"Prefer": "wait=30"})
    assert response.status_code == 200 and response.get_json()["cached"] is True


def submit_with(client, data: bytes, headers: dict[str, str]):
    return client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(data), "a.jpg", "image/jpeg")},
        content_type="multipart/form-data",
        headers=headers,
    )
