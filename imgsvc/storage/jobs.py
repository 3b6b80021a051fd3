"""The job row: one per submitted image, the source of truth for status and result.

RQ's own job hashes expire and vanish with Redis; the API answers from these rows,
and every state change goes through the small functions below. Each notes the jobs whose
status it wrote, and their change is published once the transaction commits
(:mod:`imgsvc.queue.changes`), so a waiting client wakes without polling.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Integer,
    String,
    Text,
    bindparam,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from imgsvc.queue.changes import note_change
from imgsvc.results import ImageSummary, JobResult, described
from imgsvc.storage.db import db
from imgsvc.vision.base import Description


class Status(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (Status.DONE, Status.FAILED, Status.CANCELLED)
UNFINISHED = (Status.QUEUED, Status.PROCESSING)


def utcnow() -> datetime:
    """Naive UTC: SQLite drops tzinfo anyway, so store it the same on every backend."""
    return datetime.now(UTC).replace(tzinfo=None)


def isoformat(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds") + "Z"


def new_id() -> str:
    return str(uuid.uuid4())


def parse_job_id(raw: str) -> str | None:
    """Canonical UUID string, or None for anything that is not one."""
    try:
        return str(uuid.UUID(raw))
    except (ValueError, AttributeError, TypeError):
        return None


class Job(db.Model):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default=Status.QUEUED)
    upload_name: Mapped[str | None] = mapped_column(String(64))
    #: Where the worker fetches the image from (submitted with ``image_url``, not a file); until
    #: it has, ``upload_name`` is NULL and the image columns are empty ("" and 0).
    image_url: Mapped[str | None] = mapped_column(String(2048))
    #: The client's name for the file, sanitised (uploads.client_filename); shown back, never a path.
    filename: Mapped[str | None] = mapped_column(String(255))
    image_format: Mapped[str] = mapped_column(String(8))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Which attempt of the job this is: 1, then one more per POST /jobs/<id>/retry (NULL: 1, rows
    #: written before the column). ``attempts`` counts the runs of the current attempt.
    attempt: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(Text)
    generated_by: Mapped[str | None] = mapped_column(String(255))
    tags: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    text_lines: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    objects: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    people: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    callback_url: Mapped[str | None] = mapped_column(String(2048))
    #: Comma-separated webhook moments (``start``, ``completed``); NULL: ``completed`` alone.
    webhook_events: Mapped[str | None] = mapped_column(String(32))
    batch_id: Mapped[str | None] = mapped_column(String(36), index=True)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    #: The RQ queue the job was put on: a model's own (``imgsvc.<model>``), None for the default
    #: queue. The reaper requeues a lost job there.
    queue: Mapped[str | None] = mapped_column(String(255))

    def status_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "job_id": self.id,
            "status": self.status,
            "filename": self.filename,
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
            "attempts": self.attempts,
            "attempt": self.attempt or 1,
        }
        if self.started_at:
            body["started_at"] = isoformat(self.started_at)
        if self.completed_at:
            body["completed_at"] = isoformat(self.completed_at)
        if self.error and self.status in (Status.FAILED, Status.QUEUED, Status.CANCELLED):
            body["error"] = self.error
        if self.batch_id:
            body["batch_id"] = self.batch_id
        return body

    @property
    def webhooks(self) -> tuple[str, ...]:
        """The moments that POST to ``callback_url`` (see :attr:`webhook_events`)."""
        return webhook_moments(self.webhook_events)

    def result(self) -> JobResult:
        """This done job's result (see :mod:`imgsvc.results`); the row's ``text_lines`` is its ``text``."""
        return JobResult(
            job_id=self.id,
            status=self.status,
            filename=self.filename,
            image_description=self.description,
            generated_by=self.generated_by,
            created_at=isoformat(self.created_at),
            completed_at=isoformat(self.completed_at),
            tags=self.tags,
            text=self.text_lines,
            objects=self.objects,
            people=self.people,
            cached=self.cached,
            attempt=self.attempt or 1,
            options=self.options or {},
            image=ImageSummary(self.image_format, self.width, self.height),
        )

    def result_dict(self) -> dict[str, Any]:
        return self.result().to_json()


def webhook_moments(column: str | None) -> tuple[str, ...]:
    return tuple(column.split(",")) if column else ("completed",)


def get_job(job_id: str) -> Job | None:
    return db.session.get(Job, job_id)


def insert_job(**fields: Any) -> dict[str, Any]:
    """Insert one row (a Core INSERT and a commit) and return the values it was given.

    The submit path's way: it needs only the new row's id and status, and building an ORM
    object of 17 instrumented attributes for that costs more than the values themselves.
    """
    (values,) = insert_jobs([fields])
    return values


def insert_jobs(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Insert queued rows in one statement and one commit (submits arriving together); returns
    each row's values, ``id`` included (a row that brings its own keeps it)."""
    moment = utcnow()
    common = {
        "status": Status.QUEUED,
        "attempts": 0,
        "cached": False,
        "created_at": moment,
        "updated_at": moment,
    }
    values = [{"id": new_id()} | common | dict(row) for row in rows]
    shapes: dict[frozenset[str], list[dict[str, Any]]] = {}
    for row in values:  # one statement per set of columns: an executemany binds the same ones
        shapes.setdefault(frozenset(row), []).append(row)
    try:
        for same in shapes.values():
            db.session.execute(_INSERT, same)
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return values


def hand_back_connection() -> None:
    """End this thread's reads (it has written nothing) so its connection goes back to the pool.

    Before waiting on another thread that may need a connection (:class:`~imgsvc.submissions.SubmitGroup`):
    threads that wait while holding one can take the whole pool from the one they wait for.
    """
    db.session.close()


def create_job(**fields: Any) -> Job:
    """:func:`insert_job`, returned as a detached object.

    The ORM's way (add, flush, commit) expires the object on commit, and the caller's first
    look at its id or status reads the whole row back: a second query for nothing.
    """
    return Job(**insert_job(**fields))


def delete_job(job_id: str) -> None:
    table = Job.__table__
    db.session.execute(delete(table).where(table.c.id == job_id))
    note_change(db.session(), job_id, "deleted")
    db.session.commit()


def _transition(job_id: str, allowed_from: tuple[Status, ...], **values: Any) -> bool:
    """Compare-and-set on status so two workers can never both own one job."""
    changed = _set(job_id, allowed_from, values)
    db.session.commit()
    return changed


def _set(job_id: str, allowed_from: tuple[Status, ...], values: dict[str, Any]) -> bool:
    """One row's compare-and-set, inside the caller's transaction.

    A Core UPDATE on the table: the ORM's bookkeeping for a bulk update (matching the
    session's objects against the WHERE clause) costs more than the statement itself.
    """
    values.setdefault("updated_at", utcnow())
    table = Job.__table__
    result = db.session.execute(
        update(table).where(table.c.id == job_id, table.c.status.in_(allowed_from)).values(**values)
    )
    changed = result.rowcount == 1
    if changed and "status" in values:
        note_change(db.session(), job_id, values["status"])
    return changed


@dataclass(frozen=True)
class Claim:
    """What a worker needs of a row it claimed, read by the statement that claimed it."""

    id: str
    upload_name: str | None
    options: dict[str, Any]
    callback_url: str | None
    #: The moments that POST to ``callback_url``: ``start`` is the worker's to send on claiming.
    webhooks: tuple[str, ...] = ("completed",)
    #: Set for an ``image_url`` job: fetched first while ``upload_name`` is None.
    image_url: str | None = None
    #: The rest of what the job's result shows, read by the same statement: the worker publishes
    #: the result it writes, so a waiting request answers without reading the row back.
    basis: ResultBasis | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ResultBasis:
    """A claimed row's columns that its result shows besides what the model found."""

    filename: str | None
    created_at: datetime
    cached: bool
    attempt: int | None
    options: dict[str, Any] | None
    image: ImageSummary

    def result(self, job_id: str, found: dict[str, Any], completed_at: datetime) -> JobResult:
        """The result the row holds once written with ``found`` (:func:`described`) and ``completed_at``."""
        return JobResult(
            job_id=job_id,
            status=Status.DONE,
            filename=self.filename,
            created_at=isoformat(self.created_at),
            completed_at=isoformat(completed_at),
            cached=self.cached,
            attempt=self.attempt or 1,
            options=self.options or {},
            image=self.image,
            **found,
        )


# The submit's and the worker's statements, built once: composing a statement costs more than
# running it. Core statements on the table, not ORM ones: the ORM's bookkeeping for a bulk UPDATE
# (matching the session's objects against the WHERE clause) also costs more than the statement itself.
_TABLE = Job.__table__
_INSERT = insert(_TABLE)
_CLAIM = (
    update(_TABLE)
    .where(_TABLE.c.id.in_(bindparam("ids", expanding=True)), _TABLE.c.status.in_(UNFINISHED))
    .values(
        status=Status.PROCESSING,
        started_at=bindparam("now"),
        updated_at=bindparam("now"),
        attempts=_TABLE.c.attempts + 1,
    )
    .returning(
        _TABLE.c.id,
        _TABLE.c.upload_name,
        _TABLE.c.options,
        _TABLE.c.callback_url,
        _TABLE.c.webhook_events,
        _TABLE.c.image_url,
        *(_TABLE.c[name] for name in ("filename", "created_at", "cached", "attempt")),
        *(_TABLE.c[name] for name in ("image_format", "width", "height")),
    )
)
_PEEK = select(_TABLE.c.id, _TABLE.c.upload_name).where(
    _TABLE.c.id.in_(bindparam("ids", expanding=True)), _TABLE.c.status == Status.QUEUED
)
#: Executed with one parameter set per row (executemany): the SET columns are the sets' keys.
_FINISH = update(_TABLE).where(
    _TABLE.c.id == bindparam("job_id"), or_(*(_TABLE.c.status == status for status in UNFINISHED))
)
_CACHED = (
    select(_TABLE.c.id, _TABLE.c.options)
    .where(
        _TABLE.c.sha256 == bindparam("sha256"),
        _TABLE.c.status == Status.DONE,
        _TABLE.c.generated_by == bindparam("model"),
    )
    .order_by(_TABLE.c.completed_at.desc())
    .limit(20)
)
_CACHED_FOR_OWNER = _CACHED.where(_TABLE.c.owner == bindparam("owner"))
_WRITTEN = select(_TABLE.c.id).where(
    _TABLE.c.id.in_(bindparam("ids", expanding=True)), _TABLE.c.completed_at == bindparam("now")
)


def claim_jobs(
    job_ids: Sequence[str], *, peek: Sequence[str] = ()
) -> tuple[dict[str, Claim], dict[str, str]]:
    """Claim a batch of jobs in one statement and one commit; a processing one may be re-claimed
    (its last worker died). Ids missing from the answer were not claimable: deleted, cancelled or
    already finished.

    The claimed rows' inputs come back with the claim (RETURNING), so the worker never reads them
    again. ``peek``: jobs next in the queue, not claimed; their upload names come back too, so the
    worker can decode their images ahead of time (still-queued rows only).
    """
    claims: dict[str, Claim] = {}
    if job_ids:
        rows = db.session.execute(_CLAIM, {"ids": list(job_ids), "now": utcnow()})
        claims = {
            row.id: Claim(
                row.id,
                row.upload_name,
                dict(row.options or {}),
                row.callback_url,
                webhook_moments(row.webhook_events),
                row.image_url,
                ResultBasis(
                    row.filename,
                    row.created_at,
                    bool(row.cached),
                    row.attempt,
                    row.options,
                    ImageSummary(row.image_format, row.width, row.height),
                ),
            )
            for row in rows
        }
        for job_id in claims:
            note_change(db.session(), job_id, Status.PROCESSING)
    ahead = peek_uploads(peek, commit=False)
    db.session.commit()  # also ends the read: an idle worker must not hold a SQLite snapshot open
    return claims, ahead


def peek_uploads(job_ids: Sequence[str], *, commit: bool = True) -> dict[str, str]:
    """The upload names of those of ``job_ids`` still queued, to decode their images ahead
    (nothing is claimed); the read ends with a commit unless the caller's transaction goes on."""
    ahead: dict[str, str] = {}
    if job_ids:
        peeked = db.session.execute(_PEEK, {"ids": list(job_ids)})
        ahead = {row.id: row.upload_name for row in peeked if row.upload_name}
        if commit:
            db.session.commit()
    return ahead


#: The columns that hold a job's result; a dedupe hit copies exactly these from the earlier job.
RESULT_COLUMNS = ("description", "generated_by", "tags", "text_lines", "objects", "people")


def stored_result(job: Job) -> dict[str, Any]:
    """The result columns of a done job, to answer an identical request without running the model."""
    return {name: getattr(job, name) for name in RESULT_COLUMNS}


def finish_jobs(
    done: Mapping[str, tuple[Description, str, int | None]],
    failed: Mapping[str, str] | None = None,
    *,
    bases: Mapping[str, ResultBasis | None] | None = None,
) -> set[str]:
    """Write a batch's outcomes in one transaction: ``done`` job id -> (result, model, duration_ms),
    ``failed`` job id -> why. Each row is written only if it is still unfinished (compare-and-set,
    as :func:`mark_failed`); returns the ids written. One that was not
    was cancelled (or deleted) while the model ran.

    A done job with its claim's :class:`ResultBasis` in ``bases`` has its result published with
    the change, after the commit: the result exactly as the row now holds it.
    """
    moment = utcnow()
    common = {"completed_at": moment, "updated_at": moment}
    rows = []
    results: dict[str, dict[str, Any]] = {}
    for job_id, (result, generated_by, duration_ms) in done.items():
        found = described(result, generated_by)
        rows.append(
            common
            | {
                "job_id": job_id,
                "status": Status.DONE,
                "description": found["image_description"],
                "generated_by": generated_by,
                "tags": found["tags"],
                "text_lines": found["text"],
                "objects": found["objects"],
                "people": found["people"],
                "duration_ms": duration_ms,
                "error": None,
            }
        )
        if (basis := (bases or {}).get(job_id)) is not None:
            results[job_id] = basis.result(job_id, found, moment).to_json()
    reasons = [common | {"job_id": i, "status": Status.FAILED, "error": e} for i, e in (failed or {}).items()]
    ids = [row["job_id"] for row in rows + reasons]
    complete = True
    for batch in (rows, reasons):
        if batch:
            count = db.session.execute(_FINISH, batch).rowcount
            complete &= count == len(batch) and db.engine.dialect.supports_sane_multi_rowcount
    # Rarely (a job cancelled meanwhile), not every row was written: ask which were, by this
    # very moment in completed_at, which no other writer gave them.
    written = set(ids) if complete else set(db.session.scalars(_WRITTEN, {"ids": ids, "now": moment}))
    for row in rows + reasons:
        if row["job_id"] in written:
            note_change(db.session(), row["job_id"], row["status"], results.get(row["job_id"]))
    db.session.commit()
    return written


def record_image(job_id: str, **image: Any) -> bool:
    """An ``image_url`` job's fetched image, stored: its upload name and image columns, as a
    submit records an upload's. Only while the job runs (a cancelled job's result is discarded
    anyway, and its orphaned upload is swept by ``flask prune``)."""
    return _transition(job_id, (Status.PROCESSING,), **image)


def mark_retrying(job_id: str, error: str) -> bool:
    """Back to queued with the last error visible: the user sees it is being retried."""
    return _transition(job_id, (Status.PROCESSING,), status=Status.QUEUED, error=error)


def mark_cancelled(job_id: str) -> bool:
    return _transition(
        job_id,
        (Status.QUEUED, Status.PROCESSING),
        status=Status.CANCELLED,
        completed_at=utcnow(),
        error="cancelled by the user",
    )


#: What a retry clears: the last attempt's outcome and its run count (the reaper fails a row whose
#: runs exceed TASK_MAX_RETRIES, and a new attempt starts with all of its retries).
_CLEARED_FOR_RETRY = dict.fromkeys(
    ("started_at", "completed_at", "error", "duration_ms", *RESULT_COLUMNS)
) | {"attempts": 0, "cached": False}


def mark_retried(job: Job) -> dict[str, Any] | None:
    """A failed or cancelled job queued again as its next attempt (compare-and-set: of two retries
    at once, one wins). Returns what :func:`undo_retry` needs, or None when the row had moved on."""
    before = {name: getattr(job, name) for name in ("status", "attempt", *_CLEARED_FOR_RETRY)}
    changed = _transition(
        job.id,
        (Status.FAILED, Status.CANCELLED),
        status=Status.QUEUED,
        attempt=(job.attempt or 1) + 1,
        **_CLEARED_FOR_RETRY,
    )
    return before if changed else None


def undo_retry(job_id: str, before: dict[str, Any]) -> None:
    """Back to what the row said before :func:`mark_retried`, when the new attempt could not be queued."""
    _transition(job_id, (Status.QUEUED,), **before)


def find_cached(
    sha256: str, options: dict[str, Any] | None, generated_by: str, *, owner: str | None
) -> Job | None:
    """The newest finished description of the same bytes, by the same model, with the same options.

    With API keys (``owner`` set) only that owner's jobs count: a hit would tell another key
    that these exact bytes were uploaded before. Candidates are compared by id and options
    only; the whole row is read for a hit alone (most submits are misses).
    """
    query = _CACHED if owner is None else _CACHED_FOR_OWNER
    candidates = db.session.execute(query, {"sha256": sha256, "model": generated_by, "owner": owner})
    wanted = options or {}
    hit = next((row.id for row in candidates if (row.options or {}) == wanted), None)
    return None if hit is None else get_job(hit)


def list_jobs(
    *, status: str | None, owner: str | None, limit: int, before: tuple[datetime, str] | None
) -> list[Job]:
    """Newest first; ``before`` is the (created_at, id) of the last row of the previous page."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if status:
        query = query.where(Job.status == status)
    if owner is not None:
        query = query.where(Job.owner == owner)
    if before is not None:
        created, job_id = before
        query = query.where((Job.created_at < created) | ((Job.created_at == created) & (Job.id < job_id)))
    return list(db.session.scalars(query))


def batch_members(batch_id: str, owner: str | None) -> list[Job]:
    query = select(Job).where(Job.batch_id == batch_id).order_by(Job.created_at, Job.id)
    if owner is not None:
        query = query.where(Job.owner == owner)
    return list(db.session.scalars(query))


def cancel_queued(job_ids: Sequence[str], reason: str) -> list[str]:
    """Cancel the still-queued rows among ``job_ids`` with ``reason``; returns the ids cancelled."""
    now = utcnow()
    rows = db.session.execute(
        update(_TABLE)
        .where(_TABLE.c.id.in_(job_ids), _TABLE.c.status == Status.QUEUED)
        .values(status=Status.CANCELLED, error=reason, completed_at=now, updated_at=now)
        .returning(_TABLE.c.id)
    )
    cancelled = [row.id for row in rows]
    db.session.commit()
    return cancelled


def reopen_failed(job_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """Failed jobs among ``job_ids`` back to queued (a fresh start: no error, no attempts), those
    whose upload is still there; and the failed ones whose upload retention already removed."""
    failed = db.session.execute(
        select(_TABLE.c.id, _TABLE.c.upload_name, _TABLE.c.image_url).where(
            _TABLE.c.id.in_(job_ids), _TABLE.c.status == Status.FAILED
        )
    ).all()
    # An image_url job that has no upload yet fetches it again.
    gone = [row.id for row in failed if row.upload_name is None and row.image_url is None]
    reopened = [row.id for row in failed if row.id not in gone]
    if reopened:
        db.session.execute(
            update(_TABLE)
            .where(_TABLE.c.id.in_(reopened), _TABLE.c.status == Status.FAILED)
            .values(status=Status.QUEUED, error=None, completed_at=None, attempts=0, updated_at=utcnow())
        )
    db.session.commit()
    return reopened, gone


def mark_failed(job_id: str, error: str) -> bool:
    return job_id in finish_jobs({}, {job_id: error})


def unfinished_before(cutoff: datetime, limit: int = 500) -> list[Job]:
    """Rows still queued/processing and untouched since ``cutoff``: candidates for the reaper."""
    query = (
        select(Job)
        .where(Job.status.in_((Status.QUEUED, Status.PROCESSING)), Job.updated_at < cutoff)
        .order_by(Job.created_at)
        .limit(limit)
    )
    return list(db.session.scalars(query))
