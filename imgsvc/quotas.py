"""Daily quotas per client: jobs and stored bytes per API key, or per address without one.

Request-free, like the submit use case that charges them: the caller names the client's
``bucket`` (the web side: :func:`imgsvc.web.auth.client_bucket`).

The rate limit (RATE_LIMIT) spaces requests out; a quota caps what one client may leave on
the disk and the queue in a day (QUOTA_JOBS_PER_DAY, QUOTA_BYTES_PER_DAY; 0 = no quota).
A client is what the rate limit counts: a valid API key, else the client's address (so a
made-up key opens no new quota). Counts live in Redis, one hash per client and UTC day,
shared by every web process, and expire after the day. A refusal is 429 with Retry-After
(seconds to the next UTC midnight) and says which quota ran out.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from redis import Redis

from imgsvc.config import Settings
from imgsvc.errors import TooManyRequests


def _key(settings: Settings, bucket: str, now: datetime) -> str:
    return f"imgsvc:quota:{settings.queue_name}:{bucket}:{now:%Y%m%d}"


def _retry_after(now: datetime) -> int:
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((midnight - now).total_seconds()))


def _refuse(settings: Settings, jobs: int, now: datetime) -> TooManyRequests:
    if settings.quota_jobs_per_day and jobs > settings.quota_jobs_per_day:
        what = f"{settings.quota_jobs_per_day} jobs"
    else:
        what = f"{settings.quota_bytes_per_day} bytes of uploads"
    return TooManyRequests(
        f"this client's daily quota of {what} is used up; it resets at midnight UTC",
        retry_after=_retry_after(now),
        quota_jobs_per_day=settings.quota_jobs_per_day,
        quota_bytes_per_day=settings.quota_bytes_per_day,
    )


def _over(settings: Settings, jobs: int, size: int) -> bool:
    return bool(
        (settings.quota_jobs_per_day and jobs > settings.quota_jobs_per_day)
        or (settings.quota_bytes_per_day and size > settings.quota_bytes_per_day)
    )


def check_quota(redis: Redis, settings: Settings, bucket: str) -> None:
    """Before any work: refuse a client whose quota is already used up (one more job would pass it)."""
    if not (settings.quota_jobs_per_day or settings.quota_bytes_per_day):
        return
    now = datetime.now(UTC)
    jobs, size = (int(v or 0) for v in redis.hmget(_key(settings, bucket, now), "jobs", "bytes"))
    if _over(settings, jobs + 1, size):
        raise _refuse(settings, jobs + 1, now)


def charge_quota(redis: Redis, settings: Settings, bucket: str, size: int) -> None:
    """Count one job of ``size`` stored bytes, or refuse it (and count nothing) if it passes a quota."""
    if not (settings.quota_jobs_per_day or settings.quota_bytes_per_day):
        return
    now = datetime.now(UTC)
    key = _key(settings, bucket, now)
    with redis.pipeline(transaction=True) as pipe:
        pipe.hincrby(key, "jobs", 1).hincrby(key, "bytes", size).expire(key, 2 * 24 * 3600)
        jobs, total, _ = pipe.execute()
    if _over(settings, jobs, total):
        with redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "jobs", -1).hincrby(key, "bytes", -size).execute()
        raise _refuse(settings, jobs, now)


def refund_quota(redis: Redis, settings: Settings, bucket: str, jobs: int, size: int) -> None:
    """Give back what :func:`charge_quota` counted for a job that was not kept (or stored nothing)."""
    if not (settings.quota_jobs_per_day or settings.quota_bytes_per_day):
        return
    key = _key(settings, bucket, datetime.now(UTC))
    with redis.pipeline(transaction=True) as pipe:
        pipe.hincrby(key, "jobs", -jobs).hincrby(key, "bytes", -size).execute()
