"""POST /api/v1/jobs/<id>/retry: a failed or cancelled job runs again as its next attempt, same id."""

from __future__ import annotations

import pytest

from imgsvc.vision.base import Describer
from tests.conftest import image_bytes
from tests.integration.test_api import stored_files, submit


class BrokenModel(Describer):
    """The real model's name and options, but every forward pass raises (a host or model fault)."""

    def __init__(self, inner: Describer) -> None:
        self.name = inner.name
        self.supported_options = inner.supported_options

    def describe_full(self, images, options=None):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


@pytest.fixture()
def no_retries(app, settings):
    """RQ gives up after the first failure, so one burst run fails a job for good."""
    app.config["IMGSVC"] = settings.with_(task_max_retries=0)


def test_a_failed_job_is_retried_under_its_own_id_as_attempt_two(
    client, settings, run_worker, tiny_describer, no_retries
):
    job_id = submit(client, image_bytes()).get_json()["job_id"]
    run_worker(describer=BrokenModel(tiny_describer))
    failed = client.get(f"/api/v1/status/{job_id}").get_json()
    assert failed["status"] == "failed" and "illegal memory access" in failed["error"]
    assert failed["attempt"] == 1 and len(stored_files(settings)) == 1  # the image is kept for a retry

    response = client.post(f"/api/v1/jobs/{job_id}/retry")
    assert response.status_code == 202
    assert response.get_json() == {"job_id": job_id, "status": "queued", "attempt": 2}
    assert response.headers["Location"].endswith(f"/api/v1/status/{job_id}")
    queued = client.get(f"/api/v1/status/{job_id}").get_json()
    assert queued["status"] == "queued" and "error" not in queued and "completed_at" not in queued
    assert queued["attempts"] == 0  # runs of this attempt: all of its RQ retries are ahead of it

    run_worker()
    result = client.get(f"/api/v1/result/{job_id}")
    assert result.status_code == 200
    assert result.get_json()["attempt"] == 2 and result.get_json()["image_description"]


def test_a_cancelled_job_can_be_retried(client, run_worker):
    job_id = submit(client, image_bytes()).get_json()["job_id"]
    client.delete(f"/api/v1/jobs/{job_id}")
    assert client.post(f"/api/v1/jobs/{job_id}/retry").get_json()["attempt"] == 2
    run_worker()
    assert client.get(f"/api/v1/result/{job_id}").get_json()["status"] == "done"


def test_only_a_job_that_ended_without_a_result_can_be_retried(client, run_worker):
    job_id = submit(client, image_bytes()).get_json()["job_id"]
    queued = client.post(f"/api/v1/jobs/{job_id}/retry")
    assert queued.status_code == 409
    assert queued.get_json()["error"] == {
        "code": "conflict",
        "message": "only a failed or cancelled job can be retried, and this one is queued",
        "status": 409,
        "status_now": "queued",
    }
    run_worker()
    done = client.post(f"/api/v1/jobs/{job_id}/retry")
    assert done.status_code == 409 and done.get_json()["error"]["status_now"] == "done"


def test_a_second_retry_of_the_same_failure_is_409(client, run_worker):
    job_id = submit(client, image_bytes()).get_json()["job_id"]
    client.delete(f"/api/v1/jobs/{job_id}")
    assert client.post(f"/api/v1/jobs/{job_id}/retry").status_code == 202
    again = client.post(f"/api/v1/jobs/{job_id}/retry")
    assert again.status_code == 409 and again.get_json()["error"]["status_now"] == "queued"


def test_a_job_whose_image_is_gone_cannot_be_retried(client, settings, run_worker):
    """A failed job keeps its image until UPLOAD_RETENTION; once retention removed it, nothing is
    left to run again."""
    job_id = submit(client, image_bytes()).get_json()["job_id"]
    (stored,) = stored_files(settings)
    stored.write_bytes(stored.read_bytes()[:200])  # the stored copy turns out to be truncated
    run_worker()
    assert client.get(f"/api/v1/status/{job_id}").get_json()["status"] == "failed"
    assert stored_files(settings) == [stored]  # kept, for a requeue or a retry
    stored.unlink()  # what `flask prune` does after UPLOAD_RETENTION
    response = client.post(f"/api/v1/jobs/{job_id}/retry")
    assert response.status_code == 409
    assert response.get_json()["error"]["message"].startswith("this job's image is no longer stored")
    assert client.get(f"/api/v1/status/{job_id}").get_json()["status"] == "failed"  # unchanged


def test_retrying_an_unknown_job_is_404(client):
    response = client.post("/api/v1/jobs/5b0e5f7c-3f1b-4a55-9d5e-0b1c2d3e4f50/retry")
    assert response.status_code == 404


def test_a_retry_that_cannot_be_queued_leaves_the_job_as_it_was(client, app, monkeypatch):
    job_id = submit(client, image_bytes()).get_json()["job_id"]
    client.delete(f"/api/v1/jobs/{job_id}")
    before = client.get(f"/api/v1/status/{job_id}").get_json()
    from redis.exceptions import ConnectionError as RedisConnectionError

    def unreachable(*args, **kwargs):
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr("imgsvc.retries.enqueue_describe", unreachable)
    response = client.post(f"/api/v1/jobs/{job_id}/retry")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "queue_unavailable"
    after = client.get(f"/api/v1/status/{job_id}").get_json()
    assert {k: after[k] for k in ("status", "attempt", "error", "completed_at")} == {
        k: before[k] for k in ("status", "attempt", "error", "completed_at")
    }
