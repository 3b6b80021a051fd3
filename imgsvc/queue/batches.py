"""RQ's bookkeeping for a batch of jobs, in one Redis round trip per step instead of several per job.

RQ's SimpleWorker spends about fifteen round trips on each job: it moves the job to the
queue's intermediate list and fetches it, registers an execution (started registry, the
worker's execution index), marks the job started and stamps heartbeats, then stores the
result, moves the job to the finished registry, removes the execution and counts it, each
step a call or a pipeline of its own. For a batch, the worker issues the very same commands
(written by RQ's own methods into a pipeline), one pipeline per step for the whole batch:

    take     LMOVE queue -> intermediate for up to k-1 more jobs; HGETALL each   2 round trips
    start    execution, started registry, job STARTED, heartbeat, off the
             intermediate list; the worker BUSY; the ids next in the queue      1
    finish   result, FINISHED, finished registry, execution removed, counters;
             the worker IDLE (and the caller's metrics)                          1
             (the worker runs it on a thread of its own, beside the next batch)

Every state a job can be left in by a crash is one RQ already knows: taken but not started,
it is on the intermediate list (RQ's cleanup and imgsvc's reaper requeue it); started, it is
in the started registry with an execution naming this worker until it is finished, and the
reaper hands it to RQ's abandoned-job handling once this worker is gone. A job that fails
goes through RQ's own failure handling (retries, failed registry), one job at a time; one that
failed for good (a bad image: :class:`PermanentJobError`) goes straight to the failed registry. Jobs
this shortcut does not cover (another function, callbacks, repeats, rate limits, RQ
webhooks) are left to RQ's per-job path; a job with dependents is finished by RQ's
``handle_job_success``, which watches them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rq.executions import Execution
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.queue import Queue
from rq.utils import now
from rq.worker import WorkerStatus

from imgsvc.queue.connection import DESCRIBE_TASK, waiting_key
from imgsvc.queue.prefetch import PermanentJobError

if TYPE_CHECKING:
    from redis.client import Pipeline
    from rq.worker import BaseWorker


@dataclass
class Batch:
    """Jobs taken and started together; ``executions[i]`` is ``jobs[i]``'s run."""

    queue: Queue
    jobs: list[RQJob]
    executions: list[Execution] = field(default_factory=list)
    #: Jobs with dependents: finished by RQ's own handle_job_success, which watches them.
    with_dependents: set[str] = field(default_factory=set)
    #: The ids at the head of the queue once this batch was taken: the likely next batch.
    next_ids: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [job.id for job in self.jobs]

    @property
    def timeout(self) -> int:
        return max(job.timeout or Queue.DEFAULT_TIMEOUT for job in self.jobs)


def batchable(job: RQJob) -> bool:
    """A describe job with nothing for RQ to do beyond its lifecycle: what imgsvc enqueues."""
    callbacks = (job._success_callback_name, job._failure_callback_name, job._stopped_callback_name)
    return (
        job.func_name == DESCRIBE_TASK
        and not any(callbacks)
        and job.repeats_left is None
        and not job.webhooks
        and not job.has_rate_limit
    )


def take(worker: BaseWorker, queue: Queue, wanted: int, wait_ms: int) -> list[RQJob]:
    """Up to ``wanted`` jobs already waiting (or arriving within ``wait_ms``), moved from the head
    of ``queue`` to its intermediate list exactly as RQ's own dequeue does (LMOVE)."""
    ids: list[str] = []
    deadline = time.monotonic() + wait_ms / 1000
    while len(ids) < wanted:
        with queue.connection.pipeline(transaction=False) as pipe:
            for _ in range(wanted - len(ids)):
                pipe.lmove(queue.key, queue.intermediate_queue.key)
            ids += [raw.decode() for raw in pipe.execute() if raw is not None]
        if len(ids) >= wanted or time.monotonic() >= deadline:
            break
        time.sleep(0.002)
    if not ids:
        return []
    taken = []
    for job_id, job in zip(ids, RQJob.fetch_many(ids, queue.connection, worker.serializer), strict=True):
        if job is None:  # deleted meanwhile: RQ's dequeue skips it too
            queue.intermediate_queue.remove(job_id)
            continue
        job.redis_server_version = worker.get_redis_server_version()
        taken.append(job)
    return taken


def start(worker: BaseWorker, queue: Queue, jobs: list[RQJob], peek: int) -> Batch:
    """RQ's ``prepare_execution`` and ``prepare_job_execution`` for every job, in one transaction."""
    batch = Batch(queue, jobs)
    with worker.connection.pipeline() as pipe:
        for job in jobs:
            ttl = worker.get_heartbeat_ttl(job)
            execution = Execution.create(job, ttl, pipeline=pipe, worker_name=worker.name)
            worker.executions[execution.id] = execution
            batch.executions.append(execution)
            job.heartbeat(now(), ttl, pipeline=pipe)
            job.prepare_for_execution(worker.name, pipeline=pipe)
            pipe.persist(job.key)
            pipe.lrem(queue.intermediate_queue.key, 1, job.id)
        pipe.zrem(waiting_key(queue.name), *(job.id for job in jobs))
        worker.set_state(WorkerStatus.BUSY, pipeline=pipe)
        worker.heartbeat(max(worker.get_heartbeat_ttl(job) for job in jobs), pipeline=pipe)
        dependents_at = len(pipe)
        for job in jobs:
            pipe.exists(job.dependents_key)
        pipe.lrange(queue.key, 0, peek - 1)
        replies = pipe.execute()
    dependents = replies[dependents_at : dependents_at + len(jobs)]
    batch.with_dependents = {job.id for job, count in zip(jobs, dependents, strict=True) if count}
    batch.next_ids = [raw.decode() for raw in replies[-1]]
    return batch


def peek(queue: Queue, count: int) -> list[str]:
    """The ids at the head of ``queue`` now (taking none): what the next batch will likely be."""
    return [raw.decode() for raw in queue.connection.lrange(queue.key, 0, count - 1)]


def finish(
    worker: BaseWorker, batch: Batch, returned: dict[str, Any], pipe: Pipeline, *, idle: bool = True
) -> None:
    """RQ's success handling for the jobs in ``returned`` (job id -> return value), then the
    worker IDLE, added to ``pipe`` (a transaction that may already hold the caller's commands,
    e.g. metrics) and executed: one round trip for the batch.

    ``idle=False`` leaves the worker's state alone: for a finish run off the worker's main
    thread, which may have started the next batch (BUSY) meanwhile; RQ's loop sets IDLE itself.
    """
    runs = [(job, run) for job, run in zip(batch.jobs, batch.executions, strict=True) if job.id in returned]
    ended = now()
    for job, execution in runs:
        job.ended_at = ended
        job._result = returned[job.id]
        job._status = JobStatus.FINISHED
        if job.id in batch.with_dependents:
            continue
        job.heartbeat(ended, job.success_callback_timeout, pipeline=pipe)
        worker.increment_successful_job_count(pipeline=pipe)
        worker.increment_total_working_time(job.ended_at - job.started_at, pipe)
        result_ttl = job.get_result_ttl(worker.default_result_ttl)
        if result_ttl != 0:
            job._handle_success(
                result_ttl,
                pipeline=pipe,
                worker_name=worker.name,
                execution_id=execution.id,
                execution_started_at=execution.created_at,
                execution_ended_at=job.ended_at,
            )
        job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
        worker.cleanup_execution(job, pipeline=pipe, execution=execution)
    watched = [(job, run) for job, run in runs if job.id in batch.with_dependents]
    if idle and not watched:
        worker.set_state(WorkerStatus.IDLE, pipeline=pipe)
    pipe.execute()
    for job, execution in watched:
        job.heartbeat(ended, job.success_callback_timeout)
        worker.handle_job_success(job, batch.queue, batch.queue.started_job_registry, execution)
    if idle and watched:
        worker.set_state(WorkerStatus.IDLE)


def fail(worker: BaseWorker, batch: Batch, failed: dict[str, Exception]) -> None:
    """RQ's own failure handling (retry, or the failed registry), one job at a time: the rare path."""
    for job, execution in zip(batch.jobs, batch.executions, strict=True):
        exc = failed.get(job.id)
        if isinstance(exc, PermanentJobError):
            job.retries_left = 0  # failed for good: RQ's failed registry, with the reason, no retry
        if exc is not None:
            worker._finalize_failure(job, batch.queue, execution, (type(exc), exc, exc.__traceback__))
