"""The job functions RQ runs inside an :class:`~imgsvc.queue.worker.ImgsvcWorker`.

The worker pushes its Flask app context around every job, so a task finds the
loaded describer and the settings on ``current_app`` and never loads anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import current_app
from PIL import Image
from redis import Redis
from redis.exceptions import RedisError
from rq import get_current_job

from imgsvc.config import Settings
from imgsvc.decoding import DecodeError, Decoder
from imgsvc.errors import StorageUnavailable
from imgsvc.metrics import RedisMetrics
from imgsvc.queue.webhooks import enqueue_delivery
from imgsvc.storage import jobs
from imgsvc.storage.uploads import UploadStore
from imgsvc.vision.base import Describer, Description, UnsupportedOption

log = logging.getLogger("imgsvc.jobs")


@dataclass
class WorkerRuntime:
    """What a worker process holds for its whole life; stored in ``app.extensions``."""

    settings: Settings
    describer: Describer
    uploads: UploadStore
    metrics: RedisMetrics
    connection: Redis
    #: The decoder child: images are decoded under DECODE_TIMEOUT and DECODE_MEMORY_MB.
    decoder: Decoder
    #: Results computed ahead of time by a batched forward pass, keyed by job id.
    prefetched: dict[str, Description | Exception] = field(default_factory=dict)

    @staticmethod
    def current() -> WorkerRuntime:
        return current_app.extensions["imgsvc.runtime"]


class PermanentJobError(Exception):
    """An input no retry can fix (the image does not decode)."""


def describe_job(job_id: str) -> dict[str, object]:
    """Describe one uploaded image and record the outcome in its row."""
    runtime = WorkerRuntime.current()
    if not jobs.mark_processing(job_id):
        # Deleted, cancelled or already finished by an earlier run: nothing to do, nothing to undo.
        log.info("job skipped", extra={"job_id": job_id, "reason": "not claimable"})
        return {"job_id": job_id, "status": "skipped"}
    log.info("job processing", extra={"job_id": job_id, "status": jobs.Status.PROCESSING})
    started = time.perf_counter()
    row = jobs.get_job(job_id)
    wants_callback = bool(row and row.callback_url)
    observations: dict[str, float] = {}
    try:
        result = runtime.prefetched.pop(job_id, None)
        if result is None:
            options = job_options(job_id)
            runtime.describer.check_options(options)
            image = load_image(runtime, job_id)
            model_started = time.perf_counter()
            result = runtime.describer.describe_full([image], options)[0]
            observations["inference_seconds"] = time.perf_counter() - model_started
        if isinstance(result, Exception):
            raise result
    except (PermanentJobError, UnsupportedOption) as exc:
        _finish_failed(runtime, job_id, str(exc))
        return {"job_id": job_id, "status": "failed"}
    except Exception as exc:
        _record_failure(runtime, job_id, exc)
        raise
    elapsed = time.perf_counter() - started
    if not jobs.mark_done(job_id, result, runtime.describer.name, round(elapsed * 1000)):
        _discard_upload(runtime, job_id)
        log.info("job result discarded", extra={"job_id": job_id, "reason": "cancelled while processing"})
        return {"job_id": job_id, "status": "cancelled"}
    runtime.metrics.record("done", job_duration_seconds=elapsed, **observations)
    log.info("job done", extra={"job_id": job_id, "status": "done", "duration_ms": round(elapsed * 1000)})
    if wants_callback:
        notify(runtime, job_id)
    return {"job_id": job_id, "status": "done"}


def job_options(job_id: str) -> dict[str, Any]:
    row = jobs.get_job(job_id)
    return dict(row.options or {}) if row is not None else {}


def notify(runtime: WorkerRuntime, job_id: str) -> None:
    """Queue the webhook of a finished job, if it asked for one; never fails the job."""
    row = jobs.get_job(job_id)
    if row is None or not row.callback_url:
        return
    payload = row.result_dict() if row.status == jobs.Status.DONE else row.status_dict()
    try:
        enqueue_delivery(runtime.connection, runtime.settings, row.callback_url, payload)
    except RedisError:
        log.exception("webhook not queued", extra={"job_id": job_id})


def _discard_upload(runtime: WorkerRuntime, job_id: str) -> None:
    """Never fails the job's bookkeeping: an upload left behind keeps its finished row, so
    ``flask prune`` deletes it after UPLOAD_RETENTION."""
    row = jobs.get_job(job_id)
    if row is not None:
        try:
            runtime.uploads.delete(row.upload_name)
        except StorageUnavailable:
            log.warning("upload not deleted", extra={"job_id": job_id, "reason": "store unavailable"})


def _finish_failed(runtime: WorkerRuntime, job_id: str, reason: str) -> None:
    """Failed for good: the row says why, the upload is deleted, the webhook fires."""
    jobs.mark_failed(job_id, reason)
    _discard_upload(runtime, job_id)
    runtime.metrics.count("failed")
    log.warning("job failed", extra={"job_id": job_id, "status": "failed", "error": reason})
    notify(runtime, job_id)


def load_image(runtime: WorkerRuntime, job_id: str) -> Image.Image:
    """The job's image, decoded in the decoder child; one that does not decode fails for good."""
    (image,) = load_images(runtime, [job_id])
    if isinstance(image, Exception):
        raise image
    return image


def load_images(runtime: WorkerRuntime, job_ids: list[str]) -> list[Image.Image | Exception]:
    """Several jobs' images in one call to the decoder child, in order; errors stay with their job.

    An error is a :class:`PermanentJobError` (gone, or never decodes: fail for good) or a
    :class:`~imgsvc.errors.StorageUnavailable` (the store did not answer: retry).
    """
    results: dict[str, Image.Image | Exception] = {}
    with ExitStack() as copies:
        paths: dict[str, Path] = {}
        for job_id in job_ids:
            try:
                paths[job_id] = copies.enter_context(local_upload(runtime, job_id))
            except (PermanentJobError, StorageUnavailable) as exc:
                results[job_id] = exc
        for job_id, image in zip(paths, runtime.decoder.decode_many(list(paths.values())), strict=True):
            results[job_id] = PermanentJobError(str(image)) if isinstance(image, DecodeError) else image
    return [results[job_id] for job_id in job_ids]


@contextmanager
def local_upload(runtime: WorkerRuntime, job_id: str) -> Iterator[Path]:
    """The job's upload as a local file while the block runs: the only place the worker reads it.

    The file itself (local store) or a downloaded copy (object storage); a store that cannot be
    reached raises StorageUnavailable, which is retried like any transient error.
    """
    row = jobs.get_job(job_id)
    if row is None:
        raise PermanentJobError("the job row disappeared")
    with ExitStack() as stack:
        try:
            path = stack.enter_context(runtime.uploads.local_copy(row.upload_name))
        except FileNotFoundError as exc:
            raise PermanentJobError("the uploaded file is missing") from exc
        yield path


def _record_failure(runtime: WorkerRuntime, job_id: str, exc: BaseException) -> None:
    """Mirror RQ's retry decision in the row: queued again with the error, or failed for good."""
    rq_job = get_current_job()
    reason = f"{type(exc).__name__}: {exc}"
    if rq_job is not None and rq_job.should_retry:
        jobs.mark_retrying(job_id, reason)
        runtime.metrics.count("retried")
        log.warning(
            "job retrying",
            extra={
                "job_id": job_id,
                "status": "queued",
                "error": reason,
                "retries_left": rq_job.retries_left,
            },
        )
    else:
        _finish_failed(runtime, job_id, reason)
