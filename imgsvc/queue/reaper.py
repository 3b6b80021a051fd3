"""Reconcile job rows with RQ so no job is lost or stuck when a worker or Redis dies.

A row that has not moved for STALE_AFTER seconds is compared with its RQ job:
missing from Redis (Redis lost it, or a worker died between dequeue and start) ->
enqueued again; started by a worker that is gone -> handed to RQ's abandoned-job
handling at once (retried, or failed with no retries left) instead of after its
heartbeat TTL (JOB_TIMEOUT + 60 s); failed in RQ -> failed in SQL; requeued by RQ
after an abandoned run -> shown as queued again.
Runs at worker start-up, in the worker's maintenance loop, and as ``flask reap``.
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

from imgsvc.config import Settings
from imgsvc.queue.connection import enqueue_describe
from imgsvc.storage import jobs

log = logging.getLogger("imgsvc.reaper")

ALIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


def reconcile(settings: Settings, queue: Queue) -> dict[str, int]:
    """One pass over stale rows; returns counts per action (for logs and tests)."""
    counts = {"requeued": 0, "failed": 0, "reset": 0}
    cutoff = jobs.utcnow() - timedelta(seconds=settings.stale_after)
    try:
        queued_ids = set(queue.get_job_ids())
        for row in jobs.unfinished_before(cutoff):
            action = _reconcile_one(settings, queue, row, queued_ids)
            if action:
                counts[action] += 1
                log.warning("job reconciled", extra={"job_id": row.id, "action": action})
    except RedisError as exc:
        log.warning("reaper skipped: Redis unavailable (%s)", exc)
    return counts


def _reconcile_one(settings: Settings, queue: Queue, row: jobs.Job, queued_ids: set[str]) -> str | None:
    try:
        rq_job = RQJob.fetch(row.id, connection=queue.connection)
        status = rq_job.get_status()
    except NoSuchJobError:
        rq_job, status = None, None

    if status == JobStatus.QUEUED and row.id not in queued_ids:
        status = None  # taken off the list by a worker that died before starting it
    elif status == JobStatus.STARTED and _worker_is_gone(queue.connection, rq_job.worker_name):
        status = _abandon(queue, rq_job)
    if status in ALIVE:
        if row.status == jobs.Status.PROCESSING and status in {JobStatus.QUEUED, JobStatus.SCHEDULED}:
            jobs.mark_retrying(row.id, "the worker running this job stopped; it was queued again")
            return "reset"
        return None
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
    enqueue_describe(queue, settings, row.id)
    return "requeued"


def _worker_is_gone(connection: Redis, worker_name: str | None) -> bool:
    """Whether the worker that started a job can no longer be running it.

    Its key expired or records its death; or it ran on this host under a pid that is no
    longer a process, or is this very process (a restarted container reuses pids; the
    reaper never runs while its own worker is inside a job). A worker on another host
    counts as alive until its key expires.
    """
    if not worker_name:
        return True
    key = Worker.redis_worker_namespace_prefix + worker_name
    hostname, pid, death = connection.hmget(key, "hostname", "pid", "death")
    if hostname is None or death is not None:
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
    settings: Settings = current_app.config["IMGSVC"]
    counts = reconcile(settings, current_app.task_queue)
    click.echo(", ".join(f"{n} {action}" for action, n in counts.items()))
