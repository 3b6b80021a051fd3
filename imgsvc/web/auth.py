"""Optional API keys and rate limits for the /api routes.

With API_KEYS set, every /api request needs ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``,
and a job is only visible to the key that submitted it (rows store a hash, never the key).
Rate limits count per *valid* key, and per client address for everything else: a made-up key
header opens no bucket of its own, and failed authentications use up the address's bucket.
"""

from __future__ import annotations

import hashlib
import hmac

from flask import Flask, g, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from imgsvc.config import Settings, app_settings
from imgsvc.errors import Unauthorized


def owner_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.headers.get("X-API-Key") or None


def valid_key() -> str | None:
    """The presented key when it is one of API_KEYS, else None (also when keys are off)."""
    settings = app_settings()
    key = presented_key()
    if key is None or not settings.api_keys:
        return None
    # Compare bytes: compare_digest refuses str with non-ASCII characters (a 500 before).
    matches = [hmac.compare_digest(key.encode(), k.encode()) for k in settings.api_keys]
    return key if any(matches) else None


def require_api_key() -> None:
    """before_request for the api blueprint: sets ``g.owner`` (None when keys are off)."""
    settings = app_settings()
    g.owner = None
    if not settings.api_keys:
        return
    key = valid_key()
    if key is None:
        raise Unauthorized("a valid API key is required (Authorization: Bearer KEY or X-API-Key: KEY)")
    g.owner = owner_of(key)


def client_bucket() -> str:
    """Only a valid key earns a bucket of its own; junk and wrong keys count against the address."""
    key = valid_key()
    return f"key:{owner_of(key)}" if key else f"ip:{get_remote_address()}"


#: How the limits reach Redis: a Redis that hangs must not hang the request for long.
LIMITS_STORAGE_OPTIONS = {"socket_connect_timeout": 2, "socket_timeout": 2}


def limits_prefix(settings: Settings) -> str:
    """Where every limit's counters live in Redis: the API's and the dashboard's logins alike."""
    return f"imgsvc:limits:{settings.queue_name}"


def init_rate_limits(app: Flask, settings: Settings) -> None:
    """Flask-Limiter on the same Redis; only the /api routes count, health checks never do."""
    if not settings.rate_limit:
        return
    app.config.update(RATELIMIT_HEADERS_ENABLED=True, RATELIMIT_SWALLOW_ERRORS=True)
    Limiter(
        client_bucket,
        app=app,
        application_limits=[settings.rate_limit],
        application_limits_exempt_when=lambda: request.blueprint != "api",
        storage_uri=settings.redis_url,
        storage_options=LIMITS_STORAGE_OPTIONS,
        key_prefix=limits_prefix(settings),
        strategy="fixed-window",
    )
