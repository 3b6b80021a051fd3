"""The job-change feed's subscriber side: one connection per process, waiters woken per job."""

from __future__ import annotations

import json

from redis import Redis

from imgsvc.queue.changes import JobWatcher, channel
from tests.conftest import TEST_REDIS_URL


def test_the_watcher_wakes_a_waiter_for_a_change_published_right_after_it_subscribed(redis_db: Redis):
    """The lost-wakeup case: once ``watch`` yields, Redis has the subscription, so a change
    published at that very moment (before the row is read) still sets the event."""
    watcher = JobWatcher(TEST_REDIS_URL, capacity=4)
    with watcher.watch("job-a") as woken, watcher.watch("job-b") as other:
        assert woken is not None and other is not None
        redis_db.publish(channel("job-a"), "{}")
        assert woken.wait(10)
        assert not other.is_set()
    assert watcher.waiting == 0


def test_a_waiter_for_the_end_sleeps_through_the_start(redis_db: Redis):
    """A submit waiting for its result is not woken (a thread switch for nothing) when its job
    starts; a watcher of every change on the same job is."""
    watcher = JobWatcher(TEST_REDIS_URL, capacity=4)
    with (
        watcher.watch("job-a", ignore=frozenset({"queued", "processing"})) as end,
        watcher.watch("job-a") as every,
    ):
        assert end is not None and every is not None
        redis_db.publish(channel("job-a"), json.dumps({"job_id": "job-a", "status": "processing"}))
        assert every.wait(10) and every.take() == {"job_id": "job-a", "status": "processing"}
        assert not end.is_set()
        redis_db.publish(channel("job-a"), json.dumps({"job_id": "job-a", "status": "done"}))
        assert end.wait(10) and end.take() == {"job_id": "job-a", "status": "done"}


def test_a_waiter_is_woken_when_redis_goes_away_and_answers_from_the_row(tmp_path):
    """A change published while nobody listens would be lost: so losing Redis wakes every waiter,
    which re-reads its row and answers, instead of sleeping out its whole wait."""
    from tests.integration.procs import RedisServer

    server = RedisServer(tmp_path / "redis")
    server.start()
    watcher = JobWatcher(server.url, capacity=4)
    try:
        with watcher.watch("job-c") as woken:
            assert woken is not None
            server.kill()
            assert woken.wait(10)
        with watcher.watch("job-d") as unwatched:
            assert unwatched is None  # no Redis: the caller answers at once, from the row
    finally:
        watcher.close()
        server.kill()
