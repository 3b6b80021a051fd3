"""Cheap polls: ``ETag``/``If-None-Match`` answered 304 from Redis, and ``Retry-After`` on unfinished jobs.

A client that polls /status or /result sends back the ETag it was given; while the job's row has
not changed, the answer is a 304 made from one Redis GET of the job's poll validator (a token the
row's writers replace after each committed change, :mod:`imgsvc.queue.changes`), with no SQL
round trip. The ETag is the validator hashed with the endpoint and the caller's owner, so a tag
never says anything to another API key, and a tag from /status is no tag for /result.
Whenever the validator is missing (expired, Redis down, a cached submit) the row is read: the
row stays the truth and a validator can only save a read, never answer one.
"""

from __future__ import annotations

import hashlib

from flask import Response, current_app, g, request
from redis.exceptions import RedisError

from imgsvc.queue.changes import validator_key
from imgsvc.storage import jobs

#: Seconds a poller is asked to wait before its next poll of an unfinished job. ``Prefer: wait``
#: is the way to have the answer the moment it exists; this only paces the clients that poll.
POLL_AFTER = 1


def read_validator(job_id: str) -> tuple[str, str] | None:
    """(token, status) of the job's validator, or None (none written, expired, Redis unreachable).

    Read before the row: a row read afterwards is at least as new as the change this token marks.
    """
    try:
        raw = current_app.redis.get(validator_key(job_id))
    except RedisError:
        return None
    if not raw:
        return None
    token, _, status = raw.decode().partition(" ")
    return token, status


def etag(kind: str, token: str) -> str:
    owner = g.get("owner") or ""
    return hashlib.sha256(f"{kind}|{token}|{owner}".encode()).hexdigest()[:24]


def not_modified(kind: str, job_id: str, validator: tuple[str, str] | None) -> Response | None:
    """The 304 for a poll whose ETag still matches the job's validator, else None (read the row)."""
    if validator is None or not request.if_none_match:
        return None
    token, status = validator
    tag = etag(kind, token)
    if not request.if_none_match.contains(tag):
        return None
    g.job_id = job_id
    response = Response(status=304)
    response.set_etag(tag)
    if status in jobs.UNFINISHED:
        response.headers["Retry-After"] = str(POLL_AFTER)
    return response


def poll_headers(kind: str, job: jobs.Job, validator: tuple[str, str] | None) -> dict[str, str]:
    """ETag (when the job has a validator) and, while it is unfinished, Retry-After."""
    headers = {}
    if validator is not None:
        headers["ETag"] = f'"{etag(kind, validator[0])}"'
    if job.status in jobs.UNFINISHED:
        headers["Retry-After"] = str(POLL_AFTER)
    return headers
