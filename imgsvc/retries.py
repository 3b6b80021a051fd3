"""Retrying a job that ended: a new attempt of the same job (same id), from the same stored image.

The use case behind ``POST /api/v1/jobs/<id>/retry``: a failed or cancelled job whose image is
still stored goes back to queued with its ``attempt`` one higher and its last outcome cleared, and
is enqueued again under its own id; an ``image_url`` job whose image was never fetched (or was
removed) fetches it again. Anything else is a 409 that says why.
"""

from __future__ import annotations

import contextlib

from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob

from imgsvc.config import Settings
from imgsvc.errors import Conflict, ImgsvcError, QueueUnavailable
from imgsvc.queue.connection import enqueue_describe
from imgsvc.storage import jobs
from imgsvc.storage.uploads import UploadStore

RETRYABLE = (jobs.Status.FAILED, jobs.Status.CANCELLED)


def retry_job(settings: Settings, queue: Queue, uploads: UploadStore, job: jobs.Job) -> int:
    """Queue ``job`` again as its next attempt and return that attempt's number, or raise
    :class:`Conflict` saying why it cannot be."""
    if job.status not in RETRYABLE:
        raise Conflict(
            f"only a failed or cancelled job can be retried, and this one is {job.status}",
            status_now=job.status,
        )
    refetch = job.upload_name is None and job.image_url is not None  # the worker fetches it again
    if not refetch and not uploads.exists(job.upload_name):
        raise Conflict(
            "this job's image is no longer stored (an image that cannot be decoded is deleted when its "
            "job fails, and every image after UPLOAD_RETENTION); submit it again instead"
        )
    job_id = job.id
    before = jobs.mark_retried(job)
    if before is None:
        raise Conflict("the job changed meanwhile (retried or deleted by another request); read its status")
    try:
        # The ended run's RQ job (failed or cancelled in its registry) makes way for the new one.
        with contextlib.suppress(NoSuchJobError):
            RQJob.fetch(job_id, connection=queue.connection).delete()
        enqueue_describe(queue, settings, job_id)
    except (ImgsvcError, RedisError) as exc:
        jobs.undo_retry(job_id, before)
        raise QueueUnavailable() from exc
    return (before["attempt"] or 1) + 1
