"""Answering when a job finishes: ``Prefer: wait=N`` (RFC 7240) and server-sent events.

A waiting request blocks on the process's :class:`~imgsvc.queue.changes.JobWatcher` (a Redis
notification that the worker publishes when it writes the row), never on a loop of SQL reads,
and holds no database connection while it waits. The row is the truth: :func:`wait_for` re-reads
it whenever it is woken; :func:`wait_for_result` (a submit that waits) reads it only when the
notification does not say enough, and answers a done job with the result its worker published
right after committing it, which is the row's, read back by no one. A submit that waits
subscribes before its job is enqueued (:func:`watch_new_job`): one Redis round trip, no read.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flask import current_app

from imgsvc.config import Settings, app_settings
from imgsvc.queue.changes import JobWatcher, Wakeup
from imgsvc.storage import jobs
from imgsvc.storage.db import db

#: ``wait=10`` among a Prefer header's comma-separated preferences (RFC 7240: delta-seconds).
WAIT = re.compile(r"^\s*wait\s*=\s*\"?([0-9]{1,9})\"?\s*(;.*)?$", re.IGNORECASE)
#: How long one event stream lasts before it ends and the browser reconnects (EventSource does):
#: a stream is a held thread, and a bounded one is handed back even if the client never leaves.
STREAM_SECONDS = 300
#: A comment line this often keeps proxies and browsers from taking a quiet stream for a dead one.
HEARTBEAT_SECONDS = 15


def preferred_wait(header: str | None, settings: Settings) -> int | None:
    """The seconds a ``Prefer`` header asks to wait, cut to MAX_WAIT; None when it asks for none."""
    if not header or settings.max_wait <= 0:
        return None
    for preference in header.split(","):
        match = WAIT.match(preference)
        if match:
            return min(int(match.group(1)), settings.max_wait)
    return None


def watcher() -> JobWatcher:
    """The process's watcher, made on first use (after gunicorn forked: each worker its own)."""
    found = current_app.extensions.get("imgsvc.watcher")
    if found is None:
        settings = app_settings()
        found = JobWatcher(settings.redis_url, capacity=max(settings.web_threads - 2, 0))
        found = current_app.extensions.setdefault("imgsvc.watcher", found)
    return found


def fresh_job(job_id: str) -> jobs.Job | None:
    """The row as it is now, read in a transaction of its own that is over on return, so a
    waiting request holds no database connection (nor a SQLite snapshot) while it waits."""
    db.session.close()
    try:
        return jobs.get_job(job_id)
    finally:
        db.session.close()


def finished(job: jobs.Job) -> bool:
    return job.status in jobs.FINISHED


def wait_for(
    job_id: str, seconds: int, until: Callable[[jobs.Job], bool] = finished
) -> tuple[jobs.Job | None, bool]:
    """The job's row once ``until`` holds for it, it is deleted, or ``seconds`` pass.

    Also whether the wait was applied: not when every waiting slot of this process is taken or
    Redis cannot be reached, and then the row is read once and returned at once.
    """
    deadline = time.monotonic() + seconds
    with watcher().watch(job_id) as woken:
        if woken is None:
            return fresh_job(job_id), False
        while True:
            woken.clear()  # before the read: a change committed after it sets the event again
            job = fresh_job(job_id)
            remaining = deadline - time.monotonic()
            if job is None or until(job) or remaining <= 0:
                return job, True
            woken.wait(remaining)


@contextmanager
def watch_new_job(job_id: str) -> Iterator[Wakeup | None]:
    """A watch on a job about to be made, for a submit that waits for its end: confirmed by Redis
    before the job is enqueued, so no change can come before it and there is nothing to read
    first; woken only when the job ends (its start is no news to this client). None when every
    waiting slot is taken or Redis cannot be reached."""
    with watcher().watch(job_id, ignore=frozenset(jobs.UNFINISHED)) as woken:
        yield woken


def wait_for_result(job_id: str, woken: Wakeup | None, seconds: int) -> tuple[dict | jobs.Job | None, bool]:
    """A done job's result as its worker published it (no SQL read) once the job ends within
    ``seconds``; else the row as it is then (a Job; None: deleted). Also whether the wait was applied.

    ``woken`` is :func:`watch_new_job`'s for this job (None: no watch, the row is answered at once).
    Any doubt (a message without the result, a wake-up without a message) is settled by reading the row.
    """
    if woken is None:
        return fresh_job(job_id), False
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not woken.wait(remaining):
            return fresh_job(job_id), True
        message = woken.take()  # never of an unfinished status: watch_new_job's watch ignores those
        status = message.get("status") if message is not None else None
        if status == jobs.Status.DONE and isinstance(result := message.get("result"), dict):
            return result, True
        job = fresh_job(job_id)
        if job is None or finished(job):
            return job, True


def event_stream(job_id: str, payload: Callable[[jobs.Job], dict]) -> Iterator[str]:
    """Server-sent events for one job: its state now, then each change, ending at a finished state.

    Each event is named after the job's status (``queued``, ``processing``, ``done``, ``failed``,
    ``cancelled``; ``deleted`` if the row goes) and carries ``payload(job)`` as JSON. When no
    waiting slot is free the stream says the state now and ends with a ``retry`` hint, and the
    browser asks again then: polling, at the server's pace.
    """
    started = time.monotonic()
    last: str | None = None
    with watcher().watch(job_id) as woken:
        if woken is None:
            job = fresh_job(job_id)
            yield "retry: 5000\n\n"
            yield _event("deleted", {"job_id": job_id}) if job is None else _event(job.status, payload(job))
            return
        while True:
            woken.clear()
            job = fresh_job(job_id)
            if job is None:
                yield _event("deleted", {"job_id": job_id, "status": "deleted"})
                return
            if job.status != last:
                last = job.status
                yield _event(job.status, payload(job))
            if finished(job):
                return
            remaining = STREAM_SECONDS - (time.monotonic() - started)
            if remaining <= 0:
                return  # EventSource reconnects, and the new stream starts with the state then
            if not woken.wait(min(HEARTBEAT_SECONDS, remaining)):
                yield ": still waiting\n\n"


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
