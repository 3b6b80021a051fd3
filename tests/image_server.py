"""A loopback HTTP server that serves what a test scripts, for ``image_url`` jobs to fetch.

Each path answers as its :class:`Page` says: an image, a redirect, an error status, a body sent a
few bytes at a time, or one that never ends. The server records the paths asked for and the
bytes it managed to send, and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Page:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: Send Content-Length (False: the body ends when the connection closes).
    length: bool = True
    #: Seconds between chunks of ``chunk`` bytes (a slow server).
    drip: float = 0.0
    chunk: int = 64 * 1024
    #: Repeat ``body`` without end (and without a length) until the client hangs up.
    endless: bool = False


class ImageServer:
    """``with ImageServer({"/cat.jpg": Page(body=jpeg)}) as server: server.url("/cat.jpg")``."""

    def __init__(self, pages: dict[str, Page] | None = None) -> None:
        self.pages: dict[str, Page] = dict(pages or {})
        self.hits: list[str] = []
        #: The request headers of each hit, in order.
        self.requests: list[dict[str, str]] = []
        self.sent: dict[str, int] = {}
        self._stopping = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> ImageServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits.append(self.path)
                server.requests.append(dict(self.headers))
                page = server.pages.get(self.path, Page(status=404, body=b"not here"))
                self.send_response(page.status)
                for name, value in page.headers.items():
                    self.send_header(name, value)
                if page.length and not page.endless:
                    self.send_header("Content-Length", str(len(page.body)))
                self.send_header("Connection", "close")
                self.end_headers()
                with contextlib.suppress(OSError):  # the client hung up (past MAX_FILE_SIZE, the deadline)
                    self._send(page)

            def _send(self, page: Page) -> None:
                sent = 0
                while not server._stopping.is_set():
                    for start in range(0, len(page.body), page.chunk):
                        if server._stopping.is_set():
                            return
                        piece = page.body[start : start + page.chunk]
                        self.wfile.write(piece)
                        self.wfile.flush()
                        sent += len(piece)
                        server.sent[self.path] = sent
                        if page.drip:
                            time.sleep(page.drip)
                    if not page.endless or not page.body:
                        return

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
