"""Redis and RQ handles built from settings, and the one way a job is enqueued."""

from __future__ import annotations

import json
import re
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

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
    retry = None
    if settings.task_max_retries > 0:
        retry = Retry(max=settings.task_max_retries, interval=settings.task_retry_delay)
    try:
        with queue.connection.pipeline() as pipe:
            job = queue.enqueue(
                DESCRIBE_TASK,
                job_id,
                job_id=job_id,
                retry=retry,
                job_timeout=settings.job_timeout,
                result_ttl=settings.result_ttl,
                failure_ttl=settings.result_ttl,
                description=describe_label(filename, model),
                at_front=at_front,
                pipeline=pipe,
            )
            pipe.zadd(waiting_key(queue.name), {job_id: time.time()})
            if also is not None:
                also(pipe)
            pipe.execute()
            return job
    except RedisError as exc:
        raise QueueUnavailable() from exc


def live_workers(queue: Queue, worker_ttl: int) -> list[Worker]:
    """Workers on ``queue`` whose last heartbeat is younger than WORKER_TTL seconds.

    A SIGKILLed worker's key outlives it by WORKER_TTL + 60 s; its silence tells sooner.
    """
    fresh_since = now() - timedelta(seconds=worker_ttl)
    return [w for w in Worker.all(queue=queue) if w.last_heartbeat and w.last_heartbeat >= fresh_since]


def _model_key(settings: Settings) -> str:
    return f"imgsvc:model:{settings.queue_name}"


def publish_model(
    connection: Redis,
    settings: Settings,
    name: str,
    options: list[str],
    components: Sequence[str] = (),
    missing: Sequence[str] = (),
) -> None:
    """What the workers run, so the web side can dedupe, check options and report it without loading it.

    ``components``/``missing``: the models inside a composed describer that run, and those it runs
    without (weights not fetched); readers of older entries get neither key.
    """
    info: dict[str, Any] = {"name": name, "options": sorted(options)}
    if components or missing:
        info |= {"components": list(components), "missing": list(missing)}
    connection.set(_model_key(settings), json.dumps(info))
    _models_read.pop(connection, None)  # this process knows at once; the others within a second


#: How long a process trusts the running model it last read: a submit skips that Redis round trip.
#: A switch of the served model is rare, the web side only uses this to dedupe and check options,
#: and a job's ``generated_by`` always says what ran, so a second of staleness misleads no one.
MODEL_CACHE_SECONDS = 1.0
#: connection -> model key -> (read at, what it said); weak, so a closed app's entries go with it.
_models_read: weakref.WeakKeyDictionary[Redis, dict[str, tuple[float, dict[str, Any] | None]]] = (
    weakref.WeakKeyDictionary()
)


def running_model(connection: Redis, settings: Settings) -> dict[str, Any] | None:
    """What the workers said they run (None: no worker has yet), as read at most a second ago."""
    key = _model_key(settings)
    read = _models_read.setdefault(connection, {})
    if (cached := read.get(key)) is not None and time.monotonic() - cached[0] < MODEL_CACHE_SECONDS:
        return cached[1]
    try:
        raw = connection.get(key)
    except RedisError:
        return None  # enqueueing will report the outage
    model = json.loads(raw) if raw else None
    read[key] = (time.monotonic(), model)
    return model
