"""The job functions RQ runs inside an :class:`~imgsvc.queue.worker.ImgsvcWorker`.

:func:`describe_batch` runs a batch of jobs: it claims their rows in one statement (which
also reads what the jobs need), gets their images from the :class:`ImageLoader`, runs one
forward pass per group of equal options and writes every result in one transaction.
:func:`describe_job` is the same for one job, as RQ calls it (``rq worker``, or a job the
worker runs on its own). The worker pushes its Flask app context around every batch, so a
task finds the loaded describer and the settings on ``current_app`` and never loads anything.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

from flask import current_app
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import get_current_job
from rq.timeouts import BaseTimeoutException

from imgsvc.config import Settings
from imgsvc.decoding import DecoderPool
from imgsvc.errors import StorageUnavailable
from imgsvc.metrics import RedisMetrics
from imgsvc.queue.connection import waiting_key
from imgsvc.queue.fetches import FetchedImage, FetchFailed, fetch_image
from imgsvc.queue.prefetch import ImageLoader, PermanentJobError
from imgsvc.queue.webhooks import enqueue_delivery
from imgsvc.results import ImageSummary
from imgsvc.storage import jobs
from imgsvc.storage.db import db
from imgsvc.storage.uploads import UploadStore
from imgsvc.vision.base import Describer, Description, UnsupportedOption

log = logging.getLogger("imgsvc.jobs")

#: What a job's run gives RQ: its return value, or the exception RQ retries or fails it with
#: (the row already says which).
Outcome = dict[str, object] | Exception


@dataclass
class WorkerRuntime:
    """What a worker process holds for its whole life; stored in ``app.extensions``."""

    settings: Settings
    describer: Describer
    uploads: UploadStore
    metrics: RedisMetrics
    connection: Redis
    #: The decoder children: images are decoded under DECODE_TIMEOUT and DECODE_MEMORY_MB.
    decoder: DecoderPool
    #: Reads and decodes uploads on a thread of its own, ahead of time when told what comes next.
    loader: ImageLoader
    #: The queue this worker takes jobs from (its model's); None: the default queue.
    queue_name: str | None = None

    @staticmethod
    def current() -> WorkerRuntime:
        return current_app.extensions["imgsvc.runtime"]


def describe_job(job_id: str) -> dict[str, object]:
    """Describe one uploaded image and record the outcome in its row (RQ's entry point)."""
    rq_job = get_current_job()
    runtime = WorkerRuntime.current()
    if rq_job is not None:
        runtime.connection.zrem(waiting_key(rq_job.origin), job_id)
    outcome = describe_batch(
        runtime, [job_id], can_retry=lambda _: rq_job is not None and rq_job.should_retry
    )[job_id]
    if isinstance(outcome, PermanentJobError) and rq_job is not None:
        rq_job.retries_left = 0  # failed for good: RQ's failed registry, not another try
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def describe_batch(
    runtime: WorkerRuntime,
    job_ids: Sequence[str],
    *,
    can_retry: Callable[[str], bool],
    deadline: Callable[[], AbstractContextManager[object]] = nullcontext,
    ahead: Sequence[str] = (),
    ahead_later: Callable[[], Sequence[str]] | None = None,
    metrics: Pipeline | None = None,
) -> dict[str, Outcome]:
    """Describe a batch of jobs; each job's outcome is its own, in its row and in the answer.

    ``can_retry(job_id)``: whether RQ will run a job again if it fails now (its retries left),
    so the row can say "queued again" or "failed". ``deadline``: wraps reading, decoding and
    the model (the worker's JOB_TIMEOUT). ``ahead``: the jobs next on the queue, whose images
    are decoded meanwhile; ``ahead_later()``: the jobs next on the queue once the model has run
    (those submitted meanwhile), whose images are then decoded while this batch's results are
    written and the next batch is taken. ``metrics``: a Redis pipeline the caller executes (one
    round trip fewer); without it the metrics are written here.
    """
    started = time.perf_counter()
    try:
        claims, upcoming = jobs.claim_jobs(job_ids, peek=ahead)
    except BaseException:
        db.session.rollback()
        raise
    outcomes: dict[str, Outcome] = {}
    missed = [job_id for job_id in job_ids if job_id not in claims]
    if missed:
        claims |= _requeued_by_rq(missed, outcomes)
    for job_id in job_ids:
        if job_id in outcomes:
            continue
        if job_id not in claims:
            # Deleted, cancelled or already finished by an earlier run: nothing to do, nothing to undo.
            log.info("job skipped", extra={"job_id": job_id, "reason": "not claimable"})
            outcomes[job_id] = {"job_id": job_id, "status": "skipped"}
        else:
            log.info("job processing", extra={"job_id": job_id, "status": jobs.Status.PROCESSING})
    starting = [c.id for c in claims.values() if c.callback_url and "start" in c.webhooks]
    for job_id in starting:
        notify(runtime, job_id, "start")
    if starting:
        db.session.commit()  # ends the rows' read: no SQLite snapshot stays open while the model runs
    run = _Run(runtime, claims)
    try:
        with deadline():
            run.describe(upcoming.values())
    except Exception as exc:  # JOB_TIMEOUT, or the loader itself: the rest of the batch fails this try
        for job_id in claims.keys() - run.results.keys() - run.rejected.keys() - run.failures.keys():
            run.failures[job_id] = exc
    if ahead_later is not None:
        _decode_ahead(runtime, ahead_later, skip=set(job_ids) | upcoming.keys())
    elapsed = time.perf_counter() - started
    try:
        outcomes |= run.record(elapsed, can_retry, metrics)
    except BaseException:
        db.session.rollback()
        raise
    return outcomes


def _decode_ahead(runtime: WorkerRuntime, next_ids: Callable[[], Sequence[str]], skip: set[str]) -> None:
    """Start decoding the images of the jobs queued now; a guess, so a failure only costs the guess."""
    try:
        names = jobs.peek_uploads([job_id for job_id in next_ids() if job_id not in skip])
    except Exception:  # Redis or the database: the next batch decodes its images when it runs
        db.session.rollback()
        log.debug("no decoding ahead this time", exc_info=True)
        return
    runtime.loader.prefetch(names.values())


def _requeued_by_rq(job_ids: Sequence[str], outcomes: dict[str, Outcome]) -> dict[str, jobs.Claim]:
    """Failed jobs that RQ handed out again (``rq requeue``, the dashboard's Requeue): run again.

    A failed job keeps its upload until UPLOAD_RETENTION, so it can; once its upload is gone it
    cannot, and RQ is told so (its failed registry again, with that reason) instead of a silent skip.
    """
    reopened, gone = jobs.reopen_failed(job_ids)
    for job_id in gone:
        log.warning("job not requeued", extra={"job_id": job_id, "reason": "its upload is gone"})
        outcomes[job_id] = PermanentJobError(REQUEUE_TOO_LATE)
    if not reopened:
        return {}
    log.info("job requeued from RQ", extra={"job_ids": reopened})
    return jobs.claim_jobs(reopened)[0]


#: Why a failed job that RQ requeued cannot run again.
REQUEUE_TOO_LATE = (
    "the job's upload was removed (UPLOAD_RETENTION), so it cannot run again; submit the image anew"
)


class _Run:
    """One batch between its claim and its record: what each claimed job came to."""

    def __init__(self, runtime: WorkerRuntime, claims: dict[str, jobs.Claim]) -> None:
        self.runtime = runtime
        self.claims = claims
        self.results: dict[str, Description] = {}
        #: Failed for good: the reason (a bad image, an option the model lacks).
        self.rejected: dict[str, str] = {}
        #: Failed this try: the host's or the model's fault, retried while retries are left.
        self.failures: dict[str, Exception] = {}
        self.inference: list[float] = []

    def describe(self, upcoming: Sequence[str]) -> None:
        """Read and decode the images (the next batch's decode queued behind), then the model."""
        describer = self.runtime.describer
        checked: list[str] = []
        for job_id, claim in self.claims.items():
            try:
                describer.check_options(claim.options)
            except UnsupportedOption as exc:
                self.rejected[job_id] = str(exc)
                continue
            checked.append(job_id)
        self._fetch_all([c for i in checked if (c := self.claims[i]).upload_name is None and c.image_url])
        wanted: dict[str, jobs.Claim] = {}
        for job_id in checked:
            claim = self.claims[job_id]
            if job_id in self.rejected or job_id in self.failures:  # its fetch failed
                continue
            if claim.upload_name is None:
                self.rejected[job_id] = "the job has no uploaded file"
                continue
            wanted[job_id] = claim
        images = self.runtime.loader.load([c.upload_name for c in wanted.values()], then=upcoming)
        groups: dict[str, tuple[dict[str, Any], list[str], list[Any]]] = {}
        for (job_id, claim), image in zip(wanted.items(), images, strict=True):
            if isinstance(image, PermanentJobError):
                self.rejected[job_id] = str(image)
            elif isinstance(image, Exception):
                self.failures[job_id] = image  # the store or the decoder did not answer: retried
            else:
                group = groups.setdefault(json.dumps(claim.options, sort_keys=True), (claim.options, [], []))
                group[1].append(job_id)
                group[2].append(image)
        for options, ids, group_images in groups.values():
            self._forward(options, ids, group_images)

    def _fetch_all(self, urls: list[jobs.Claim]) -> None:
        """The ``image_url`` jobs' images, fetched side by side (:mod:`imgsvc.queue.fetches`): a
        batch of URLs whose servers drip takes one IMAGE_URL_TIMEOUT, not one each, which for a
        batch of BATCH_SIZE would pass JOB_TIMEOUT and fail the batch's other jobs with them."""
        if not urls:
            return
        runtime = self.runtime

        def fetch(claim: jobs.Claim) -> FetchedImage | FetchFailed | StorageUnavailable:
            try:
                return fetch_image(claim.image_url or "", runtime.uploads, runtime.settings)
            except (FetchFailed, StorageUnavailable) as exc:
                return exc

        with ThreadPoolExecutor(len(urls), thread_name_prefix="imgsvc-fetch") as pool:
            fetched = list(pool.map(fetch, urls))
        for claim, outcome in zip(urls, fetched, strict=True):
            self._fetched(claim, outcome)

    def _fetched(self, claim: jobs.Claim, outcome: FetchedImage | FetchFailed | StorageUnavailable) -> None:
        """Record an ``image_url`` job's fetch (stored as an upload), or note its failure: for
        good, or for this try (the fetch may work later). A fetched image is kept: a retry after
        a later step failed does not fetch it again."""
        if isinstance(outcome, FetchFailed) and outcome.permanent:
            self.rejected[claim.id] = str(outcome)
            return
        if isinstance(outcome, Exception):
            self.failures[claim.id] = outcome
            return
        fetched = outcome
        info = fetched.info
        jobs.record_image(
            claim.id,
            upload_name=fetched.upload_name,
            image_format=info.format,
            width=info.width,
            height=info.height,
            size_bytes=fetched.size,
            sha256=fetched.sha256,
        )
        log.info("image fetched", extra={"job_id": claim.id, "size_bytes": fetched.size})
        # The published result must show the fetched image, not the empty one the claim read.
        image = ImageSummary(info.format, info.width, info.height)
        basis = replace(claim.basis, image=image) if claim.basis is not None else None
        self.claims[claim.id] = replace(claim, upload_name=fetched.upload_name, basis=basis)

    def _forward(self, options: dict[str, Any], ids: list[str], images: list[Any]) -> None:
        """One forward pass; if it fails, one image at a time, so a bad image fails only its job."""
        describer = self.runtime.describer
        started = time.perf_counter()
        try:
            self.results.update(zip(ids, describer.describe_full(images, options), strict=True))
            self.inference += [(time.perf_counter() - started) / len(images)] * len(images)
            return
        except BaseTimeoutException:
            raise
        except Exception as exc:
            if len(images) == 1:
                self.failures[ids[0]] = exc
                return
            log.exception("batched forward pass failed; describing one image at a time")
        for job_id, image in zip(ids, images, strict=True):
            started = time.perf_counter()
            try:
                (self.results[job_id],) = describer.describe_full([image], options)
                self.inference.append(time.perf_counter() - started)
            except BaseTimeoutException:
                raise
            except Exception as exc:
                self.failures[job_id] = exc

    def record(
        self, elapsed: float, can_retry: Callable[[str], bool], pipeline: Pipeline | None
    ) -> dict[str, Outcome]:
        """Every result and every rejection in one transaction, then what follows from each."""
        runtime = self.runtime
        duration_ms = round(elapsed * 1000)
        name = runtime.describer.name
        written = jobs.finish_jobs(
            {job_id: (result, name, duration_ms) for job_id, result in self.results.items()},
            self.rejected,
            bases={job_id: self.claims[job_id].basis for job_id in self.results},
        )
        outcomes: dict[str, Outcome] = {}
        done = 0
        for job_id in self.results:
            if job_id in written:
                done += 1
                log.info("job done", extra={"job_id": job_id, "status": "done", "duration_ms": duration_ms})
                outcomes[job_id] = {"job_id": job_id, "status": "done"}
            else:
                # Its image is kept, as a finished job's is, so the job can be retried; `flask prune`
                # deletes it after UPLOAD_RETENTION, or a DELETE of the job at once.
                log.info(
                    "job result discarded", extra={"job_id": job_id, "reason": "cancelled while processing"}
                )
                outcomes[job_id] = {"job_id": job_id, "status": "cancelled"}
        for job_id, reason in self.rejected.items():
            _failed_for_good(runtime, self.claims[job_id], reason, written=True)
            # RQ fails it too (its failed registry, the reason as its exception), never retried.
            outcomes[job_id] = PermanentJobError(reason)
        for job_id, exc in self.failures.items():
            _record_failure(runtime, self.claims[job_id], exc, can_retry(job_id))
            outcomes[job_id] = exc
        if done:
            runtime.metrics.record(
                "done",
                count=done,
                pipeline=pipeline,
                job_duration_seconds=[elapsed] * done,
                inference_seconds=self.inference,
            )
        for job_id in self.results:
            if job_id in written and self.claims[job_id].callback_url:
                notify(runtime, job_id)
        return outcomes


def notify(runtime: WorkerRuntime, job_id: str, moment: str = "completed") -> None:
    """Queue the webhook of a job that started or ended, if it asked for that moment's; never
    fails the job."""
    row = jobs.get_job(job_id)
    if row is None or not row.callback_url or moment not in row.webhooks:
        return
    payload = row.result_dict() if row.status == jobs.Status.DONE else row.status_dict()
    try:
        enqueue_delivery(runtime.connection, runtime.settings, row.callback_url, payload)
    except RedisError:
        log.exception("webhook not queued", extra={"job_id": job_id})


def _failed_for_good(
    runtime: WorkerRuntime, claim: jobs.Claim, reason: str, *, written: bool = False
) -> None:
    """The row says why (``written``: the batch's transaction did it), the webhook fires.

    The upload stays until UPLOAD_RETENTION (``flask prune``), so a requeue from RQ can run it again.
    """
    if not written:
        jobs.mark_failed(claim.id, reason)
    runtime.metrics.count("failed")
    log.warning("job failed", extra={"job_id": claim.id, "status": "failed", "error": reason})
    notify(runtime, claim.id)


def _record_failure(runtime: WorkerRuntime, claim: jobs.Claim, exc: BaseException, retried: bool) -> None:
    """Mirror RQ's retry decision in the row: queued again with the error, or failed for good."""
    # A fetch failure's text already starts with its code (fetch_failed: ...), as the API shows it.
    reason = str(exc) if isinstance(exc, FetchFailed) else f"{type(exc).__name__}: {exc}"
    if not retried:
        _failed_for_good(runtime, claim, reason)
        return
    jobs.mark_retrying(claim.id, reason)
    # Waiting again (RQ re-enqueues it): an ``rq empty`` meanwhile must cancel it, not lose it.
    runtime.connection.zadd(
        waiting_key(runtime.queue_name or runtime.settings.queue_name), {claim.id: time.time()}
    )
    runtime.metrics.count("retried")
    log.warning("job retrying", extra={"job_id": claim.id, "status": "queued", "error": reason})
