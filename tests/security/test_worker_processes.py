"""What a killed worker leaves behind: nothing that keeps running or holds a lock.

``kill -9`` (the OOM killer, a node that drops a pod) skips every cleanup; the processes a
worker forked must end with it, since the kernel does not end them by itself.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from tests.integration.procs import wait_until
from tests.security.conftest import Stack, make_stack


def children_of(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` right now (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status is left to collect


@pytest.fixture()
def stack(redis_db, tmp_path, tiny_model_dir) -> Iterator[Stack]:
    stack = make_stack("killed", tmp_path, tiny_model_dir)
    stack.start_web()
    yield stack
    stack.stop()


def test_kill_9_of_the_worker_takes_its_scheduler_along(stack, redis_db: Redis):
    lock = f"rq:scheduler-lock:{stack.env['RQ_QUEUE']}"
    stack.start_worker()
    worker = stack.procs[-1]
    assert wait_until(lambda: redis_db.get(lock), timeout=30)
    forked = children_of(worker.pid)
    assert forked  # the scheduler (and the decoder children)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    # Before: the scheduler lived on under init, holding the lock, for as long as anyone looked.
    assert wait_until(lambda: not any(alive(pid) for pid in forked), timeout=30)
    # Nobody refreshes the lock now: it expires within RQ's 61 s and the next worker's
    # maintenance round (every WORKER_TTL/3 s) takes it and starts a scheduler.
    assert 0 < redis_db.ttl(lock) <= 61
