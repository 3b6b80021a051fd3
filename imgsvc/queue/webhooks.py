"""Webhook delivery: when a job ends, POST its result to the job's callback_url.

Delivery is its own RQ job on WEBHOOK_QUEUE, retried with backoff, so a slow or dead
receiver never holds up the model. The body is signed with HMAC-SHA256 (WEBHOOK_SECRET)
in ``X-Imgsvc-Signature: sha256=<hex>``. The delivery function needs no app or database,
so a plain ``rq worker imgsvc-webhooks`` runs it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
from typing import Any
from urllib.parse import urlsplit

import requests
from redis import Redis
from rq import Queue, Retry

from imgsvc.config import Settings
from imgsvc.errors import BadRequest

log = logging.getLogger("imgsvc.webhooks")

DELIVERY_BACKOFF = [2, 10, 60, 300, 1800]
SIGNATURE_HEADER = "X-Imgsvc-Signature"


class UnsafeCallbackURL(BadRequest):
    code = "invalid_callback_url"


def check_callback_url(url: str, allow_private: bool) -> str:
    """http(s) only; unless allowed, refuse hosts that resolve to private or loopback addresses (SSRF)."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise UnsafeCallbackURL("callback_url must be an absolute http:// or https:// URL")
    if len(url) > 2048:
        raise UnsafeCallbackURL("callback_url is longer than 2048 characters")
    if allow_private:
        return url
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeCallbackURL(f"callback_url host does not resolve: {parts.hostname}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise UnsafeCallbackURL(f"callback_url resolves to a non-public address ({address})")
    return url


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def enqueue_delivery(connection: Redis, settings: Settings, url: str, payload: dict[str, Any]) -> None:
    body = json.dumps(payload, sort_keys=True).encode()
    queue = Queue(settings.webhook_queue_name, connection=connection)
    queue.enqueue(
        deliver,
        url,
        body,
        sign(body, settings.webhook_secret),
        settings.webhook_allow_private,
        retry=Retry(max=len(DELIVERY_BACKOFF), interval=DELIVERY_BACKOFF),
        job_timeout=60,
        description=f"webhook {payload.get('job_id')}",
    )


def deliver(url: str, body: bytes, signature: str, allow_private: bool) -> int:
    """Raises on any non-2xx so RQ retries with backoff. Re-checks the URL: DNS may have changed."""
    check_callback_url(url, allow_private)
    response = requests.post(
        url,
        data=body,
        headers={
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature,
            "User-Agent": "imgsvc-webhook",
        },
        timeout=10,
        allow_redirects=False,
    )
    response.raise_for_status()
    log.info("webhook delivered", extra={"url": url, "status": response.status_code})
    return response.status_code
