"""Several models in one deployment, end to end: real ``python worker.py`` processes on two tiny
checkpoints (BLIP by VISION_MODEL on the default queue, GIT by ``--model`` on its own), jobs
routed by ``model``, refusals once a model's worker is gone, and ``rq worker`` on the default queue.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rq import Queue, Worker

from imgsvc import create_app
from imgsvc.queue import reaper
from imgsvc.queue.routing import ModelEntry, ModelRegistry, model_queue_name
from imgsvc.storage import jobs
from tests.conftest import image_bytes, worker_env
from tests.integration.procs import kill_group, start_worker, wait_until
from tests.integration.test_faults import rows

#: Two workers importing torch at once on a busy machine: generous, and only ever waited out on failure.
START = 180
FINISH = 120


@pytest.fixture(scope="module")
def tiny_git_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imgsvc.vision.testing_utils import build_tiny_model

    return build_tiny_model("git", tmp_path_factory.mktemp("models") / "tiny-git")


def submit(client, data: bytes, **form: str):
    return client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(data), "a.png"), **form},
        content_type="multipart/form-data",
    )


def listed(client) -> dict[str, dict]:
    return {m["name"]: m for m in client.get("/api/v1/models").get_json()["models"]}


def done(app, *ids: str) -> bool:
    found = rows(app)
    return all(found[i].status == jobs.Status.DONE for i in ids)


def test_two_workers_on_two_models_each_run_the_jobs_routed_to_it(settings, tiny_git_dir, tmp_path):
    app = create_app(settings.with_(worker_ttl=3))  # the workers' WORKER_TTL: a kill is seen in seconds
    client = app.test_client()
    blip, git = settings.vision_model, str(tiny_git_dir)
    log = tmp_path / "workers.log"
    env = worker_env(settings, WORKER_TTL="3")
    default_worker = start_worker(env, log=log)
    git_worker = start_worker(env, "--model", git, log=log)
    try:
        assert wait_until(
            lambda: {n: m["workers"] for n, m in listed(client).items()} == {blip: 1, git: 1}, START
        ), log.read_text()[-3000:]
        body = client.get("/api/v1/models").get_json()
        assert body["default"] == blip and [m["name"] for m in body["models"]] == [blip, git]
        assert body["models"][1] == {
            "name": git,
            "default": False,
            "workers": 1,
            "queue_depth": 0,
            "options": ["max_length", "prompt"],
            "generated_by": git,
        }
        metrics = client.get("/metrics").get_data(as_text=True)
        assert f'imgsvc_model_workers{{model="{git}"}} 1.0' in metrics
        assert "imgsvc_workers 2.0" in metrics

        # Distinct images, so that no job is answered from another's result.
        images = [image_bytes("PNG", color=(10 * i, 90, 200)) for i in range(6)]
        by_default = submit(client, images[0]).get_json()["job_id"]
        by_name = submit(client, images[1], model=blip).get_json()["job_id"]
        by_git = submit(client, images[2], model=git, max_length="6").get_json()["job_id"]
        batch = client.post(
            "/api/v1/batch",
            data={"file": [(io.BytesIO(images[3]), "b.png"), (io.BytesIO(images[4]), "c.png")], "model": git},
            content_type="multipart/form-data",
        )
        assert batch.status_code == 202, batch.get_json()
        in_batch = [entry["job_id"] for entry in batch.get_json()["jobs"]]
        everything = [by_default, by_name, by_git, *in_batch]
        assert wait_until(lambda: done(app, *everything), FINISH), log.read_text()[-3000:]

        found = rows(app)
        assert {i: found[i].generated_by for i in everything} == {
            by_default: blip,
            by_name: blip,
            by_git: git,
            **dict.fromkeys(in_batch, git),
        }
        assert found[by_git].options == {"max_length": 6}
        # Dedupe is per model: the bytes GIT described are known to GIT, and new to BLIP.
        assert submit(client, images[2], model=git, max_length="6").get_json()["cached"] is True
        assert "cached" not in submit(client, images[2], max_length="6").get_json()

        kill_group(git_worker)  # SIGKILL: its record stays until its heartbeat is stale
        assert wait_until(lambda: listed(client)[git]["workers"] == 0, 30)
        refused = submit(client, images[5], model=git)
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert refused.get_json()["error"] == {
            "code": "model_unavailable",
            "message": f"no live worker serves the model {git} now; "
            f"retry shortly (models served now: {blip})",
            "status": 503,
            "model": git,
            "served": [blip],
        }
        unknown = submit(client, images[5], model="florence-2-large")
        assert unknown.status_code == 400 and unknown.get_json()["error"]["code"] == "unknown_model"
        assert unknown.get_json()["error"]["served"] == [blip]
        assert len(rows(app)) == len(everything) + 2  # the refused jobs left no row
    finally:
        kill_group(git_worker)
        kill_group(default_worker, signal.SIGTERM)


def test_rq_worker_still_serves_the_default_queue(app, client, settings, tmp_path):
    """RQ's own command with imgsvc's worker class, as docs/deploy.md says."""
    job_id = submit(client, image_bytes("PNG")).get_json()["job_id"]
    rq = str(Path(sys.executable).parent / "rq")
    command = [rq, "worker", "-w", "imgsvc.queue.worker.ImgsvcWorker", "--burst"]
    command += ["--url", settings.redis_url, settings.queue_name]
    finished = subprocess.run(
        command, env=worker_env(settings), capture_output=True, text=True, timeout=START + FINISH
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    row = rows(app)[job_id]
    assert (row.status, row.generated_by) == (jobs.Status.DONE, settings.vision_model)
    # It said what it serves, like any imgsvc worker: the default model, on the default queue.
    listed_models = client.get("/api/v1/models").get_json()
    assert listed_models["default"] == settings.vision_model


def test_a_lost_job_of_a_model_is_requeued_on_that_models_queue(app, client, settings):
    registry = ModelRegistry(app.task_queue, settings.worker_ttl)
    queue = Queue(model_queue_name(settings.queue_name, "builtin:scene"), connection=app.redis)
    worker = Worker([queue], connection=app.redis)
    worker.register_birth()
    worker.heartbeat()
    registry.publish(ModelEntry("builtin:scene", "builtin:scene(x)", (), queue.name, worker.name))
    job_id = submit(client, image_bytes("PNG"), model="builtin:scene").get_json()["job_id"]
    app.redis.lrem(queue.key, 0, job_id)  # Redis lost it
    with app.app_context():
        assert reaper.reconcile(settings, app.task_queue)["requeued"] == 1
    assert queue.get_job_ids() == [job_id] and app.task_queue.count == 0
