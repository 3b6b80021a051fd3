"""Fault injection with real Redis, real worker processes and real files: no job is lost or stuck.

Workers are SIGKILLed and SIGTERMed mid-job, a private redis-server is killed and restarted,
a job overruns JOB_TIMEOUT, and RQ's records are damaged under the reaper's feet.
"""

from __future__ import annotations

import io
import signal
import subprocess
import time
from collections import Counter
from datetime import timedelta

import pytest
from rq import SimpleWorker
from rq.job import Job as RQJob
from rq.job import JobStatus
from sqlalchemy import select

from imgsvc import create_app
from imgsvc.config import Settings
from imgsvc.queue import reaper
from imgsvc.queue.connection import waiting_key
from imgsvc.queue.worker import ImgsvcWorker
from imgsvc.storage import jobs
from imgsvc.storage.db import db
from imgsvc.vision.base import Describer
from tests.conftest import image_bytes, worker_env
from tests.integration.procs import RedisServer, kill_group, start_worker, wait_until

JOB_COUNT = 20


def submit_image(client, n: int):
    """A distinct small PNG per ``n``, so no two jobs share an image."""
    data = image_bytes("PNG", size=(48, 40), color=(n * 37 % 256, n * 11 % 256, 200 - n))
    return client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(data), f"{n}.png", "image/png")},
        content_type="multipart/form-data",
    )


def submit_ok(client, n: int) -> str:
    response = submit_image(client, n)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job_id"]


def rows(app) -> dict[str, jobs.Job]:
    """Every row, read fresh (a new app context is a new session)."""
    with app.app_context():
        found = {row.id: row for row in db.session.scalars(select(jobs.Job))}
        db.session.expunge_all()
        return found


def statuses(app) -> Counter:
    return Counter(row.status for row in rows(app).values())


def in_flight(app) -> dict[str, int]:
    """Rows by status, plus ``taken``: unfinished rows whose RQ job is no longer on the queue list."""
    on_queue = set(app.task_queue.get_job_ids())
    current = rows(app)
    counts = Counter(row.status for row in current.values())
    unfinished = {i for i, row in current.items() if row.status not in (jobs.Status.DONE, jobs.Status.FAILED)}
    return {
        "done": counts[jobs.Status.DONE],
        "processing": counts[jobs.Status.PROCESSING],
        "queued": counts[jobs.Status.QUEUED],
        "taken": len(unfinished - on_queue),
    }


def record_reconcile(monkeypatch) -> list[dict[str, int]]:
    """Every pass the worker's own reaper makes, with what it did."""
    passes: list[dict[str, int]] = []
    real = reaper.reconcile

    def recording(settings: Settings, queue) -> dict[str, int]:
        passes.append(real(settings, queue))
        return passes[-1]

    monkeypatch.setattr(reaper, "reconcile", recording)
    return passes


@pytest.mark.parametrize("batch_size", [1, 4])
def test_worker_sigkilled_mid_batch_loses_no_job(
    app, client, settings, tmp_path, monkeypatch, tiny_describer, batch_size
):
    """With BATCH_SIZE=1 the killed job's row is left `processing`; with 4, a whole batch was
    taken off the queue and is still `queued` in SQL. The next worker's reaper recovers both."""
    ids = [submit_ok(client, n) for n in range(JOB_COUNT)]
    log = tmp_path / "worker.log"

    def mid_job() -> bool:
        """The first batch is done and the next one is in the (slowed) forward pass."""
        now = in_flight(app)
        return now["done"] >= batch_size and now["taken"] >= 1 and (now["processing"] or batch_size > 1)

    doomed = start_worker(worker_env(settings, BATCH_SIZE=str(batch_size)), delay=0.5, log=log)
    try:
        assert wait_until(mid_job, timeout=40), log.read_text()[-3000:]
    finally:
        kill_group(doomed)
    at_kill = in_flight(app)
    assert at_kill["taken"] >= 1 and at_kill["done"] < JOB_COUNT
    if batch_size == 1:
        assert at_kill["processing"] == 1

    # The next worker, long before RQ would judge the run abandoned (JOB_TIMEOUT + 60 s).
    passes = record_reconcile(monkeypatch)
    started = time.monotonic()
    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer).work(burst=True)
    recovery_s = time.monotonic() - started

    reaped = sum(map(Counter, passes), Counter())
    final = rows(app)
    print(
        f"\nkill test (BATCH_SIZE={batch_size}): submitted={len(ids)} done_at_kill={at_kill['done']} "
        f"processing_at_kill={at_kill['processing']} taken_at_kill={at_kill['taken']} "
        f"reaped={dict(reaped)} done_after={statuses(app)[jobs.Status.DONE]} recovery_s={recovery_s:.1f}"
    )
    assert sorted(final) == sorted(ids)
    assert statuses(app) == Counter({jobs.Status.DONE: JOB_COUNT})
    assert all(row.description is not None for row in final.values())
    assert sum(reaped.values()) == at_kill["taken"]
    if batch_size == 1:
        assert reaped == Counter(reset=1)


def test_sigterm_lets_the_running_job_finish_and_leaves_the_rest_queued(
    app, client, settings, tmp_path, run_worker
):
    running, waiting = submit_ok(client, 1), submit_ok(client, 2)
    log = tmp_path / "worker.log"
    worker = start_worker(worker_env(settings), delay=1.0, log=log)
    try:
        assert wait_until(lambda: rows(app)[running].status == jobs.Status.PROCESSING, timeout=30)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0, log.read_text()[-3000:]
    finally:
        kill_group(worker)

    now = rows(app)
    assert now[running].status == jobs.Status.DONE and now[running].description is not None
    assert now[waiting].status == jobs.Status.QUEUED and now[waiting].attempts == 0
    assert waiting in app.task_queue.get_job_ids()
    run_worker()
    assert rows(app)[waiting].status == jobs.Status.DONE


def test_redis_down_is_503_and_jobs_survive_its_restart(settings, tmp_path, tiny_describer):
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        app = create_app(settings.with_(redis_url=server.url))
        client = app.test_client()
        before = [submit_ok(client, n) for n in range(3)]

        server.kill()
        refused = submit_image(client, 3)
        assert refused.status_code == 503, refused.get_data(as_text=True)
        assert refused.get_json()["error"]["code"] == "queue_unavailable"
        assert sorted(rows(app)) == sorted(before)
        assert len(list(settings.upload_dir.iterdir())) == len(before)  # no orphan upload, no temp file

        server.start()  # same --dir: the append-only file brings the queue back
        after = submit_ok(client, 4)  # same app, same connection pool
        assert set(app.task_queue.get_job_ids()) == {*before, after}

        ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer).work(
            burst=True
        )
        assert statuses(app) == Counter({jobs.Status.DONE: 4})
    finally:
        server.kill()


class SleepyDescriber(Describer):
    """A forward pass that hangs, as a wedged GPU would."""

    name = "sleepy"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0

    def describe_full(self, images, options=None):
        self.calls += 1
        time.sleep(self.seconds)
        raise AssertionError("the job timeout should have interrupted this")


@pytest.mark.parametrize("retries", [0, 1])
def test_job_over_timeout_is_killed_then_retried_or_failed(settings, redis_db, retries):
    app = create_app(settings.with_(job_timeout=1, task_max_retries=retries))
    job_id = submit_ok(app.test_client(), 1)
    describer = SleepyDescriber(30)

    started = time.monotonic()
    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=describer).work(burst=True)

    assert time.monotonic() - started < 10  # each try was cut at 1 s, not left to sleep 30
    assert describer.calls == retries + 1
    row = rows(app)[job_id]
    assert row.status == jobs.Status.FAILED and row.attempts == retries + 1
    assert "JobTimeoutException" in row.error and "timeout" in row.error
    assert RQJob.fetch(job_id, connection=app.redis).get_status() == JobStatus.FAILED


def test_reaper_requeues_a_job_that_vanished_from_redis(app, client, settings, run_worker):
    job_id = submit_ok(client, 1)
    app.redis.delete(RQJob.key_for(job_id))
    app.redis.lrem(app.task_queue.key, 0, job_id)
    app.redis.zrem(waiting_key(app.task_queue.name), job_id)  # written with the job: lost with it
    assert app.task_queue.get_job_ids() == []

    with app.app_context():
        assert reaper.reconcile(settings, app.task_queue) == {
            "requeued": 1,
            "failed": 0,
            "reset": 0,
            "cancelled": 0,
        }
    assert app.task_queue.get_job_ids() == [job_id]
    run_worker()
    assert rows(app)[job_id].status == jobs.Status.DONE


def mark_processing(job_id: str) -> bool:
    """The row claimed as a worker claims it, without a worker (a test's shortcut)."""
    return job_id in jobs.claim_jobs([job_id])[0]


def test_reaper_fails_a_row_whose_rq_job_failed(app, client, settings):
    job_id = submit_ok(client, 1)
    with app.app_context():
        mark_processing(job_id)
    rq_job = RQJob.fetch(job_id, connection=app.redis)
    app.task_queue.remove(rq_job)
    rq_job.set_status(JobStatus.FAILED)

    with app.app_context():
        assert reaper.reconcile(settings, app.task_queue) == {
            "requeued": 0,
            "failed": 1,
            "reset": 0,
            "cancelled": 0,
        }
    row = rows(app)[job_id]
    assert row.status == jobs.Status.FAILED and "died" in row.error


def orphan_started_job(app, job_id: str, *, row_processing: bool = True) -> tuple[SimpleWorker, RQJob]:
    """What a SIGKILL leaves behind, built by hand: RQ says STARTED, the row says processing
    (or, for a batch's later jobs, still queued)."""
    worker = SimpleWorker([app.task_queue], connection=app.redis)
    worker.register_birth()
    job, _ = app.task_queue.dequeue_any([app.task_queue], None, connection=app.redis)
    assert job.id == job_id
    worker.prepare_execution(job)
    worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
    if row_processing:
        with app.app_context():
            mark_processing(job_id)
    return worker, job


@pytest.mark.parametrize("how", ["key expired", "death registered", "pid gone"])
def test_reaper_takes_back_a_started_job_whose_worker_is_dead(app, client, settings, run_worker, how):
    job_id = submit_ok(client, 1)
    dead, job = orphan_started_job(app, job_id)
    # Alive on this host under another live pid (1 always is): a long job, left alone.
    app.redis.hset(dead.key, "pid", "1")
    with app.app_context():
        assert reaper.reconcile(settings, app.task_queue) == {
            "requeued": 0,
            "failed": 0,
            "reset": 0,
            "cancelled": 0,
        }
    assert job.get_status() == JobStatus.STARTED

    if how == "key expired":
        app.redis.delete(dead.key)
    elif how == "death registered":
        dead.register_death()
    else:
        app.redis.hset(dead.key, "pid", str(_dead_pid()))
    with app.app_context():
        assert reaper.reconcile(settings, app.task_queue) == {
            "requeued": 0,
            "failed": 0,
            "reset": 1,
            "cancelled": 0,
        }
    assert job.get_status() == JobStatus.QUEUED and app.task_queue.get_job_ids() == [job_id]
    assert app.task_queue.started_job_registry.get_job_ids(cleanup=False) == []
    run_worker()
    row = rows(app)[job_id]
    assert row.status == jobs.Status.DONE and row.attempts == 2


def test_a_worker_dead_before_rq_finished_its_written_batch_leaves_the_results_done(
    app, client, settings, tiny_describer, monkeypatch
):
    """RQ's finish of a batch runs beside the next batch, after the rows are written: a worker
    that dies in between leaves its jobs started in RQ. The reaper takes them back and the next
    worker ends them in RQ without running the model again or touching the rows' results."""
    from imgsvc.queue import batches

    ids = [submit_ok(client, n) for n in range(3)]
    real_finish = batches.finish
    monkeypatch.setattr(batches, "finish", lambda *args, **kwargs: None)  # the process died first
    dead = ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer)
    dead.work(burst=True)
    before = rows(app)
    assert {row.status for row in before.values()} == {jobs.Status.DONE}
    assert sorted(app.task_queue.started_job_registry.get_job_ids(cleanup=False)) == sorted(ids)

    monkeypatch.setattr(batches, "finish", real_finish)
    with app.app_context():
        assert reaper.reconcile(settings, app.task_queue)["failed"] == 0
    calls: list[int] = []

    class Counting(Describer):
        name = tiny_describer.name
        supported_options = tiny_describer.supported_options

        def describe_full(self, images, options=None):
            calls.append(len(images))
            return tiny_describer.describe_full(images, options)

    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=Counting()).work(burst=True)

    assert calls == []
    after = rows(app)
    for job_id in ids:
        assert after[job_id].status == jobs.Status.DONE
        assert after[job_id].description == before[job_id].description
        assert after[job_id].completed_at == before[job_id].completed_at
        assert RQJob.fetch(job_id, connection=app.redis).get_status() == JobStatus.FINISHED
    assert app.task_queue.started_job_registry.get_job_ids(cleanup=False) == []
    assert app.task_queue.failed_job_registry.get_job_ids() == []


def test_the_reset_row_tells_the_user_the_job_is_queued_again(app, client, settings):
    """Between the reaper's pass and the next worker, status says queued and why, not processing."""
    job_id = submit_ok(client, 1)
    dead, _ = orphan_started_job(app, job_id)
    app.redis.delete(dead.key)
    with app.app_context():
        assert reaper.reconcile(settings, app.task_queue)["reset"] == 1
    row = rows(app)[job_id]
    assert (row.status, row.error) == (
        jobs.Status.QUEUED,
        "the worker running this job stopped; it was queued again",
    )


def test_a_job_taken_off_the_queue_by_a_worker_that_died_before_starting_it_is_requeued(
    app, client, settings, run_worker
):
    """RQ moved it to the queue's intermediate list (as a dequeue or a batch take does); no run began."""
    job_id = submit_ok(client, 1)
    app.redis.lmove(app.task_queue.key, app.task_queue.intermediate_queue.key)
    assert app.task_queue.get_job_ids() == []
    with app.app_context():
        assert reaper.reconcile(settings, app.task_queue) == {
            "requeued": 1,
            "failed": 0,
            "reset": 0,
            "cancelled": 0,
        }
    assert app.task_queue.get_job_ids() == [job_id]
    assert app.task_queue.intermediate_queue.get_job_ids() == []  # else RQ would fail the new run later
    run_worker()
    assert rows(app)[job_id].status == jobs.Status.DONE


@pytest.mark.parametrize(("attempts", "action"), [(1, "requeued"), (2, "requeued"), (3, "failed")])
def test_a_lost_job_is_requeued_until_its_tries_are_spent(settings, redis_db, attempts, action):
    """TASK_MAX_RETRIES=2 allows three tries: a row that lost its RQ job after its third is failed."""
    settings = settings.with_(task_max_retries=2)
    app = create_app(settings)
    job_id = submit_ok(app.test_client(), 1)
    with app.app_context():
        mark_processing(job_id)
        row = db.session.get(jobs.Job, job_id)
        row.attempts = attempts
        db.session.commit()
    app.redis.delete(RQJob.key_for(job_id))
    app.redis.lrem(app.task_queue.key, 0, job_id)
    app.redis.zrem(waiting_key(app.task_queue.name), job_id)  # written with the job: lost with it
    with app.app_context():
        assert reaper.reconcile(settings, app.task_queue)[action] == 1
    row = rows(app)[job_id]
    if action == "failed":
        assert (row.status, row.error) == (jobs.Status.FAILED, f"gave up after {row.attempts} attempts")
    else:
        assert (row.status, row.error) == (
            jobs.Status.QUEUED,
            "the job was lost by the queue; it was queued again",
        )
        assert app.task_queue.get_job_ids() == [job_id]


def test_reaper_reports_a_dead_workers_batch_job_that_had_not_begun(app, client, settings, run_worker):
    """A batch starts all its jobs in RQ at once; the rows turn `processing` one model pass later.
    Killed in between, the row needs no change, but the job was taken back and the report says so."""
    job_id = submit_ok(client, 1)
    dead, job = orphan_started_job(app, job_id, row_processing=False)
    app.redis.delete(dead.key)
    with app.app_context():
        assert reaper.reconcile(settings, app.task_queue) == {
            "requeued": 1,
            "failed": 0,
            "reset": 0,
            "cancelled": 0,
        }
    assert job.get_status() == JobStatus.QUEUED and app.task_queue.get_job_ids() == [job_id]
    run_worker()
    assert rows(app)[job_id].status == jobs.Status.DONE


def test_reaper_fails_a_dead_workers_job_with_no_retries_left(settings, redis_db):
    """A worker death counts as a failed try, so a job that kills its worker cannot loop forever."""
    app = create_app(settings.with_(task_max_retries=0))
    job_id = submit_ok(app.test_client(), 1)
    dead, job = orphan_started_job(app, job_id)
    app.redis.delete(dead.key)
    with app.app_context():
        assert reaper.reconcile(settings, app.task_queue) == {
            "requeued": 0,
            "failed": 1,
            "reset": 0,
            "cancelled": 0,
        }
    assert job.get_status() == JobStatus.FAILED and job_id in app.task_queue.failed_job_registry
    row = rows(app)[job_id]
    assert row.status == jobs.Status.FAILED and "no retries" in row.error


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_the_reaper_waits_stale_after_before_it_requeues(settings, redis_db, tiny_describer):
    """A row with no RQ job is normal for a moment (submit writes the row, then enqueues):
    only a row unchanged for STALE_AFTER seconds is judged lost."""
    app = create_app(settings.with_(stale_after=600))
    job_id = submit_ok(app.test_client(), 1)
    app.redis.delete(RQJob.key_for(job_id))
    app.redis.lrem(app.task_queue.key, 0, job_id)
    app.redis.zrem(waiting_key(app.task_queue.name), job_id)  # written with the job: lost with it
    reap = app.test_cli_runner()

    assert reap.invoke(args=["reap"]).output.strip() == "0 requeued, 0 failed, 0 reset, 0 cancelled"
    assert app.task_queue.get_job_ids() == []

    with app.app_context():
        row = db.session.get(jobs.Job, job_id)
        row.updated_at = jobs.utcnow() - timedelta(seconds=601)
        db.session.commit()
    assert reap.invoke(args=["reap"]).output.strip() == "1 requeued, 0 failed, 0 reset, 0 cancelled"
    assert app.task_queue.get_job_ids() == [job_id]
    ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=tiny_describer).work(burst=True)
    assert rows(app)[job_id].status == jobs.Status.DONE
