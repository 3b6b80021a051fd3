"""Issue 23's upload attacks, replayed against a real gunicorn on 127.0.0.1.

One deployment, ``uploads``: production's gunicorn config, no keys, RATE_LIMIT=200/minute (so
the rate limit is on, as in the production profile, but never what these tests run into).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from redis import Redis

from bench.bombs import tiff_tag_bomb
from tests.conftest import empty_owned_db
from tests.security.conftest import Attacker, Stack, Tally, make_stack


@pytest.fixture(scope="module")
def redis(owned_redis: Redis) -> Iterator[Redis]:
    empty_owned_db(owned_redis)
    yield owned_redis
    empty_owned_db(owned_redis)


@pytest.fixture(scope="module")
def uploads(redis, tmp_path_factory, tiny_model_dir) -> Iterator[Stack]:
    stack = make_stack("uploads", tmp_path_factory.mktemp("uploads"), tiny_model_dir, RATE_LIMIT="200/minute")
    try:
        stack.start_web()
        yield stack
    finally:
        stack.stop()
    assert stack.unhandled_errors() == []


@pytest.fixture()
def attacker(uploads: Stack, tally: Tally) -> Attacker:
    return Attacker(uploads.url, tally)


def test_tiff_tag_array_bombs_are_refused_while_healthz_answers(uploads, tally):
    """Row 1: 4 concurrent 9.5 MB tag-array bombs (an hour of CPU each before the fix)."""
    bomb = tiff_tag_bomb()
    answers: list[tuple[int, str]] = []

    def send() -> None:
        response = Attacker(uploads.url, tally).submit(bomb)
        answers.append((response.status_code, response.json()["error"]["message"]))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    health = Attacker(uploads.url, tally).send("GET", "/healthz", hostile=False, timeout=30)
    for thread in threads:
        thread.join(timeout=120)
    assert health.status_code == 200
    assert len(answers) == 4
    for status, message in answers:
        assert status == 415
        assert "lists tag 273 twice in one directory" in message
