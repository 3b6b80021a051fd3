"""imgsvc's web worker (imgsvc/web/gunicorn_worker.py): the private gunicorn names it relies on, and
slow request heads against a live gunicorn."""

from __future__ import annotations

import contextlib
import inspect
import os
import select
import selectors
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from gunicorn.http.parser import RequestParser
from gunicorn.workers import gthread

from imgsvc.config import PROJECT_ROOT
from imgsvc.web.gunicorn_worker import HeadFirstWorker
from tests.integration.procs import free_port, wait_until
from tests.loopback import SITE_DIR


def test_gthread_still_defers_and_its_parser_still_unreads():
    assert "result is _DEFER" in inspect.getsource(gthread.ThreadWorker.finish_request)
    assert "conn.initialized" in inspect.getsource(gthread.ThreadWorker.handle)
    # a deferred connection is appended last, and swept with the others by its .timeout
    assert "self.pending_conns.append(conn)" in inspect.getsource(gthread.ThreadWorker.finish_request)
    assert "conn.timeout - now" in inspect.getsource(gthread.ThreadWorker.murder_pending)
    left, right = socket.socketpair()
    with left, right:
        parser = RequestParser(type("Cfg", (), {})(), left, ("127.0.0.1", 1))
        parser.unreader.unread(b"GET / HTTP/1.1\r\n")
        assert parser.unreader.read() == b"GET / HTTP/1.1\r\n"  # no read from the socket


def test_gunicorn_conf_runs_the_head_first_worker():
    text = (PROJECT_ROOT / "gunicorn.conf.py").read_text()
    assert 'worker_class = "imgsvc.web.gunicorn_worker.HeadFirstWorker"' in text
    assert issubclass(HeadFirstWorker, gthread.ThreadWorker)


def test_the_dashboard_service_boots_with_the_shared_gunicorn_conf(monkeypatch):
    """compose's dashboard runs gunicorn (reading gunicorn.conf.py) on the standalone dashboard app,
    which counts no HTTP metrics: booting its worker must not fail (the container check caught it)."""
    import runpy
    import types

    from imgsvc.web.dashboard import create_dashboard_app

    monkeypatch.setenv("RQ_DASHBOARD_USERNAME", "ops")
    monkeypatch.setenv("RQ_DASHBOARD_PASSWORD", "a long enough password")
    conf = runpy.run_path(str(PROJECT_ROOT / "gunicorn.conf.py"))
    dashboard = create_dashboard_app()
    conf["post_worker_init"](types.SimpleNamespace(wsgi=dashboard))  # no KeyError


def answer_ok(environ: dict, start_response) -> list[bytes]:
    """The WSGI app the live tests below serve: the worker, not the app, is under test."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


HEADER_TIMEOUT = 2.0
#: the poller sweeps deferred connections once a second; the rest is for a loaded 2-core host
SWEEP_MARGIN = 1.5


@pytest.fixture()
def web_port(tmp_path: Path) -> Iterator[int]:
    """gunicorn with the project's gunicorn.conf.py (1 worker, 4 threads, keepalive 5 s) on ``answer_ok``."""
    port = free_port()
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": f"{SITE_DIR}{os.pathsep}{PROJECT_ROOT}",
        "WEB_PORT": str(port),
        "WEB_WORKERS": "1",
        "WEB_THREADS": "4",
        "WEB_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    }
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "gunicorn.conf.py",
        "tests.web.test_gunicorn_worker:answer_ok",
    ]
    with (tmp_path / "web.log").open("ab") as log:
        proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: proc.poll() is not None or _answers(port), timeout=60, interval=0.2)
        assert _answers(port), (tmp_path / "web.log").read_text()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _answers(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def _seconds_until_closed(
    socks: list[socket.socket], started: float, drip: bool, give_up: float
) -> list[float]:
    """When the server closed each socket, in seconds after ``started``; ``drip`` sends a header
    byte on every open one each 0.5 s meanwhile. No other traffic reaches the server."""
    closed_after: dict[socket.socket, float] = {}
    next_drip = time.monotonic() + 0.5
    while len(closed_after) < len(socks) and time.monotonic() - started < give_up:
        open_socks = [sock for sock in socks if sock not in closed_after]
        readable, _, _ = select.select(open_socks, [], [], 0.05)
        for sock in readable:
            try:
                data = sock.recv(1024)
            except OSError:
                data = b""
            if not data:
                closed_after[sock] = time.monotonic() - started
        if drip and time.monotonic() >= next_drip:
            next_drip += 0.5
            for sock in open_socks:
                with contextlib.suppress(OSError):
                    sock.send(b"X")
    return sorted(closed_after.values())


@pytest.mark.parametrize("drip", [True, False], ids=["byte-every-half-second", "silent"])
def test_every_slow_head_is_closed_at_the_header_timeout(web_port, drip):
    """30 heads that never end are each closed WEB_HEADER_TIMEOUT seconds after they connect (give
    or take the poller's 1 s sweep), all of them, with no other request to wake the server.

    Before: dripping heads were closed one every 2 s (each close lingered on the poller's thread:
    the last of 30 after ~60 s), and silent ones only after gunicorn's 5 s keepalive."""
    count = 30
    started = time.monotonic()
    socks = [socket.create_connection(("127.0.0.1", web_port), timeout=5) for _ in range(count)]
    try:
        for sock in socks:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed = _seconds_until_closed(socks, started, drip, give_up=HEADER_TIMEOUT + 20)
        assert len(closed) == count, closed
        assert closed[-1] <= HEADER_TIMEOUT + SWEEP_MARGIN, closed
        assert closed[0] >= HEADER_TIMEOUT - 0.1, closed  # not cut short either
    finally:
        for sock in socks:
            sock.close()
    assert _answers(web_port)


def test_a_slow_head_on_a_kept_alive_connection_is_closed_at_the_header_timeout(web_port):
    """The deadline of a request on a kept-alive connection counts from that request's first byte,
    and holds when the client then goes quiet (before: closed at gunicorn's 5 s keepalive)."""
    with socket.create_connection(("127.0.0.1", web_port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\n")
        closed = _seconds_until_closed([sock], started, drip=False, give_up=HEADER_TIMEOUT + 20)
    assert closed and HEADER_TIMEOUT - 0.1 <= closed[0] <= HEADER_TIMEOUT + SWEEP_MARGIN, closed


def test_deferred_heads_are_swept_in_deadline_order():
    """A head deferred late with an early deadline is closed at it, not behind a connection whose
    deadline is later (gthread's sweep stops at the first connection not yet due)."""
    worker = object.__new__(HeadFirstWorker)  # the poller loop's state only, no process
    worker.cfg = SimpleNamespace(keepalive=5, is_ssl=False)
    worker.alive = True
    worker.header_timeout = 10.0
    worker.poller = selectors.DefaultSelector()
    worker.pending_conns = deque()
    worker.lingering = deque()
    worker.nr_conns = 2
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        fresh, late = (
            gthread.TConn(worker.cfg, server, ("127.0.0.1", 1), ("127.0.0.1", 2)) for server, _ in pairs
        )
        deferred: Future = Future()
        deferred.set_result(gthread._DEFER)
        now = time.monotonic()
        fresh.imgsvc_head_since = now  # connected just now: due at the keepalive, 5 s from now
        worker.finish_request(fresh, deferred)
        late.imgsvc_head_since = now - 10 + 0.3  # its head has been trickling in for 9.7 s
        worker.finish_request(late, deferred)
        time.sleep(0.4)
        worker.murder_pending()
        assert list(worker.pending_conns) == [fresh]
        assert late.sock.fileno() == -1 and fresh.sock.fileno() != -1
        assert worker.nr_conns == 1
    finally:
        worker.poller.close()
        for server, client in pairs:
            server.close()
            client.close()


def test_clients_that_keep_their_socket_open_after_a_closing_answer_hold_up_no_one(web_port):
    """10 requests with ``Connection: close`` whose clients never close: each gets its whole answer
    and the server's FIN, and a normal request meanwhile is answered at once (before: ~2 s per such
    client, gthread's graceful close lingering on the poller's thread; 11.5 s for 10)."""
    lingering = [socket.create_connection(("127.0.0.1", web_port), timeout=5) for _ in range(10)]
    try:
        for sock in lingering:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        for sock in lingering:
            answer = b""
            while chunk := sock.recv(1024):  # to the server's FIN
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\nok"), answer
        started = time.monotonic()
        assert _answers(web_port)
        assert time.monotonic() - started < 1.0
    finally:
        for sock in lingering:
            sock.close()
