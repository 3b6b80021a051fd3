"""A stand-in for an internal service: an HTTP(S) server on 127.0.0.1 that records what reaches it."""

from __future__ import annotations

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
