"""gunicorn's gthread worker, with each request head gathered before a thread is committed to it.

gthread hands a readable connection to a thread that then parses the request line and headers
with blocking reads: a client that sends its headers a byte at a time (slowloris) holds that
thread for as long as it likes, and 40 of them took ``make run``'s gunicorn (4 threads) offline.
Here a thread only takes what has arrived, without waiting; until the blank line that ends the
head is in, the connection goes back to gunicorn's poller, costing no thread. A head that is
not complete ``WEB_HEADER_TIMEOUT`` seconds after its first byte was awaited is dropped, whether
more bytes arrive or not: the poller's sweep of deferred connections (once a second) closes it.

It relies on gthread's private ``_DEFER`` answer, its parser's ``unreader``, and how its poller
loop keeps deferred connections (``finish_request`` appends them to ``pending_conns``, which
``murder_pending`` sweeps in order); ``tests/web/test_gunicorn_worker.py`` pins them.

And a connection closed after its answer lingers on the poller, not on the poller's thread:
gthread's graceful close (RFC 9112 section 9.6: send FIN, drain what the client still sends so
that the kernel does not reset the answer away) blocks that thread up to 2 s, so each client
that kept its socket open after a ``Connection: close`` answer stalled every other connection.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import time
from collections import deque
from concurrent.futures import Future
from functools import partial
from typing import Any

from gunicorn.workers.gthread import _DEFER, ThreadWorker

#: Bytes of head gathered at most; a longer one goes to gunicorn's parser, which refuses it.
MAX_HEAD = 64 * 1024
#: After an answer and FIN, what the client still sends is drained this long, and this much at
#: most, before the close (gthread's close_graceful, on its thread).
LINGER = 2.0
MAX_DRAIN = 64 * 1024


def header_timeout() -> float:
    return float(os.environ.get("WEB_HEADER_TIMEOUT") or 10)


class HeadFirstWorker(ThreadWorker):
    """gthread, but no thread waits for a request head (see the module docstring)."""

    def init_process(self) -> None:
        self.header_timeout = header_timeout()
        self.lingering: deque[Any] = deque()  # closing after an answer, by .timeout
        super().init_process()

    def handle(self, conn: Any) -> Any:
        if self.cfg.is_ssl or getattr(conn, "is_http2", False):
            return super().handle(conn)  # TLS straight at gunicorn: none of imgsvc's set-ups
        if conn.parser is not None and conn.parser.unreader.buf.getvalue():
            return super().handle(conn)  # the next request is already read ahead
        gathered = self._gather_head(conn)
        if gathered is not True:
            return gathered
        return super().handle(conn)

    def finish_request(self, conn: Any, fs: Future) -> None:
        """gthread's, except that a dropped head is closed at once, a connection closed after its
        answer lingers on the poller, and a deferred head is swept at its deadline. Runs on the
        poller's thread, so nothing here may wait."""
        if conn.__dict__.pop("imgsvc_head_dropped", False):
            # Nothing was answered, so there is no response for gthread's graceful close to
            # protect, and that close lingers up to 2 s on this thread: 40 heads dropped at once
            # held the poller (accepts, every other connection) for 80 s, one close at a time.
            self.nr_conns -= 1
            conn.close()
            return
        if not self.cfg.is_ssl and not fs.cancelled() and fs.exception() is None and fs.result() is False:
            self._linger(conn)  # answered, not kept alive: gthread would close it gracefully here
            return
        super().finish_request(conn, fs)
        if "imgsvc_head_since" in conn.__dict__ and self.pending_conns and self.pending_conns[-1] is conn:
            # gthread gave it keepalive seconds from now, renewed at every byte: a head that
            # trickles in, or stops, outlived its deadline.
            self._defer_until(conn, min(conn.timeout, conn.imgsvc_head_since + self.header_timeout))

    def _defer_until(self, conn: Any, deadline: float) -> None:
        """Move ``conn`` (last in ``pending_conns``) to its place by ``deadline``: gthread's sweep
        stops at the first connection not yet due, so the queue must stay in deadline order."""
        self.pending_conns.pop()
        conn.timeout = deadline
        place = len(self.pending_conns)
        while place and self.pending_conns[place - 1].timeout > deadline:
            place -= 1
        self.pending_conns.insert(place, conn)

    def _linger(self, conn: Any) -> None:
        """Send FIN now; the poller drains the rest (``_drain``) until EOF, MAX_DRAIN or LINGER s."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._drain, conn))
        except (OSError, ValueError):
            self._close_lingering(conn, registered=False)
            return
        conn.timeout = time.monotonic() + LINGER  # every linger is as long: appending keeps the order
        conn.imgsvc_drained = 0
        self.lingering.append(conn)

    def _drain(self, conn: Any, _sock: Any) -> None:
        try:
            while conn.imgsvc_drained < MAX_DRAIN:
                chunk = conn.sock.recv(16384)
                if not chunk:
                    break  # the client closed too
                conn.imgsvc_drained += len(chunk)
        except (BlockingIOError, InterruptedError):
            return  # all read for now
        except OSError:
            pass
        self.lingering.remove(conn)
        self._close_lingering(conn)

    def _close_lingering(self, conn: Any, registered: bool = True) -> None:
        if registered:
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.poller.unregister(conn.sock)
        self.nr_conns -= 1  # counted until now, so worker_connections still bounds open sockets
        conn.close()

    def murder_pending(self) -> None:
        """gthread's sweep of deferred connections, then of lingering ones past their LINGER."""
        super().murder_pending()
        now = time.monotonic()
        while self.lingering and self.lingering[0].timeout <= now:
            self._close_lingering(self.lingering.popleft())

    def _gather_head(self, conn: Any) -> Any:
        """True once the head is in (handed to the parser), _DEFER to wait, False to close."""
        head: bytearray = conn.__dict__.setdefault("imgsvc_head", bytearray())
        started: float = conn.__dict__.setdefault("imgsvc_head_since", time.monotonic())
        conn.sock.setblocking(False)
        try:
            while b"\r\n\r\n" not in head and len(head) <= MAX_HEAD:
                chunk = conn.sock.recv(16384)
                if not chunk:
                    conn.imgsvc_head_dropped = True
                    return False  # the client went away
                head += chunk
        except (BlockingIOError, InterruptedError):
            if time.monotonic() - started > self.header_timeout:
                self.log.debug("request head not complete in %s s; connection closed", self.header_timeout)
                conn.imgsvc_head_dropped = True
                return False
            return _DEFER
        finally:
            conn.sock.setblocking(True)
        del conn.imgsvc_head, conn.imgsvc_head_since  # the next request on it starts afresh
        conn.data_ready = True  # skip gthread's wait for a first byte: the head is here
        conn.init()
        conn.parser.unreader.unread(bytes(head))
        return True
