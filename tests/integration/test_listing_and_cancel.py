"""Listing jobs (newest first, with a cursor) and cancelling one, queued or while the model runs."""

from __future__ import annotations

from tests.conftest import image_bytes
from tests.integration.test_api import stored_files, submit


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
