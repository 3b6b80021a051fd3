"""Hostile webhook receivers on a live stack: slow ones are cut at the deadline and hold up no one.

The review's receivers answered one byte of their status line every 4 s: no single read ever
timed out, each attempt lasted the whole 60 s job timeout, and the one webhook worker made a
normal job's webhook wait behind them (114 s late). Here two such receivers (a byte a second,
against a WEBHOOK_TIMEOUT of 8 s) take the first deliveries, and a normal receiver's webhook
must arrive while both still hold theirs.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.integration.procs import wait_until
from tests.security.conftest import Attacker, Stack, make_stack
from tests.security.listener import DripReceiver, Listener

DEADLINE_S = 8


def picture(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (seed * 40 % 256, 90, 160)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture()
def stack(redis_db, tmp_path, tiny_model_dir) -> Iterator[Stack]:
    stack = make_stack(
        "hooks", tmp_path, tiny_model_dir, WEBHOOK_ALLOW_PRIVATE="true", WEBHOOK_TIMEOUT=str(DEADLINE_S)
    )
    try:
        stack.start_web()
        stack.start_worker()
        stack.start_webhook_worker()
        yield stack
    finally:
        stack.stop()


def test_slow_receivers_are_cut_at_the_deadline_and_delay_no_one_else(stack, tally):
    attacker = Attacker(stack.url, tally)
    with DripReceiver() as slow_a, DripReceiver() as slow_b, Listener() as normal:
        for seed, receiver in enumerate((slow_a, slow_b)):
            response = attacker.submit(picture(seed), callback_url=receiver.url)
            assert response.status_code == 202
            stack.wait_for_job(response.json()["job_id"])
        # Both hostile deliveries are under way before the normal job is even submitted.
        assert wait_until(lambda: slow_a.drips and slow_b.drips, timeout=60)
        response = attacker.submit(picture(3), hostile=False, callback_url=normal.url())
        job_id = response.json()["job_id"]
        assert wait_until(lambda: normal.received, timeout=60)
        # Not serialized behind them: both slow receivers still hold their first attempt.
        assert not slow_a.drips[0].ended and not slow_b.drips[0].ended
        assert f'"job_id": "{job_id}"' in normal.received[0].body.decode()
        # And each is cut by the client at the deadline, long before its minute of dripping ends.
        assert wait_until(lambda: slow_a.drips[0].ended and slow_b.drips[0].ended, timeout=90)
    for drip in (slow_a.drips[0], slow_b.drips[0]):
        assert drip.cut_by_client and drip.sent < 60
    log = stack.log("webhooks").read_text()
    assert log.count('"error": "deadline"') >= 2, log[-3000:]
