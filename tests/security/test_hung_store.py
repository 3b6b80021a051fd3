"""A hung object store (S3 mode) on a live gunicorn: submits fail fast, and the service stays up.

The store here is a loopback socket that accepts connections and never answers, as SeaweedFS
did under SIGSTOP in the review: each submit then held a web thread ~93 s (a 30 s read timeout,
three tries) and ``/healthz`` went unanswered while the four threads waited.
"""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from tests.integration.procs import wait_until
from tests.security.conftest import Attacker, Stack, make_stack


class HungStore:
    """Accepts every connection, reads what comes, and never says a word."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._swallow, args=(conn,), daemon=True).start()

    @staticmethod
    def _swallow(conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}"

    def close(self) -> None:
        self.server.close()
        for conn in self.connections:
            conn.close()


def submit(attacker: Attacker, seed: int) -> requests.Response:
    """A plain submit, for which a 503 is the right answer while the store is down."""
    files = {"file": ("x.jpg", picture(seed), "image/jpeg")}
    return attacker.send("POST", "/api/v1/submit", files=files, hostile=False, expect_503=True)


def picture(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (seed * 30 % 256, 20, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture()
def hung() -> Iterator[HungStore]:
    store = HungStore()
    yield store
    store.close()


@pytest.fixture()
def stack(redis_db, tmp_path, tiny_model_dir, hung: HungStore) -> Iterator[Stack]:
    stack = make_stack(
        "hung",
        tmp_path,
        tiny_model_dir,
        UPLOAD_DIR="s3://imgsvc/uploads",
        STAGING_DIR=str(tmp_path / "staging"),
        AWS_ENDPOINT_URL=hung.endpoint,
        AWS_ACCESS_KEY_ID="k",
        AWS_SECRET_ACCESS_KEY="s",
        AWS_DEFAULT_REGION="us-east-1",
        S3_TIMEOUT="2",
        S3_COOLDOWN="600",  # open for the whole test once tripped
    )
    try:
        stack.start_web()
        yield stack
    finally:
        stack.stop()


def test_submits_to_a_hung_store_are_503_healthz_answers_and_the_breaker_spares_the_store(stack, hung, tally):
    attacker = Attacker(stack.url, tally)
    threads = int(stack.env["WEB_THREADS"])
    with ThreadPoolExecutor(threads) as pool:
        # As many submits as gunicorn has threads: before, every thread was held ~93 s.
        submits = [pool.submit(submit, attacker, i) for i in range(threads)]
        assert wait_until(lambda: hung.connections, timeout=30)  # the PUTs are in the store's hands
        health = requests.get(stack.url + "/healthz", timeout=30)
        assert health.status_code == 200
        answers = [future.result() for future in submits]
    assert [a.status_code for a in answers] == [503] * threads
    assert all(a.json()["error"]["code"] == "storage_unavailable" for a in answers)
    # The breaker is open: the next submits are 503 without another connection to the store.
    tried = len(hung.connections)
    for i in range(threads, threads + 4):
        again = submit(attacker, i)
        assert again.status_code == 503 and int(again.headers["Retry-After"]) > 0
    assert len(hung.connections) == tried
    assert stack.rows() == []  # no job row for an upload that was never stored
