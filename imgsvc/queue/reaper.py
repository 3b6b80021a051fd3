"""Reconcile job rows with RQ so no job is lost or stuck when a worker or Redis dies.

Two kinds of rows are compared with their RQ job: every job in RQ's started registry
whose worker is gone (its key expired or records its death, its heartbeat is older
than WORKER_TTL, or it ran on this host under a pid that is no longer alive), at once
whatever the row's age; and any row that has not moved for STALE_AFTER seconds.
Missing from Redis (Redis lost it, or a worker died between dequeue and start) ->
enqueued again; started by a worker that is gone -> handed to RQ's abandoned-job
handling (retried, or failed with no retries left) instead of after its heartbeat TTL
(JOB_TIMEOUT + 60 s), a job whose row is already done included (the next worker ends it
in RQ); failed in RQ -> failed in SQL; requeued by RQ after an abandoned run -> shown as
queued again; removed from RQ on purpose while waiting (``rq empty``, the
dashboard) -> cancelled, with the reason; failed but put back on the queue (``rq requeue``)
-> queued again, and run again by the next worker.
:func:`reap_dead_workers` (the first kind only) runs in every worker's maintenance loop,
every WORKER_TTL/3 seconds, so a dead worker's jobs are running again within about a
minute; :func:`reconcile` (both) runs at worker start-up, every STALE_AFTER/2 seconds
and as ``flask reap``. Both go over every model's queue, whichever worker runs them, so the
jobs of a model whose workers all died are reaped by the others; a lost job is enqueued
again on the queue its row names.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

import click
from flask import current_app
from flask.cli import with_appcontext
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.utils import now, utcparse

from imgsvc.config import Settings, app_settings
from imgsvc.queue.connection import enqueue_describe, job_queue, waiting_key
from imgsvc.queue.routing import ModelRegistry
from imgsvc.storage import jobs

log = logging.getLogger("imgsvc.reaper")

ALIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


def reconcile(settings: Settings, queue: Queue) -> dict[str, int]:
    """One pass over dead workers' jobs and stale rows; returns counts per action (for logs and tests).

    ``queue`` is the default queue; every model's queue is gone over (:mod:`imgsvc.queue.routing`).
    """
    return _reconcile_rows(settings, queue, stale_rows=True)


def reap_dead_workers(settings: Settings, queue: Queue) -> dict[str, int]:
    """Only the jobs of workers that are gone: cheap enough for every maintenance round."""
    return _reconcile_rows(settings, queue, stale_rows=False)


#: Why a row is cancelled whose RQ job someone removed from the queue.
REMOVED_FROM_QUEUE = "cancelled: its job was removed from the queue in RQ (rq empty, or the dashboard)"


def _reconcile_rows(settings: Settings, queue: Queue, *, stale_rows: bool) -> dict[str, int]:
    counts = {"requeued": 0, "failed": 0, "reset": 0, "cancelled": 0}
    try:
        registry = ModelRegistry(queue, settings.worker_ttl)
        queued_ids: set[str] = set()
        started: dict[str, bool] = {}
        for each in registry.queues():  # job ids are row ids, unique across queues
            ids = set(each.get_job_ids())
            counts["cancelled"] += cancel_removed(each, ids)
            queued_ids |= ids
            started |= started_jobs(each, settings.worker_ttl)
        if stale_rows and queued_ids:
            reopen_requeued(queued_ids)
        rows: dict[str, jobs.Job] = {}
        if stale_rows:
            cutoff = jobs.utcnow() - timedelta(seconds=settings.stale_after)
            rows = {row.id: row for row in jobs.unfinished_before(cutoff)}
        for job_id, alive in started.items():
            row = None if alive or job_id in rows else jobs.get_job(job_id)
            if row is not None and row.status in (
                jobs.Status.QUEUED,
                jobs.Status.PROCESSING,
                jobs.Status.DONE,
            ):
                rows[job_id] = row
        for row in rows.values():
            action = _reconcile_one(settings, registry.queue(row.queue), row, queued_ids, started)
            if action:
                counts[action] += 1
                log.warning("job reconciled", extra={"job_id": row.id, "action": action})
    except RedisError as exc:
        log.warning("reaper skipped: Redis unavailable (%s)", exc)
    return counts


def cancel_removed(queue: Queue, queued_ids: set[str]) -> int:
    """Cancel the rows of waiting jobs that were removed from RQ on purpose, e.g. by ``rq empty``.

    A job enqueued by imgsvc is in the waiting set until a worker starts it, written in the same
    transaction as RQ's job; one still in the set, off the queue and without its RQ job was
    deleted by someone, not lost by Redis (which would have lost both). Such a row is cancelled
    with the reason, never enqueued again.
    """
    key = waiting_key(queue.name)
    candidates = [raw.decode() for raw in queue.connection.zrange(key, 0, -1)]
    candidates = [job_id for job_id in candidates if job_id not in queued_ids]
    if not candidates:
        return 0
    with queue.connection.pipeline(transaction=False) as pipeline:
        for job_id in candidates:
            pipeline.exists(RQJob.key_for(job_id))
        present = pipeline.execute()
    removed = [job_id for job_id, exists in zip(candidates, present, strict=True) if not exists]
    if not removed:
        return 0
    cancelled = jobs.cancel_queued(removed, REMOVED_FROM_QUEUE)
    queue.connection.zrem(key, *removed)
    for job_id in cancelled:
        log.warning("job cancelled", extra={"job_id": job_id, "reason": "removed from the queue in RQ"})
    return len(cancelled)


def reopen_requeued(queued_ids: set[str]) -> None:
    """Failed rows whose RQ job is on the queue again (``rq requeue``, the dashboard) say queued."""
    ids = sorted(queued_ids)
    for start in range(0, len(ids), 500):
        jobs.reopen_failed(ids[start : start + 500])


def started_jobs(queue: Queue, worker_ttl: int) -> dict[str, bool]:
    """Job id -> whether the worker holding it is alive, for every job in RQ's started registry.

    The worker is read from the run (RQ's execution), not from the job: a batch's jobs
    are registered as started before the worker has begun each of them.
    """
    entries = queue.started_job_registry.get_job_and_execution_ids(cleanup=False)
    with queue.connection.pipeline(transaction=False) as pipeline:
        for job_id, execution_id in entries:
            pipeline.hget(Execution(execution_id, job_id, connection=queue.connection).key, "worker_name")
        names = pipeline.execute()
    verdicts: dict[str | None, bool] = {}
    started: dict[str, bool] = {}
    for (job_id, _), raw in zip(entries, names, strict=True):
        name = raw.decode() if raw else None
        if name not in verdicts:
            verdicts[name] = not _worker_is_gone(queue.connection, name, worker_ttl)
        started[job_id] = started.get(job_id, False) or verdicts[name]
    return started


def _reconcile_one(
    settings: Settings, queue: Queue, row: jobs.Job, queued_ids: set[str], started: dict[str, bool]
) -> str | None:
    try:
        rq_job = RQJob.fetch(row.id, connection=queue.connection)
        status = rq_job.get_status()
    except NoSuchJobError:
        rq_job, status = None, None

    if row.status == jobs.Status.DONE:
        # Its result written, its worker gone before RQ finished it (the worker finishes a batch
        # in RQ beside the next one): RQ retries it, and the next worker, finding the row done,
        # ends it in RQ without running it. The row needs nothing, so nothing is counted.
        if status == JobStatus.STARTED and _worker_is_gone(
            queue.connection, rq_job.worker_name, settings.worker_ttl
        ):
            _abandon(queue, rq_job)
        return None
    abandoned = False
    if status == JobStatus.QUEUED and row.id not in queued_ids:
        if started.get(row.id):
            return None  # in a live worker's batch, not begun yet
        status = None  # taken off the list by a worker that died before starting it
    elif status == JobStatus.STARTED and _worker_is_gone(
        queue.connection, rq_job.worker_name, settings.worker_ttl
    ):
        status, abandoned = _abandon(queue, rq_job), True
    if status in ALIVE:
        if row.status == jobs.Status.PROCESSING and status in {JobStatus.QUEUED, JobStatus.SCHEDULED}:
            jobs.mark_retrying(row.id, "the worker running this job stopped; it was queued again")
            return "reset"
        # A batch's later jobs are STARTED in RQ while their rows still say queued: RQ retried
        # them, and the report must say so even though the row needs no change.
        return "requeued" if abandoned else None
    if status == JobStatus.FAILED:
        jobs.mark_failed(row.id, "the worker running this job died and no retries were left")
        return "failed"
    if row.attempts > settings.task_max_retries:
        jobs.mark_failed(row.id, f"gave up after {row.attempts} attempts")
        return "failed"
    if rq_job is not None:
        rq_job.delete()
    queue.intermediate_queue.remove(row.id)  # else RQ's own cleanup later fails the new run
    if row.status == jobs.Status.PROCESSING:
        jobs.mark_retrying(row.id, "the job was lost by the queue; it was queued again")
    served = ModelRegistry(job_queue(settings, queue.connection), settings.worker_ttl).served()
    model = next((each.name for each in served if each.queue == queue.name), None)
    enqueue_describe(queue, settings, row.id, filename=row.filename, model=model)
    return "requeued"


def _worker_is_gone(connection: Redis, worker_name: str | None, worker_ttl: int) -> bool:
    """Whether the worker that started a job can no longer be running it.

    Its key expired or records its death; or it has not sent a heartbeat for WORKER_TTL
    seconds (an imgsvc worker beats every WORKER_TTL/3 s even inside a long job); or it
    ran on this host under a pid that is no longer a process, or is this very process
    (a restarted container reuses pids; the reaper never runs while its own worker is
    inside a job).
    """
    if not worker_name:
        return True
    key = Worker.redis_worker_namespace_prefix + worker_name
    hostname, pid, death, heartbeat = connection.hmget(key, "hostname", "pid", "death", "last_heartbeat")
    if hostname is None or death is not None:
        return True
    if heartbeat is None or (now() - utcparse(heartbeat.decode())).total_seconds() > worker_ttl:
        return True
    if hostname.decode() != socket.gethostname() or not pid:
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def _abandon(queue: Queue, rq_job: RQJob) -> JobStatus | None:
    """Let RQ treat a dead worker's job as abandoned now: expire its runs, then clean up.

    ``StartedJobRegistry.cleanup`` retries it (queued or scheduled) or, with no retries
    left, fails it. None when RQ had no run on record, so the job counts as lost.
    """
    registry = queue.started_job_registry
    with queue.connection.pipeline() as pipeline:
        for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
            if job_id == rq_job.id:
                execution = Execution(execution_id, job_id, connection=queue.connection)
                registry.add_execution(execution, pipeline, ttl=0, xx=True)
        pipeline.execute()
    registry.cleanup()
    status = rq_job.get_status()
    return None if status == JobStatus.STARTED else status


@click.command("reap")
@with_appcontext
def reap_command() -> None:
    """Reconcile stale job rows with RQ now (workers also do this periodically)."""
    settings = app_settings()
    counts = reconcile(settings, current_app.task_queue)
    click.echo(", ".join(f"{n} {action}" for action, n in counts.items()))
