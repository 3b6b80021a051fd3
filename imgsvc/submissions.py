"""The submit use case: take one image, dedupe it, store it, record its job row, enqueue it.

Here, not in a blueprint, so the API, the benches and tests run the same operation without
a request: everything it needs (settings, upload store, Redis, task queue, metrics, owner)
is passed in. The job rows go through :mod:`imgsvc.storage.jobs`, whose session is the app's
(an app context is enough; no request is read).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from redis.exceptions import RedisError

from imgsvc.config import Settings
from imgsvc.errors import BadRequest, ImgsvcError, QueueUnavailable
from imgsvc.images import ImageInfo, inspect_image
from imgsvc.queue.changes import set_validator
from imgsvc.queue.connection import Describe, enqueue_describes
from imgsvc.queue.routing import MAX_MODEL_NAME, DefaultModelCache, ModelRegistry, Route, ServedModel
from imgsvc.queue.webhooks import enqueue_delivery
from imgsvc.quotas import charge_quota, refund_quota
from imgsvc.storage import jobs
from imgsvc.storage.uploads import StagedUpload, UploadStore, trim_staged
from imgsvc.vision.captioners.capabilities import DETAILS, MAX_PROMPT_CHARS, OCR_MODES

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline
    from rq import Queue

    from imgsvc.metrics import RedisMetrics

#: Per-job options: name -> (type, min, max). Which ones a model honours is its own business.
#: A job's webhook moments: ``start`` when a worker starts it (its status, ``processing``),
#: ``completed`` when it ends done or failed (the result, or the status with its error).
WEBHOOK_EVENTS = ("start", "completed")
OPTION_SPECS: dict[str, tuple[type, int, int]] = {
    "max_length": (int, 1, 200),
    "prompt": (str, 1, MAX_PROMPT_CHARS),
    "detail": (str, 1, 20),
    "ocr": (str, 1, 20),
}
#: Options whose value is one of a few words.
OPTION_CHOICES: dict[str, tuple[str, ...]] = {"detail": DETAILS, "ocr": OCR_MODES}
INTEGER = re.compile(r"[+-]?[0-9]{1,9}")


@dataclass(frozen=True)
class Intake:
    """What the submit path works with; the app holds one of each (``create_app``)."""

    settings: Settings
    uploads: UploadStore
    redis: Redis
    task_queue: Queue
    metrics: RedisMetrics
    #: The default model as the workers last said, kept up to a second (the web's); None: asked every time.
    default_model: DefaultModelCache | None = None
    #: Where this process's concurrent submits meet to share their writes (the web's); None: each alone.
    group: SubmitGroup | None = None


@dataclass(frozen=True)
class Submission:
    options: dict[str, Any] = field(default_factory=dict)
    callback_url: str | None = None
    #: Which of the job's moments POST to ``callback_url`` (:data:`WEBHOOK_EVENTS`).
    webhook_events: tuple[str, ...] = ("completed",)
    #: The model to run (``GET /api/v1/models`` lists them); None: the deployment's default.
    model: str | None = None


@dataclass(frozen=True)
class Accepted:
    """What a submit answers about the job it made: no ORM object is built for three values."""

    id: str
    status: str
    cached: bool = False


def checked_option(name: str, value: Any) -> Any:
    """One per-job option, converted and range-checked; anything else is a 400."""
    if name not in OPTION_SPECS:
        raise BadRequest(f"unknown option {name!r}", allowed=sorted(OPTION_SPECS))
    kind, low, high = OPTION_SPECS[name]
    converted = _exactly(kind, value)
    if converted is None:
        raise BadRequest(f"option {name} must be {'an integer' if kind is int else 'a string'}")
    if name in OPTION_CHOICES:
        if converted not in OPTION_CHOICES[name]:
            raise BadRequest(f"option {name} must be one of {', '.join(OPTION_CHOICES[name])}")
        return converted
    if name == "prompt":
        converted = _plain_text(converted)
    size = converted if kind is int else len(converted)
    if not low <= size <= high:
        raise BadRequest(
            f"option {name} must be between {low} and {high}" + (" characters" if kind is str else "")
        )
    return converted


def checked_model(value: str) -> str:
    """A ``model`` field: a name as a worker publishes it, not any text (it reaches the logs)."""
    name = value.strip()
    if not 1 <= len(name) <= MAX_MODEL_NAME or not name.isprintable():
        raise BadRequest(f"model must be a model's name, 1 to {MAX_MODEL_NAME} printable characters")
    return name


def _plain_text(value: str) -> str:
    """A prompt is plain text: no control characters (newlines and tabs become spaces), trimmed."""
    if any(not ch.isprintable() and ch not in "\n\t\r" for ch in value):
        raise BadRequest("option prompt must be plain text, without control characters")
    return " ".join(value.split())


def _exactly(kind: type, value: Any) -> Any:
    """The value as ``kind`` without coercion: ``true`` is not 1 and ``5.9`` is not 5.

    JSON options arrive typed; form fields arrive as text, so ``"12"`` is still an integer.
    """
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and INTEGER.fullmatch(value.strip()):
            return int(value)
        return None
    return value if isinstance(value, kind) else None


def accept_upload(
    intake: Intake,
    stream: BinaryIO,
    submission: Submission,
    *,
    owner: str | None = None,
    batch_id: str | None = None,
    filename: str | None = None,
    deadline: float | None = None,
    bucket: str | None = None,
    job_id: str | None = None,
) -> Accepted:
    """Stage, check, store, record, enqueue; on any failure undo what was done so far.

    The job goes to the queue of ``submission.model`` (:meth:`ModelRegistry.route`: a model
    no live worker serves is refused). Identical images (what follows an image's end is cut off
    first, so padding does not count) already described by that model with the same options are
    answered from the stored result (``cached: true``) without running the model again, but
    only from the same ``owner``'s jobs: another key must not learn what was uploaded.
    ``deadline`` (a :func:`time.monotonic` instant) bounds the header check; the web side gives
    every file of a request the same one. With a quota ``bucket`` (the client), the job and its
    stored bytes are charged to its daily quota (:mod:`imgsvc.quotas`). ``job_id``: the new job's
    id, chosen by the caller (who may watch it before it exists); else a new one.
    """
    staged, info, route = _stage_and_check(intake, stream, submission, deadline, bucket)
    row = _row_fields(
        staged, info, submission, owner=owner, batch_id=batch_id, filename=filename, job_id=job_id
    )
    row["queue"] = None if route.is_default else route.queue.name
    model = route.model
    hit = None
    if model is not None:
        hit = jobs.find_cached(staged.sha256, submission.options, model.generated_by, owner=owner)
    if hit is not None:
        intake.uploads.discard(staged)
        if bucket is not None:  # answered from a stored result: no bytes kept
            refund_quota(intake.redis, intake.settings, bucket, 0, staged.size)
        return _answer_from(hit, intake, row)
    return _store_and_enqueue(intake, staged, info, row, route, bucket)


def accept_url(
    intake: Intake,
    image_url: str,
    submission: Submission,
    *,
    owner: str | None = None,
    bucket: str | None = None,
    job_id: str | None = None,
) -> Accepted:
    """Record and enqueue a job whose image the worker fetches from ``image_url`` (already vetted:
    :func:`imgsvc.outbound_urls.check_url`); nothing is fetched here.

    No dedupe: the bytes are unknown until the worker has them, and the worker runs the model on
    them whatever an earlier job found. A quota ``bucket`` is charged the job and MAX_FILE_SIZE
    bytes, the most the fetch may store: the worker knows no bucket, and charging nothing would let
    URLs round QUOTA_BYTES_PER_DAY.
    """
    route = model_route(intake, submission.model)
    check_supported(route.model, submission.options)
    reserved = intake.settings.max_file_size
    if bucket is not None:
        charge_quota(intake.redis, intake.settings, bucket, reserved)
    row = _row_fields(None, None, submission, owner=owner, batch_id=None, filename=None, job_id=job_id)
    row["queue"] = None if route.is_default else route.queue.name
    row["image_url"] = image_url
    return _enqueue_row(intake, row, route, bucket, size=reserved)


def _stage_and_check(
    intake: Intake,
    stream: BinaryIO,
    submission: Submission,
    deadline: float | None = None,
    bucket: str | None = None,
) -> tuple[StagedUpload, ImageInfo, Route]:
    """Stream the upload to a staged file, read its header and cut off what follows the image
    (before it is hashed for dedupe, charged to a quota or stored); a refused upload leaves nothing."""
    settings = intake.settings
    staged = intake.uploads.stage(stream)
    try:
        info = inspect_image(staged.path, settings.max_image_pixels, settings.max_image_frames, deadline)
        staged = trim_staged(staged, info.end)
        route = model_route(intake, submission.model)
        try:
            check_supported(route.model, submission.options)
        except BadRequest:
            if intake.default_model is None or submission.model is not None:
                raise
            intake.default_model.forget()  # never refused on a remembered model: ask the workers again
            route = model_route(intake, None)
            check_supported(route.model, submission.options)
        if bucket is not None:  # last: a refused file is not counted
            charge_quota(intake.redis, settings, bucket, staged.size)
    except BaseException:
        intake.uploads.discard(staged)
        raise
    return staged, info, route


def model_route(intake: Intake, model: str | None) -> Route:
    """Where a job for ``model`` goes; Redis failing here is the queue's outage (503), as when enqueueing."""
    try:
        return ModelRegistry(intake.task_queue, intake.settings.worker_ttl).route(model, intake.default_model)
    except RedisError as exc:
        raise QueueUnavailable() from exc


def _row_fields(
    staged: StagedUpload | None,
    info: ImageInfo | None,
    submission: Submission,
    *,
    owner: str | None,
    batch_id: str | None,
    filename: str | None,
    job_id: str | None = None,
) -> dict[str, Any]:
    """The job row's columns that a cached answer and a queued job share; without an image yet
    (an ``image_url`` job), its columns are empty until the worker has fetched it. Its ``id`` is
    ``job_id`` where the caller chose one (else the INSERT makes one)."""
    chosen = {} if job_id is None else {"id": job_id}
    return chosen | {
        "image_format": info.format if info else "",
        "width": info.width if info else 0,
        "height": info.height if info else 0,
        "size_bytes": staged.size if staged else 0,
        "sha256": staged.sha256 if staged else "",
        "options": submission.options or None,
        "callback_url": submission.callback_url,
        # NULL is the default, ``completed`` alone: rows written before the column mean that too.
        "webhook_events": None
        if submission.webhook_events == ("completed",)
        else ",".join(submission.webhook_events),
        "batch_id": batch_id,
        "owner": owner,
        "filename": filename,
    }


def _answer_from(hit: jobs.Job, intake: Intake, row: dict[str, Any]) -> Accepted:
    """A done row copied from ``hit``'s result; its webhook, if any, is sent as for any done job."""
    now = jobs.utcnow()  # one instant: a row answered at once is created, started and completed together
    job = jobs.create_job(
        **row,
        upload_name=None,
        status=jobs.Status.DONE,
        cached=True,
        **jobs.stored_result(hit),
        created_at=now,
        updated_at=now,
        started_at=now,
        completed_at=now,
        duration_ms=0,
    )
    intake.metrics.count("cached")
    if job.callback_url and "completed" in job.webhooks:  # done at once: it never starts
        enqueue_delivery(intake.redis, intake.settings, job.callback_url, job.result_dict())
    return Accepted(job.id, job.status, cached=True)


def _store_and_enqueue(
    intake: Intake,
    staged: StagedUpload,
    info: ImageInfo,
    row: dict[str, Any],
    route: Route,
    bucket: str | None = None,
) -> Accepted:
    """Keep the upload, insert a queued row, enqueue it; a failed step undoes the earlier ones."""
    name = intake.uploads.commit(staged, info.extension)
    return _enqueue_row(intake, row | {"upload_name": name}, route, bucket, staged.size)


def _enqueue_row(
    intake: Intake, row: dict[str, Any], route: Route, bucket: str | None, size: int
) -> Accepted:
    """Insert a queued row and enqueue it (with whatever other submits arrive meanwhile: see
    :class:`SubmitGroup`); if either fails, the row, its stored upload (if any) and the quota
    charge are undone."""
    entry = _Pending(row, route)
    try:
        (intake.group or SubmitGroup()).write(intake, entry)
    except BaseException:
        if entry.job_id is not None:  # the row was written, the enqueue failed
            jobs.delete_job(entry.job_id)
        intake.uploads.delete(row.get("upload_name"))
        if bucket is not None:
            refund_quota(intake.redis, intake.settings, bucket, 1, size)
        raise
    assert entry.job_id is not None
    return Accepted(entry.job_id, jobs.Status.QUEUED)


@dataclass(eq=False)
class _Pending:
    """One submit's row on its way: written by whichever submit's thread writes the group."""

    row: dict[str, Any]
    route: Route
    #: Set once the row is committed; ``error`` once its group failed (then it is not enqueued).
    job_id: str | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class SubmitGroup:
    """Submits that arrive together in one process share one INSERT, one COMMIT and one Redis round trip.

    Each submit hands its row here; whichever submit gets the lock writes every row handed in so
    far (flat combining), the others wait for that. Alone, a submit writes its own row at once, as
    before: nothing waits for company. Under load a group costs about what one submit did
    (statements, commits and round trips are most of a submit's CPU after the HTTP itself).
    A row is committed before its job is enqueued, as for one submit: a job never runs without
    its row, and a group whose enqueue fails is undone by each of its submits (503).
    """

    def __init__(self) -> None:
        self._writing = threading.Lock()
        self._guard = threading.Lock()
        self._pending: list[_Pending] = []

    def write(self, intake: Intake, entry: _Pending) -> None:
        """Commit ``entry``'s row and enqueue its job, alone or in a group; raises as one submit would."""
        # A submit that waits must hold no connection: the one writing its group may need one, and
        # 40 threads waiting on their dedupe reads' connections would leave it none (pool: 15).
        jobs.hand_back_connection()
        with self._guard:
            self._pending.append(entry)
        with self._writing:
            if not entry.done.is_set():
                with self._guard:
                    group, self._pending = self._pending, []
                try:
                    _write_group(intake, group)
                except BaseException as exc:  # interrupted: no submit of the group may wait forever
                    for other in group:
                        if not other.done.is_set():
                            other.error = exc
                            other.done.set()
                    raise
        if entry.error is not None:
            raise entry.error


def _write_group(intake: Intake, group: list[_Pending]) -> None:
    """The rows in one INSERT and commit, then their jobs in one Redis transaction; each entry ends
    with its ``job_id`` and, if its part failed, its ``error``. Should the group's INSERT fail, each
    row is tried alone, so one bad row spoils no other."""
    try:
        written = jobs.insert_jobs([entry.row for entry in group])
        for entry, values in zip(group, written, strict=True):
            entry.job_id = values["id"]
    except Exception:
        if len(group) == 1:
            raise
        for entry in group:
            try:
                entry.job_id = jobs.insert_job(**entry.row)["id"]
            except Exception as exc:
                entry.error = exc
    queued = [entry for entry in group if entry.error is None]
    if queued:
        try:
            enqueue_describes(intake.settings, [_describe(intake, entry) for entry in queued])
        except ImgsvcError as exc:
            for entry in queued:
                entry.error = exc
    for entry in group:
        entry.done.set()


def _describe(intake: Intake, entry: _Pending) -> Describe:
    job_id = entry.job_id
    assert job_id is not None
    return Describe(
        entry.route.queue,
        job_id,
        filename=entry.row["filename"],
        model=entry.route.model.name if entry.route.model else None,
        also=lambda pipe: _also_on_enqueue(intake, pipe, job_id),
    )


def _also_on_enqueue(intake: Intake, pipe: Pipeline, job_id: str) -> None:
    """Sent with the enqueue, in its round trip: the submit counter and the job's first poll validator."""
    intake.metrics.record("submitted", pipeline=pipe)
    set_validator(pipe, job_id, jobs.Status.QUEUED)


def check_supported(model: ServedModel | None, options: dict[str, Any]) -> None:
    """Refuse options the chosen model does not take, before anything is stored (400)."""
    if model is None:
        return  # no worker has said what it runs yet; the worker checks again
    supported = model.options
    unsupported = sorted(set(options) - set(supported))
    if unsupported:
        takes = f"only {', '.join(supported)}" if supported else "none"
        raise BadRequest(
            f"option(s) {', '.join(unsupported)} not supported by the model {model.name}, "
            f"which takes {takes}; GET /api/v1/models says which model takes which options",
            model=model.name,
            supported=list(supported),
        )
