"""Issue 23's upload attacks, replayed against a real gunicorn on 127.0.0.1.

Two deployments, both with production's gunicorn config, no keys and RATE_LIMIT=200/minute (so
the rate limit is on, as in the production profile, but never what these tests run into):
``uploads``, with a quota of 3 jobs a day per address and no worker, and ``trimmed``, with no
quota and a worker that it starts when its test says so.
"""

from __future__ import annotations

import hashlib
import io
import struct
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


@pytest.fixture(scope="module")
def trimmed(redis, tmp_path_factory, tiny_model_dir) -> Iterator[Stack]:
    stack = make_stack("trimmed", tmp_path_factory.mktemp("trimmed"), tiny_model_dir, RATE_LIMIT="200/minute")
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


def motion_photo() -> tuple[bytes, bytes]:
    """A phone's "motion photo": a JPEG, then an MP4 (an ISO-BMFF ``ftyp`` box and its media)."""
    buffer = io.BytesIO()
    Image.effect_noise((64, 48), 60).convert("RGB").save(buffer, "JPEG")
    video = struct.pack(">I4s4sI8s", 24, b"ftyp", b"mp42", 0, b"isommp42")
    video += struct.pack(">I4s", 8 + 50_000, b"mdat") + bytes(range(250)) * 200
    return buffer.getvalue(), video


def test_what_follows_an_image_is_cut_off_before_it_is_stored_or_deduped(trimmed, tally):
    """Row 4: a 600-byte JPEG + 9 MB of zeros, a motion photo, and one JPEG with PADDING-%d
    after its end 40 times are accepted; each is stored, hashed and described as its image alone."""
    attacker = Attacker(trimmed.url, tally)
    zeros_image, (photo, video), padded_image = small_jpeg(1), motion_photo(), small_jpeg(2)
    padded = [padded_image + f"PADDING-{n}".encode() * 100 for n in range(40)]
    first = [attacker.submit(zeros_image + bytes(9 * 1024 * 1024)), attacker.submit(photo + video)]
    first.append(attacker.submit(padded[0]))
    assert [r.status_code for r in first] == [202, 202, 202]
    uploads = trimmed.directory / "uploads"
    kept = sorted((uploads / name).read_bytes() for name in stored_files(trimmed))
    assert kept == sorted([zeros_image, photo, padded_image])  # the images alone, ~600 B for the zeros

    trimmed.start_worker()
    for answer in first:
        row = trimmed.wait_for_job(answer.json()["job_id"])
        assert row["status"] == "done" and row["description"], dict(row)
    later = [attacker.submit(data) for data in padded[1:]]
    assert {r.status_code for r in later} == {202}
    assert all(r.json().get("cached") for r in later)  # answered from the first one's result
    rows = trimmed.rows("sha256 = ?", hashlib.sha256(padded_image).hexdigest())
    assert len(rows) == 40 and {row["size_bytes"] for row in rows} == {len(padded_image)}
    assert len([row for row in rows if row["upload_name"]]) == 1  # one stored file for the 40
    assert len(stored_files(trimmed)) == 3  # the later 39 stored nothing


def test_a_client_past_its_daily_quota_gets_429_with_retry_after(uploads, attacker):
    answers = [attacker.submit(small_jpeg(10 + n), hostile=False) for n in range(3)]
    assert [r.status_code for r in answers] == [202, 202, 202]
    refused = attacker.submit(small_jpeg(20))
    assert refused.status_code == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 24 * 3600
    assert refused.json()["error"]["message"].startswith("this client's daily quota of 3 jobs is used up")
    assert attacker.send("GET", "/healthz", hostile=False).status_code == 200
