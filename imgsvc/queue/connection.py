"""Redis and RQ handles built from settings, and the one way a job is enqueued."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import Queue, Retry, Worker
from rq.job import Job as RQJob
from rq.utils import now

from imgsvc.config import Settings
from imgsvc.errors import QueueUnavailable

DESCRIBE_TASK = "imgsvc.queue.tasks.describe_job"


def redis_connection(settings: Settings) -> Redis:
    """Short timeouts: a dead Redis must turn into a quick 503, not a hung request."""
    return Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=30,
        retry_on_timeout=False,
    )


def job_queue(settings: Settings, connection: Redis) -> Queue:
    return Queue(settings.queue_name, connection=connection)


def waiting_key(queue_name: str) -> str:
    """A sorted set of the describe jobs enqueued and not yet started (score: when).

    Written in the same transaction as RQ's job, so Redis can only lose both together: a
    member whose RQ job is gone was removed on purpose (``rq empty``, the dashboard), not lost.
    """
    return f"imgsvc:waiting:{queue_name}"


#: What a job's description in RQ keeps of a client's file name: plain text, nothing to escape.
_UNSAFE = re.compile(r"[^\w.\- ]+")


def describe_label(filename: str | None, model: str | None) -> str:
    """RQ's description of a job, as the dashboard and ``rq info`` show it."""
    name = _UNSAFE.sub("_", filename)[:80] if filename else "an upload"
    return f"describe {name} with {model or 'the running model'}"


@dataclass(frozen=True)
class Describe:
    """One describe job to enqueue: its row's id, where it goes, what RQ's listing says of it, and
    the caller's commands sent in the same round trip (``also``: a counter, a validator)."""

    queue: Queue
    job_id: str
    at_front: bool = False
    filename: str | None = None
    model: str | None = None
    also: Callable[[Pipeline], object] | None = None


def enqueue_describe(
    queue: Queue,
    settings: Settings,
    job_id: str,
    *,
    at_front: bool = False,
    also: Callable[[Pipeline], object] | None = None,
    filename: str | None = None,
    model: str | None = None,
) -> RQJob:
    """Enqueue under the row's own id, so re-enqueueing a job is idempotent.

    One round trip: RQ writes the job into a pipeline, ``also`` adds the caller's commands
    (the submit counter) to the same one.
    """
    (job,) = enqueue_describes(settings, [Describe(queue, job_id, at_front, filename, model, also)])
    return job


def enqueue_describes(settings: Settings, wanted: Sequence[Describe]) -> list[RQJob]:
    """Several describe jobs (and their callers' commands) in one transaction and one round trip:
    the submits that arrive together (:class:`imgsvc.submissions.SubmitGroup`). All or none."""
    retry = None
    if settings.task_max_retries > 0:
        retry = Retry(max=settings.task_max_retries, interval=settings.task_retry_delay)
    try:
        with wanted[0].queue.connection.pipeline() as pipe:
            made = []
            for one in wanted:
                made.append(
                    one.queue.enqueue(
                        DESCRIBE_TASK,
                        one.job_id,
                        job_id=one.job_id,
                        retry=retry,
                        job_timeout=settings.job_timeout,
                        result_ttl=settings.result_ttl,
                        failure_ttl=settings.result_ttl,
                        description=describe_label(one.filename, one.model),
                        at_front=one.at_front,
                        pipeline=pipe,
                    )
                )
                pipe.zadd(waiting_key(one.queue.name), {one.job_id: time.time()})
                if one.also is not None:
                    one.also(pipe)
            pipe.execute()
            return made
    except RedisError as exc:
        raise QueueUnavailable() from exc


def live_workers(queue: Queue, worker_ttl: int) -> list[Worker]:
    """Workers on ``queue`` whose last heartbeat is younger than WORKER_TTL seconds.

    A SIGKILLed worker's key outlives it by WORKER_TTL + 60 s; its silence tells sooner.
    """
    fresh_since = now() - timedelta(seconds=worker_ttl)
    return [w for w in Worker.all(queue=queue) if w.last_heartbeat and w.last_heartbeat >= fresh_since]
