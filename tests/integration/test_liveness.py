"""A dead worker is noticed within a minute: by /readyz, by the next worker, and by the survivors.

The security review: a job killed mid-run stayed `processing` 6 min 18 s (RQ's own timeout
recovered it, not the reaper), and /readyz said "ready, workers: 1" for ~240 s with its only
worker SIGKILLed. Here the production STALE_AFTER (600 s) applies, so nothing is rescued by
the stale-row pass: only heartbeats and the dead-worker sweep can do it in time.
"""

from __future__ import annotations

import io
import time
from datetime import timedelta

import pytest
from rq.job import JobStatus
from rq.utils import now, utcformat

from imgsvc import create_app
from imgsvc.queue import reaper
from imgsvc.storage import jobs
from tests.conftest import image_bytes, worker_env
from tests.integration.procs import kill_group, start_worker, wait_until
from tests.integration.test_faults import orphan_started_job, rows

WORKER_TTL = 3
#: How long a dead worker may hold a job or the ready flag: the issue's "within a minute".
WITHIN = 60


@pytest.fixture()
def live_app(settings):
    """The production reaper cadence for old rows; a short heartbeat TTL so the test is quick."""
    app = create_app(settings.with_(stale_after=600, worker_ttl=WORKER_TTL))
    yield app


def submit(app) -> str:
    response = app.test_client().post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(image_bytes("PNG")), "a.png", "image/png")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job_id"]


def ready(app) -> bool:
    return app.test_client().get("/readyz").status_code == 200


def env(settings, **extra: str) -> dict[str, str]:
    return worker_env(settings, STALE_AFTER="600", WORKER_TTL=str(WORKER_TTL), **extra)


def test_sigkilled_only_worker_is_unready_at_once_and_its_job_completes_on_the_next(
    live_app, settings, tmp_path
):
    job_id = submit(live_app)
    log = tmp_path / "worker.log"
    doomed = start_worker(env(settings), delay=60, log=log)  # a forward pass far longer than WORKER_TTL
    try:
        assert wait_until(lambda: rows(live_app)[job_id].status == jobs.Status.PROCESSING, 60), (
            log.read_text()
        )
        assert ready(live_app)  # beating inside a long job: alive
    finally:
        kill_group(doomed)

    assert wait_until(lambda: not ready(live_app), WITHIN)
    body = live_app.test_client().get("/readyz").get_json()
    assert body["checks"]["workers"] == 0

    successor = start_worker(env(settings), log=log)
    try:
        assert wait_until(lambda: rows(live_app)[job_id].status == jobs.Status.DONE, WITHIN), log.read_text()[
            -3000:
        ]
    finally:
        kill_group(successor)
    row = rows(live_app)[job_id]
    assert row.attempts == 2 and row.description


def test_a_surviving_worker_takes_over_a_dead_workers_job(live_app, settings, tmp_path):
    job_id = submit(live_app)
    log = tmp_path / "worker.log"
    doomed = start_worker(env(settings), delay=60, log=log)
    survivor = None
    try:
        assert wait_until(lambda: rows(live_app)[job_id].status == jobs.Status.PROCESSING, 60), (
            log.read_text()
        )
        survivor = start_worker(env(settings), log=log)
        assert wait_until(
            lambda: live_app.test_client().get("/readyz").get_json()["checks"]["workers"] == 2, 60
        )
        # Several sweeps of the survivor meanwhile: a worker that beats is not robbed of its job.
        time.sleep(3 * WORKER_TTL)
        row = rows(live_app)[job_id]
        assert (row.status, row.attempts) == (jobs.Status.PROCESSING, 1)

        kill_group(doomed)
        assert wait_until(lambda: rows(live_app)[job_id].status == jobs.Status.DONE, WITHIN), log.read_text()[
            -3000:
        ]
    finally:
        kill_group(doomed)
        if survivor is not None:
            kill_group(survivor)
    assert rows(live_app)[job_id].attempts == 2


@pytest.mark.parametrize("heartbeat_age", [1, 60])
def test_a_worker_on_another_host_is_dead_once_its_heartbeat_is_stale(live_app, settings, heartbeat_age):
    """No pid to check across hosts (or containers): only the heartbeat tells."""
    job_id = submit(live_app)
    other, job = orphan_started_job(live_app, job_id)
    beat = utcformat(now() - timedelta(seconds=heartbeat_age))
    live_app.redis.hset(other.key, mapping={"hostname": "another-host", "last_heartbeat": beat})

    live_settings = live_app.config["IMGSVC"]
    with live_app.app_context():
        counts = reaper.reap_dead_workers(live_settings, live_app.task_queue)
    stale = heartbeat_age > WORKER_TTL
    assert counts == {"requeued": 0, "failed": 0, "reset": int(stale), "cancelled": 0}
    assert job.get_status() == (JobStatus.QUEUED if stale else JobStatus.STARTED)
    assert rows(live_app)[job_id].status == (jobs.Status.QUEUED if stale else jobs.Status.PROCESSING)
    assert live_app.test_client().get("/readyz").get_json()["checks"]["workers"] == int(not stale)
