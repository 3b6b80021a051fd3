"""Job-change notifications: the row's writer publishes on Redis, a waiting request wakes up.

Whoever writes a job row's status (the worker, the reaper, a cancel, a delete, a retry) does it
through :mod:`imgsvc.storage.jobs`, which notes the job id in the SQL session; once that
transaction commits, :func:`publish_committed` publishes one message per job on the channel
``imgsvc:job-changed:<id>`` (one pipelined round trip per commit). The message says the new
status, and for a job a worker finished, the result it has just committed: a waiter answers
from that, and re-reads the row whenever the message does not carry the answer. The row stays
the truth: a message is only ever published after its transaction committed.

The web side waits through one :class:`JobWatcher` per process: a thread that owns one Redis
connection, subscribes to the channels of the jobs someone waits on, and wakes their waiters.
A waiting request holds a thread of its web worker and nothing else: no database connection,
no Redis connection of its own, no polling. A waiter subscribes first and reads the row only
once Redis has confirmed the subscription, so a change committed after that read is never missed.

The same round trip replaces the job's *poll validator* (``imgsvc:job-validator:<id>``): a random
token that changes with every committed change of the row (the submit writes the first one with
its enqueue). A poll that presents the ETag made from it is answered 304 from Redis alone
(:mod:`imgsvc.web.polls`). Readers never write it: a token is only ever issued for a row read
after the token was, so a client holding one has seen at least that change.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, NamedTuple

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger("imgsvc.changes")

CHANNEL_PREFIX = "imgsvc:job-changed:"
VALIDATOR_PREFIX = "imgsvc:job-validator:"
#: A validator left behind by a write that could not reach Redis is trusted this long at most
#: (the row is read again once it expires); a job that lives longer is polled from SQL meanwhile.
VALIDATOR_TTL = 600
#: Where :mod:`imgsvc.storage.jobs` notes the jobs a transaction changed: job id -> :class:`Change`.
SESSION_KEY = "imgsvc.changed_jobs"


class Change(NamedTuple):
    """A job's new status, and the result a finishing worker wrote with it (None: read the row)."""

    status: str
    result: dict[str, Any] | None = None


def channel(job_id: str) -> str:
    return CHANNEL_PREFIX + job_id


def validator_key(job_id: str) -> str:
    return VALIDATOR_PREFIX + job_id


def set_validator(pipe: Pipeline, job_id: str, status: str) -> None:
    """A fresh token for ``job_id`` (with its status, which only hints the next poll), in ``pipe``."""
    if status == "deleted":
        pipe.delete(validator_key(job_id))
    else:
        pipe.set(validator_key(job_id), f"{secrets.token_hex(8)} {status}", ex=VALIDATOR_TTL)


def note_change(session: Session, job_id: str, status: str, result: dict[str, Any] | None = None) -> None:
    """Remember that this transaction wrote ``job_id``'s status (and ``result``, exactly as the row
    now holds it); published when it commits."""
    session.info.setdefault(SESSION_KEY, {})[job_id] = Change(str(status), result)


def publish(connection: Redis, changes: dict[str, Change]) -> None:
    """One message per changed job, in one round trip; never fails the caller's work.

    Without Redis a waiter is not woken and answers when its wait runs out, from the row.
    """
    if not changes:
        return
    try:
        with connection.pipeline(transaction=False) as pipe:
            for job_id, (status, result) in changes.items():
                set_validator(pipe, job_id, status)  # before the message: a woken poller sees it
                message: dict[str, Any] = {"job_id": job_id, "status": status}
                if result is not None:
                    message["result"] = result
                pipe.publish(channel(job_id), json.dumps(message, separators=(",", ":")))
            pipe.execute()
    except RedisError as exc:
        log.warning("job change not published (%s)", exc, extra={"jobs": len(changes)})
        # An old validator must not vouch for the new row: drop them (or they expire: VALIDATOR_TTL).
        with suppress(RedisError):
            connection.delete(*(validator_key(job_id) for job_id in changes))


def install_change_feed() -> None:
    """Publish the jobs a session noted once its transaction commits (once per process)."""
    if not event.contains(Session, "after_commit", publish_committed):
        event.listen(Session, "after_commit", publish_committed)
        event.listen(Session, "after_rollback", _forget)


def publish_committed(session: Session) -> None:
    changes = session.info.pop(SESSION_KEY, None)
    if changes:
        from flask import current_app  # the session lives inside an app context: web, worker or CLI

        publish(current_app.redis, changes)


def _forget(session: Session) -> None:
    session.info.pop(SESSION_KEY, None)


class Wakeup(threading.Event):
    """Set whenever the job's row changes, with the change's message when one woke it; a message
    whose status is in ``ignore`` does not wake it (a client waiting for the end, not for a start)."""

    def __init__(self, ignore: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.ignore = ignore
        self._guard = threading.Lock()
        self._message: dict[str, Any] | None = None

    def deliver(self, message: dict[str, Any] | None) -> None:
        """Wake the waiter; ``message`` None says "something changed, read the row" (Redis was lost)."""
        with self._guard:
            self._message = message
            self.set()

    def take(self) -> dict[str, Any] | None:
        """Clear the event, and return the last message that set it (None: read the row)."""
        with self._guard:
            self.clear()
            message, self._message = self._message, None
        return message


class _Channel:
    """The waiters on one job's channel, and whether Redis has confirmed the subscription."""

    def __init__(self, wanted: int) -> None:
        self.events: set[Wakeup] = set()
        #: Which SUBSCRIBE on this channel, counted since the watcher connected, is this one's.
        self.wanted = wanted
        self.ready = threading.Event()


class JobWatcher:
    """One per web process: a single subscriber connection and a thread that reads it.

    ``capacity`` bounds how many requests may wait at once: each one holds a web worker thread,
    and past this many a request is answered at once instead (its wait is not applied), so
    waiting clients can never take every thread from the others.
    """

    def __init__(self, redis_url: str, capacity: int) -> None:
        self.redis_url = redis_url
        self.capacity = capacity
        self._lock = threading.Lock()
        self._channels: dict[str, _Channel] = {}
        self._subscribes: dict[str, int] = {}  # SUBSCRIBEs sent per channel since connecting
        self._confirmed: dict[str, int] = {}  # ... and confirmed by Redis
        self._waiting = 0
        self._connection: Any = None
        self._client: Redis | None = None
        self._thread: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        return self._waiting

    @contextmanager
    def watch(
        self, job_id: str, confirm_timeout: float = 2.0, ignore: frozenset[str] = frozenset()
    ) -> Iterator[Wakeup | None]:
        """An event set whenever the job's row changes (to a status not in ``ignore``), for the
        duration of the block.

        None when the watcher is full or Redis cannot be reached: the caller answers at once.
        When it yields an event, Redis has confirmed the subscription: read the row *after*
        entering the block, and any later change sets the event.
        """
        woken = Wakeup(ignore)
        entry = self._join(job_id, woken)
        if entry is None:
            yield None
            return
        try:
            if not entry.ready.wait(confirm_timeout):
                yield None
            else:
                yield woken
        finally:
            self._leave(job_id, woken)

    def _join(self, job_id: str, woken: Wakeup) -> _Channel | None:
        with self._lock:
            if self._waiting >= self.capacity:
                return None
            try:
                self._ensure_running()
                entry = self._channels.get(job_id)
                if entry is None:
                    name = channel(job_id)
                    self._subscribes[name] = self._subscribes.get(name, 0) + 1
                    entry = self._channels[job_id] = _Channel(self._subscribes[name])
                    self._connection.send_command("SUBSCRIBE", name)
                    if self._confirmed.get(name, 0) >= entry.wanted:
                        entry.ready.set()
            except (RedisError, OSError) as exc:
                log.warning("cannot watch jobs: Redis unavailable (%s)", exc)
                self._reset()
                return None
            entry.events.add(woken)
            self._waiting += 1
            return entry

    def _leave(self, job_id: str, woken: Wakeup) -> None:
        with self._lock:
            self._waiting -= 1
            entry = self._channels.get(job_id)
            if entry is None or woken not in entry.events:
                return  # the connection was reset meanwhile
            entry.events.discard(woken)
            if entry.events:
                return
            del self._channels[job_id]
            try:
                self._connection.send_command("UNSUBSCRIBE", channel(job_id))
            except (RedisError, OSError):
                self._reset()

    def _ensure_running(self) -> None:
        """Connect (inside the lock) and start the reader thread, on first use or after a reset."""
        if self._connection is not None:
            return
        # Its own client: no health-check PING may be sent on a connection another thread reads.
        # RESP2: under RESP3 redis-py hands pub/sub replies to a push handler instead of read_response.
        self._client = Redis.from_url(
            self.redis_url, socket_connect_timeout=2, health_check_interval=0, protocol=2
        )
        self._connection = self._client.connection_pool.get_connection()
        self._connection.connect()
        self._subscribes.clear()
        self._confirmed.clear()
        if self._thread is None:
            self._thread = threading.Thread(target=self._read, name="imgsvc-job-watcher", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Disconnect and let the reader thread end; waiters answer from their rows."""
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        """Drop the connection (inside the lock) and wake every waiter: each re-reads its row and
        answers; a change published while no one listened is thereby never lost."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with suppress(RedisError, OSError):
                connection.disconnect()
        for entry in self._channels.values():
            entry.ready.set()
            for woken in entry.events:
                woken.deliver(None)
        self._channels.clear()

    def _read(self) -> None:
        while True:
            with self._lock:
                connection = self._connection
                if connection is None:  # closed, or Redis was lost: the next watch starts anew
                    self._thread = None
                    return
            try:
                if not connection.can_read(timeout=1.0):
                    continue
                reply = connection.read_response()
            except (RedisError, OSError, AttributeError, TypeError) as exc:
                # AttributeError/TypeError: the socket was closed under us by _reset.
                with self._lock:
                    if self._connection is connection:
                        log.warning("job watcher lost Redis (%s); waiters answer from the row", exc)
                        self._reset()
                continue
            self._dispatch(reply)

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return
        kind = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        name = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        job_id = name.removeprefix(CHANNEL_PREFIX)
        with self._lock:
            entry = self._channels.get(job_id)
            if kind == "subscribe":
                self._confirmed[name] = self._confirmed.get(name, 0) + 1
                if entry is not None and self._confirmed[name] >= entry.wanted:
                    entry.ready.set()
            elif kind == "unsubscribe":
                if name not in self._channels and self._confirmed.get(name) == self._subscribes.get(name):
                    self._confirmed.pop(name, None)  # nothing in flight: forget the counts
                    self._subscribes.pop(name, None)
            elif kind == "message" and entry is not None:
                message = _parsed(reply[2])
                status = message["status"] if message is not None else None
                for woken in entry.events:
                    if status not in woken.ignore:
                        woken.deliver(message)


def _parsed(data: Any) -> dict[str, Any] | None:
    """A change's message, or None for one this module did not write (the waiter reads the row)."""
    try:
        message = json.loads(data)
    except (ValueError, TypeError):
        return None
    return message if isinstance(message, dict) and isinstance(message.get("status"), str) else None
