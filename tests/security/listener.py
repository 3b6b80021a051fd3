"""A stand-in for an internal service: an HTTP(S) server on 127.0.0.1 that records what reaches it."""

from __future__ import annotations

import select
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Listener:
    """Answers every request with ``status`` (and ``reason``, which may be hostile) after recording it."""

    status: int = 204
    reason: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    tls: ssl.SSLContext | None = None
    received: list[Received] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)  # TLS SNI, per handshake

    def __enter__(self) -> Listener:
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                listener.received.append(
                    Received(self.command, self.path, dict(self.headers), self.rfile.read(length))
                )
                self.send_response(listener.status, listener.reason)
                for name, value in listener.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(listener.body)))
                self.end_headers()
                self.wfile.write(listener.body)

            do_GET = do_POST

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            self.tls.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    @property
    def port(self) -> int:
        return self.server.server_port

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}{path}"


def self_signed_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """(certificate, key) for ``name``, made by the openssl CLI; the certificate is its own CA."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    command += ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}"]
    command += ["-addext", f"subjectAltName=DNS:{name}"]
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


@dataclass
class Drip:
    """One connection to a :class:`DripReceiver`: how much it was sent and who ended it."""

    sent: int = 0
    cut_by_client: bool = False
    ended: bool = False


@dataclass
class DripReceiver:
    """Reads a request, then answers ``HTTP/1.1 200 OK...`` one byte a second, for a minute."""

    drips: list[Drip] = field(default_factory=list)

    def __enter__(self) -> DripReceiver:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            drip = Drip()
            self.drips.append(drip)
            threading.Thread(target=self._drip, args=(conn, drip), daemon=True).start()

    @staticmethod
    def _drip(conn: socket.socket, drip: Drip) -> None:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + b"X: " + b"y" * 200
        with conn:
            conn.recv(65536)  # the request (its headers at least)
            for byte in answer[:60]:
                readable, _, _ = select.select([conn], [], [], 1.0)
                try:
                    if readable and not conn.recv(65536):
                        drip.cut_by_client = True  # the client closed its side
                        break
                    conn.sendall(bytes([byte]))
                except OSError:
                    drip.cut_by_client = True
                    break
                drip.sent += 1
        drip.ended = True
