"""Webhook delivery: when a job ends, POST its result to the job's callback_url.

Delivery is its own RQ job on WEBHOOK_QUEUE, retried with backoff, so a slow or dead
receiver never holds up the model. The body is signed with HMAC-SHA256 (WEBHOOK_SECRET)
in ``X-Imgsvc-Signature: sha256=<hex>``. The delivery function needs no app or database,
so a plain ``rq worker imgsvc-webhooks`` runs it.

Why it is built this way (server-side request forgery):

- **One parser.** ``imgsvc/outbound_urls.py``'s ``parse_url`` is the only code that
  reads a callback URL, at submit (the web side imports it from there) and at delivery; the
  HTTP client is handed its result (address, port, host name, path), never the URL. Its
  grammar is narrow on purpose: http(s), a plain host (a DNS name of letters, digits and
  hyphens, a dotted-quad IPv4 or a bracketed IPv6), no userinfo, and only RFC 3986
  characters, so no backslash, quote, angle bracket, space or control character that two
  parsers could read differently (``http://127.0.0.1:1\\@1.2.3.4/``).
- **Resolve once, connect to what was vetted.** At delivery the host is resolved exactly
  once, every address is judged, and the socket connects to a judged address, while the
  HTTP ``Host`` header, TLS SNI and the certificate check use the original host name. A DNS
  answer that changes between the check and the connection (rebinding) changes nothing.
- **Embedded IPv4.** IPv6 forms that reach IPv4 (mapped, compatible, NAT64, 6to4, Teredo)
  are judged by the IPv4 address they carry.
- **Redirects are never followed**; a 3xx is a failed delivery.
- **A total deadline per attempt.** ``WEBHOOK_TIMEOUT`` seconds (15) from the first connect
  to the status line and headers, whatever the receiver does: one that answers a byte every
  few seconds (no single read ever times out) is cut at the deadline, by a timer that shuts
  the socket down. Slow receivers cannot hold the webhook workers: ``imgsvc webhooks`` runs
  ``WEBHOOK_WORKERS`` of them side by side, and at most ``WEBHOOK_PER_HOST`` deliveries to one
  host and port are queued or running at once (RQ's ``RateLimit``; the rest wait their turn
  without taking a worker), so other hosts' deliveries always find a free worker.
- **Nothing untrusted in an exception.** rq-dashboard renders a failed job's exception as
  HTML, so a failed delivery raises a fixed text (the status code or the error's class) and
  logs the details as JSON; the body is JSON with ``<>&'`` escaped, since RQ shows job
  arguments too.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import ssl
import time
from collections.abc import Iterable
from typing import Any

from redis import Redis
from rq import Queue, Retry, get_current_job
from rq.rate_limit import RateLimit

from imgsvc import logs
from imgsvc.config import Settings
from imgsvc.outbound_urls import (
    IPAddress,
    OutboundURL,
    Resolver,
    UnsafeCallbackURL,
    parse_callback_url,
    resolve_host,
    vetted_addresses,
)
from imgsvc.queue.pinned_http import Cutoff, pinned_connection

log = logging.getLogger("imgsvc.webhooks")

DELIVERY_BACKOFF = [2, 10, 60, 300, 1800]
SIGNATURE_HEADER = "X-Imgsvc-Signature"
#: One connect or one read (a receiver that says nothing at all fails this soon).
TIMEOUT_S = 10
#: The whole attempt, when the caller names no WEBHOOK_TIMEOUT (jobs enqueued before it existed).
DEADLINE_S = 15
#: A host name with many addresses is tried on at most this many (each is vetted first).
MAX_ADDRESSES_TRIED = 3


class WebhookDeliveryFailed(Exception):
    """Raised to make RQ retry; its text is fixed, never a URL, host or a receiver's words."""


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def json_body(payload: dict[str, Any]) -> bytes:
    """JSON that is also inert in HTML: job arguments (this body) are shown by rq-dashboard."""
    text = json.dumps(payload, sort_keys=True)
    for char in "<>&'":  # outside strings JSON never has these; inside, \u00XX means the same
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text.encode()


def enqueue_delivery(connection: Redis, settings: Settings, url: str, payload: dict[str, Any]) -> None:
    body = json_body(payload)
    parsed = parse_callback_url(url)
    queue = Queue(settings.webhook_queue_name, connection=connection)
    queue.enqueue(
        deliver,
        url,
        body,
        sign(body, settings.webhook_secret),
        settings.webhook_allow_private,
        settings.webhook_timeout,
        retry=Retry(max=len(DELIVERY_BACKOFF), interval=DELIVERY_BACKOFF),
        # RQ's own limit is only the backstop of the attempt's deadline.
        job_timeout=settings.webhook_timeout + 30,
        # By the name and port the user gave: what one receiver can hold up is its own deliveries.
        rate_limit=RateLimit(f"imgsvc-webhook:{parsed.host}:{parsed.port}", settings.webhook_per_host),
        description=f"webhook {payload.get('job_id')}",
    )


def deliver(
    url: str, body: bytes, signature: str, allow_private: bool, deadline_s: float = DEADLINE_S
) -> int:
    """The RQ job: raises on anything but a 2xx so RQ retries with backoff."""
    logs.configure()  # a plain ``rq worker`` has not set up imgsvc's JSON log lines
    return post_signed(parse_callback_url(url), body, signature, allow_private, deadline_s=deadline_s)


def post_signed(
    url: OutboundURL,
    body: bytes,
    signature: str,
    allow_private: bool,
    *,
    resolve: Resolver = resolve_host,
    tls: ssl.SSLContext | None = None,
    deadline_s: float = DEADLINE_S,
) -> int:
    """POST ``body`` to a vetted address of ``url``'s host; the host name goes in Host and SNI.

    The status line and headers must be in within ``deadline_s`` of the start, connects included.
    """
    where = {"host": url.host, "port": url.port}
    try:
        addresses = vetted_addresses(url, allow_private, resolve)
    except UnsafeCallbackURL as exc:
        log.warning("webhook refused", extra=where | {"error": exc.message})
        _give_up()  # the same answer every time: retrying would only repeat it
        raise WebhookDeliveryFailed("webhook refused: the callback address is not allowed") from None
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature,
        "User-Agent": "imgsvc-webhook",
    }
    deadline = time.monotonic() + deadline_s
    status = _post(url, addresses[:MAX_ADDRESSES_TRIED], body, headers, tls, where, deadline)
    if not 200 <= status < 300:
        log.warning("webhook rejected", extra=where | {"status": status})
        raise WebhookDeliveryFailed(f"webhook receiver answered HTTP {status}")
    log.info("webhook delivered", extra=where | {"status": status})
    return status


def _post(
    url: OutboundURL,
    addresses: Iterable[IPAddress],
    body: bytes,
    headers: dict[str, str],
    tls: ssl.SSLContext | None,
    where: dict[str, object],
    deadline: float,
) -> int:
    """The status from the first vetted address that takes the connection, by ``deadline``.

    Only a failed *connection* moves on to the next address; once a request may have been
    sent, a failure is final for this attempt (RQ's retry decides), so nothing is POSTed twice.
    """
    failure: Exception | None = None
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        connection = pinned_connection(url, address, tls, min(TIMEOUT_S, remaining))
        with Cutoff(connection, deadline) as cutoff:
            try:
                connection.connect()
            except OSError as exc:
                error = "deadline" if cutoff.cut else repr(exc)
                log.warning("webhook connect failed", extra=where | {"address": str(address), "error": error})
                failure = exc
                connection.close()
                continue
            try:
                connection.request("POST", url.target, body=body, headers=headers)
                return connection.getresponse().status
            except (OSError, http.client.HTTPException) as exc:
                error = "deadline" if cutoff.cut else repr(exc)
                log.warning(
                    "webhook delivery failed", extra=where | {"address": str(address), "error": error}
                )
                failure = exc
                break
            finally:
                connection.close()
    if failure is None or time.monotonic() >= deadline:
        raise WebhookDeliveryFailed(
            "webhook delivery failed: the receiver did not answer within the delivery deadline"
        ) from None
    raise WebhookDeliveryFailed(f"webhook delivery failed: {type(failure).__name__}") from None


def _give_up() -> None:
    """Fail the current RQ job without its remaining retries."""
    job = get_current_job()
    if job is not None:
        job.retries_left = 0
