"""Issue 23's upload attacks, replayed against a real gunicorn on 127.0.0.1.

One deployment, ``uploads``: production's gunicorn config, no keys, RATE_LIMIT=200/minute (so
the rate limit is on, as in the production profile, but never what these tests run into) and a
quota of 3 jobs a day per address.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import pytest
from PIL import Image
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
    stack = make_stack(
        "uploads",
        tmp_path_factory.mktemp("uploads"),
        tiny_model_dir,
        RATE_LIMIT="200/minute",
        QUOTA_JOBS_PER_DAY="3",
    )
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


def small_jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (seed * 40 % 256, 80, 120)).save(buffer, "JPEG")
    return buffer.getvalue()


def stored_files(stack: Stack) -> list[str]:
    uploads = stack.directory / "uploads"
    return sorted(p.name for p in uploads.rglob("*") if p.is_file() and not p.name.startswith("."))


def test_padding_after_an_image_is_refused_and_nothing_is_stored(uploads, attacker):
    """Row 4: one JPEG with PADDING-%d after its end, 40 times; a 600-byte JPEG + 9 MB of zeros."""
    image = small_jpeg(1)
    padded = [attacker.submit(image + f"PADDING-{n}".encode() * 100) for n in range(40)]
    assert {r.status_code for r in padded} == {415}
    assert "bytes follow the end of the JPEG image" in padded[0].json()["error"]["message"]
    zeros = attacker.submit(image + bytes(9 * 1024 * 1024))
    assert zeros.status_code == 415
    assert stored_files(uploads) == []


def test_a_client_past_its_daily_quota_gets_429_with_retry_after(uploads, attacker):
    answers = [attacker.submit(small_jpeg(10 + n), hostile=False) for n in range(3)]
    assert [r.status_code for r in answers] == [202, 202, 202]
    refused = attacker.submit(small_jpeg(20))
    assert refused.status_code == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 24 * 3600
    assert refused.json()["error"]["message"].startswith("this client's daily quota of 3 jobs is used up")
    assert attacker.send("GET", "/healthz", hostile=False).status_code == 200
