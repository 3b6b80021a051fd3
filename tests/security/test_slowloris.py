"""Slowloris straight at gunicorn (``make run`` has no proxy in front): 40 clients that send their
headers a byte at a time must not keep a normal request out.

The review's 40 slow-header connections took ``make run``'s gunicorn offline for the whole test.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from tests.integration.procs import wait_until
from tests.security.conftest import Stack, make_stack

SLOW_CLIENTS = 40
HEADER_TIMEOUT = 3


@pytest.fixture()
def stack(redis_db, tmp_path, tiny_model_dir) -> Iterator[Stack]:
    # 1 worker of 4 threads, as make_stack sets up
    stack = make_stack("slowloris", tmp_path, tiny_model_dir, WEB_HEADER_TIMEOUT=str(HEADER_TIMEOUT))
    try:
        stack.start_web()
        yield stack
    finally:
        stack.stop()


class SlowClients:
    """``count`` connections that each start a request and then send a header byte a second."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
        self.stop = threading.Event()
        self.cut = 0  # connections the server closed on them
        self.thread = threading.Thread(target=self._drip, daemon=True)
        for sock in self.socks:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        self.thread.start()

    def _drip(self) -> None:
        alive = list(self.socks)
        while alive and not self.stop.wait(1.0):
            # A connection the server closed reads as the end of the stream (or a reset) at once; a
            # send would only fail on the one after the server's reset comes back.
            closed, _, _ = select.select(alive, [], [], 0)
            for sock in list(alive):
                try:
                    if sock in closed and not sock.recv(1, socket.MSG_DONTWAIT):
                        raise ConnectionResetError("closed by the server")
                    sock.sendall(b"X")
                except OSError:
                    alive.remove(sock)
                    self.cut += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for sock in self.socks:
            sock.close()


def test_forty_slow_header_clients_do_not_keep_a_normal_request_out(stack):
    slow = SlowClients(stack.port, SLOW_CLIENTS)
    try:
        time.sleep(2)  # every slow client has started its headers and sent more since
        answers = [requests.get(stack.url + "/healthz", timeout=20).status_code for _ in range(3)]
        assert answers == [200, 200, 200]  # before: each timed out, all 4 threads held
        # And none of them is kept: a head not in within WEB_HEADER_TIMEOUT is closed, all 40 at
        # once (before: one every 2 s, so only 28-29 of the 40 within a minute on a loaded host).
        assert wait_until(lambda: slow.cut == SLOW_CLIENTS, timeout=HEADER_TIMEOUT + 12), slow.cut
    finally:
        slow.close()
