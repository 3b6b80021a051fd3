"""Dynamic batching in the worker: one forward pass for waiting jobs, failures stay per job."""

from __future__ import annotations

from imgsvc import create_app
from imgsvc.queue.worker import ImgsvcWorker
from imgsvc.storage import jobs
from imgsvc.vision.base import Describer
from tests.conftest import image_bytes
from tests.integration.test_api import submit


class Recording(Describer):
    """Delegates to the real model and remembers the size of every batch it was given."""

    def __init__(self, inner: Describer) -> None:
        self.inner = inner
        self.name = inner.name
        self.supported_options = inner.supported_options
        self.batches: list[int] = []

    def describe_full(self, images, options=None):
        self.batches.append(len(images))
        return self.inner.describe_full(images, options)


def test_waiting_jobs_share_one_forward_pass(settings, tiny_describer):
    app = create_app(settings.with_(batch_size=4))
    client = app.test_client()
    payloads = [image_bytes("PNG", color=(i * 40, 80, 120)) for i in range(5)]
    ids = [submit(client, data, "x.png", "image/png").get_json()["job_id"] for data in payloads]
    with app.app_context():  # the second job's image, in the first batch, no longer decodes
        (settings.upload_dir / jobs.get_job(ids[1]).upload_name).write_bytes(b"broken")
    recording = Recording(tiny_describer)

    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=recording).work(burst=True)

    statuses = [client.get(f"/api/v1/status/{job_id}").get_json()["status"] for job_id in ids]
    assert statuses == ["done", "failed", "done", "done", "done"]
    assert recording.batches == [3, 1]  # 4 jobs drained, the broken one left out; then the 5th
    # a batched description is the same as describing the image alone
    for job_id, data in zip(ids, payloads, strict=True):
        result = client.get(f"/api/v1/result/{job_id}").get_json()
        if result["status"] == "done":
            from io import BytesIO

            from PIL import Image

            alone = tiny_describer.describe([Image.open(BytesIO(data)).convert("RGB")])[0]
            assert result["image_description"] == alone


def test_batch_size_one_runs_one_image_per_pass(client, run_worker, tiny_describer):
    for i in range(3):
        submit(client, image_bytes("PNG", color=(i, 2, 3)), "x.png", "image/png")
    recording = Recording(tiny_describer)
    run_worker(describer=recording)
    assert recording.batches == [1, 1, 1]


class FailsInBatches(Recording):
    """A forward pass that raises for more than one image (as an out-of-memory would), fine alone."""

    def describe_full(self, images, options=None):
        self.batches.append(len(images))
        if len(images) > 1:
            raise RuntimeError("CUDA out of memory for a batch")
        return self.inner.describe_full(images, options)


def test_a_failing_batched_pass_runs_each_job_alone(settings, tiny_describer):
    """No retries configured: a job that failed with its batch would be failed for good."""
    app = create_app(settings.with_(batch_size=4, task_max_retries=0))
    client = app.test_client()
    payloads = [image_bytes("PNG", color=(i * 60, 30, 90)) for i in range(3)]
    ids = [submit(client, data, "x.png", "image/png").get_json()["job_id"] for data in payloads]
    describer = FailsInBatches(tiny_describer)

    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=describer).work(burst=True)

    assert describer.batches == [3, 1, 1, 1]
    for job_id in ids:
        status = client.get(f"/api/v1/status/{job_id}").get_json()
        assert status["status"] == "done" and status["attempts"] == 1 and "error" not in status
