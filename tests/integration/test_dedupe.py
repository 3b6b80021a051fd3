"""The same image again is answered from the stored result: only from a finished description of
the same bytes, options, model and key."""

from __future__ import annotations

import io

from imgsvc import create_app
from imgsvc.queue.worker import ImgsvcWorker
from imgsvc.storage import jobs
from imgsvc.vision.base import Describer, Description
from tests.conftest import image_bytes, open_rgb
from tests.integration.test_api import stored_files, submit


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
