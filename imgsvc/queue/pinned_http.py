"""HTTP connections to an address the SSRF guard vetted, cut at a total deadline.

Used by the webhook delivery (``webhooks.py``) and the image fetch (``fetches.py``): the socket
connects to an address :func:`imgsvc.outbound_urls.vetted_addresses` judged, while the ``Host``
header, TLS SNI and the certificate check use the URL's host name; a :class:`Cutoff` shuts the
socket down at the deadline, whatever the other side drips.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time

from imgsvc.outbound_urls import IPAddress, OutboundURL


class Cutoff:
    """Shuts the connection's socket down at ``deadline``, unblocking whatever read or write
    waits on it: per-read timeouts alone let a receiver that drips a byte at a time hold an
    attempt for as long as it likes."""

    def __init__(self, connection: http.client.HTTPConnection, deadline: float) -> None:
        self.connection = connection
        self.cut = False
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._cut)
        self._timer.daemon = True

    def __enter__(self) -> Cutoff:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def _cut(self) -> None:
        self.cut = True
        # Once a response that closes the connection is in, http.client drops ``connection.sock``
        # while the response still reads the body from it: the socket the connection opened is cut.
        sock = getattr(self.connection, "opened", None) or self.connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # the plain socket's shutdown, under TLS too
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


def pinned_connection(
    url: OutboundURL, address: IPAddress, tls: ssl.SSLContext | None, timeout: float
) -> http.client.HTTPConnection:
    """An http.client connection whose socket goes to ``address`` while it speaks to ``url.host``."""
    if url.scheme == "https":
        return PinnedHTTPSConnection(
            url.host, url.port, address, timeout, tls or ssl.create_default_context()
        )
    return PinnedHTTPConnection(url.host, url.port, address, timeout)


class PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: IPAddress, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address
        #: The socket this connection opened, kept after http.client lets go of it (see Cutoff).
        self.opened: socket.socket | None = None

    def connect(self) -> None:
        self.sock = self.opened = socket.create_connection((str(self.address), self.port), self.timeout)


class PinnedHTTPSConnection(PinnedHTTPConnection):
    default_port = http.client.HTTPS_PORT

    def __init__(self, host: str, port: int, address: IPAddress, timeout: float, tls: ssl.SSLContext) -> None:
        super().__init__(host, port, address, timeout)
        self.tls = tls

    def connect(self) -> None:
        super().connect()  # self.sock is the plain socket meanwhile: a cutoff can shut it
        # SNI and the certificate check are for the name the user gave, not the address.
        self.sock = self.opened = self.tls.wrap_socket(self.sock, server_hostname=self.host)
