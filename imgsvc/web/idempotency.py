"""``Idempotency-Key`` on submit and batch: a request sent again gets the first one's answer.

A client that timed out on a submit and sends it again with the same key gets the same job id
and status code, not a second job. Each key is stored in Redis for 24 hours, scoped to the API
key that sent it (one scope for everybody when API keys are off), with a fingerprint of the
request: the route, the form fields and each file's name, size and sha256 (the multipart
boundary differs between two sends of the same request, so the raw body cannot tell). The same
key with another request is a 422; a key whose first request is still running is a 409. Only
answers that took something (2xx) are kept: after a refusal or an outage nothing was created, and
the same request may be sent again under the same key.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from typing import Any

from flask import Response, current_app, g, request

from imgsvc.errors import BadRequest, Conflict, ImgsvcError
from imgsvc.storage.uploads import StagingFile

HEADER = "Idempotency-Key"
TTL_SECONDS = 24 * 3600
#: How long a first request may run before its key is free again (it died without an answer).
PENDING_SECONDS = 300
MAX_KEY_LENGTH = 255


class KeyReused(ImgsvcError):
    status = 422
    code = "idempotency_key_reused"


def idempotent(view: Callable[..., Any]) -> Callable[..., Any]:
    """Answer a repeated ``Idempotency-Key`` with the first answer (see the module's docstring)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = request.headers.get(HEADER)
        if key is None:
            return view(*args, **kwargs)
        if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
            raise BadRequest(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters")
        redis = current_app.redis
        slot = _slot(key)
        fingerprint = _fingerprint()
        pending = json.dumps({"fingerprint": fingerprint})
        if not redis.set(slot, pending, nx=True, ex=PENDING_SECONDS):
            return _replay(redis.get(slot), fingerprint)
        try:
            response = current_app.make_response(view(*args, **kwargs))
        except BaseException:
            redis.delete(slot)
            raise
        if not 200 <= response.status_code < 300:
            redis.delete(slot)  # nothing was taken: the same request may be sent again as it is
        else:
            body = response.get_data(as_text=True)
            kept = {"fingerprint": fingerprint, "status": response.status_code, "body": body}
            if "Location" in response.headers:
                kept["location"] = response.headers["Location"]
            redis.set(slot, json.dumps(kept), ex=TTL_SECONDS)
        return response

    return wrapper


def _slot(key: str) -> str:
    owner = g.get("owner") or "-"
    return f"imgsvc:idempotency:{owner}:{hashlib.sha256(key.encode()).hexdigest()}"


def _fingerprint() -> str:
    """The request's meaning: route, form fields, and each file's name, size and hash."""
    files = []
    for field, upload in request.files.items(multi=True):
        stream = upload.stream
        digest = stream.sha256 if isinstance(stream, StagingFile) else None
        size = stream.size if isinstance(stream, StagingFile) else None
        files.append([field, upload.filename, size, digest])
    fields = sorted([name, value] for name, value in request.form.items(multi=True))
    parts = {"route": request.endpoint, "fields": fields, "files": files}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _replay(raw: bytes | None, fingerprint: str) -> Response:
    if raw is None:  # expired between the two calls: treat as in progress, the client retries
        raise Conflict(f"a request with this {HEADER} is in progress; send it again shortly")
    kept = json.loads(raw)
    if kept["fingerprint"] != fingerprint:
        raise KeyReused(f"this {HEADER} was used with a different request; use a new key for a new request")
    if "status" not in kept:
        raise Conflict(f"a request with this {HEADER} is in progress; send it again shortly")
    response = Response(kept["body"], status=kept["status"], mimetype="application/json")
    if "location" in kept:
        response.headers["Location"] = kept["location"]
    response.headers["Idempotent-Replayed"] = "true"
    return response
