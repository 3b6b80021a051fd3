"""The public JSON API under /api/v1: submit images, follow and list jobs, fetch results.

HTTP only: parse the request, call the use case (:mod:`imgsvc.submissions`), shape the response.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import time
from collections import Counter
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context, url_for
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from werkzeug.datastructures import FileStorage, MultiDict

from imgsvc.config import Settings, app_settings
from imgsvc.errors import BadRequest, ImgsvcError, MissingFile, NotFound, ServiceUnavailable
from imgsvc.outbound_urls import UnsafeImageURL, check_callback_url, check_url
from imgsvc.queue.routing import ModelRegistry
from imgsvc.quotas import check_quota
from imgsvc.retries import retry_job
from imgsvc.storage import jobs
from imgsvc.storage.uploads import client_filename
from imgsvc.submissions import (
    OPTION_SPECS,
    WEBHOOK_EVENTS,
    Accepted,
    Intake,
    Submission,
    accept_upload,
    accept_url,
    checked_model,
    checked_option,
    model_route,
)
from imgsvc.web.auth import client_bucket, require_api_key
from imgsvc.web.idempotency import idempotent
from imgsvc.web.polls import not_modified, poll_headers, read_validator
from imgsvc.web.waits import event_stream, fresh_job, preferred_wait, wait_for, wait_for_result, watch_new_job

bp = Blueprint("api", __name__, url_prefix="/api/v1")
bp.before_request(require_api_key)

FORM_FIELDS = {"file", "image_url", "callback_url", "webhook_events", "options", "model", *OPTION_SPECS}


def parse_submission(form: MultiDict, settings: Settings) -> Submission:
    """Options come as fields (``-F max_length=20``) or one JSON ``options`` field; unknown names are 400.

    An empty field is an absent one (``options=``, ``max_length=``, ``prompt=``, ``callback_url=``):
    form builders such as Swagger UI send every field they show, filled in or not.
    """
    # str(): a multipart part without a name arrives as the key None
    unknown = sorted(str(name) for name in set(form) - FORM_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}", allowed=sorted(FORM_FIELDS))
    given = {name: form[name] for name in FORM_FIELDS if form.get(name)}
    raw: dict[str, Any] = {}
    if "options" in given:
        try:
            raw = json.loads(given["options"], parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:  # RecursionError: [[[[... nested too deep
            raise BadRequest("options must be a JSON object") from exc
        if not isinstance(raw, dict):
            raise BadRequest("options must be a JSON object")
    raw |= {name: given[name] for name in OPTION_SPECS if name in given}
    options = {name: checked_option(name, value) for name, value in raw.items()}
    callback_url = given.get("callback_url")
    if callback_url:
        check_callback_url(callback_url, settings.webhook_allow_private)
    model = checked_model(given["model"]) if given.get("model") else None
    return Submission(options, callback_url, _webhook_events(form, callback_url), model)


def _webhook_events(form: MultiDict, callback_url: str | None) -> tuple[str, ...]:
    """``webhook_events=start,completed`` (or the field repeated); ``completed`` when absent."""
    named = [name.strip() for value in form.getlist("webhook_events") for name in value.split(",")]
    if not any(named):
        return ("completed",)
    if not callback_url:
        raise BadRequest("webhook_events needs a callback_url to send them to")
    if any(name not in WEBHOOK_EVENTS for name in named):  # not quoted back: it is the client's text
        raise BadRequest(
            f"webhook_events takes {' and '.join(WEBHOOK_EVENTS)}, comma-separated",
            allowed=list(WEBHOOK_EVENTS),
        )
    return tuple(name for name in WEBHOOK_EVENTS if name in named)


#: The most of a text field read from a part sent as a file (options is a short JSON object).
MAX_TEXT_PART = 64 * 1024


def form_fields(files: MultiDict, form: MultiDict) -> MultiDict:
    """The form's text fields, with those a client sent as file parts read back as text.

    A form builder that honours the OpenAPI ``encoding`` of ``options`` (Swagger UI) sends it as
    a part with its own content type, ``application/json``, which arrives as a file named "blob".
    """
    fields = MultiDict(form)
    for name, part in files.items(multi=True):
        if name in FORM_FIELDS - {"file"}:
            part.stream.seek(0)
            fields.add(name, part.stream.read(MAX_TEXT_PART).decode("utf-8", "replace"))
    return fields


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _intake() -> Intake:
    app = current_app
    models, group = app.extensions["imgsvc.default_model"], app.extensions["imgsvc.submit_group"]
    return Intake(app_settings(), app.uploads, app.redis, app.task_queue, app.metrics, models, group)


def _limits(settings: Settings) -> dict[str, Any]:
    """What bounds one request's submits: a header-check deadline that all its files share, and the
    client's quota bucket; a client already over its quota is refused here, before any parsing."""
    bucket = client_bucket()
    check_quota(current_app.redis, settings, bucket)
    return {"deadline": time.monotonic() + settings.header_check_ms / 1000, "bucket": bucket}


@bp.post("/submit")
@idempotent
def submit() -> tuple[Response, int, dict[str, str]]:
    settings = app_settings()
    limits = _limits(settings)  # before the body is parsed: a client over its quota costs no staging
    fields = form_fields(request.files, request.form)
    uploads = request.files.getlist("file")
    seconds = preferred_wait(request.headers.get("Prefer"), settings)
    job_id = jobs.new_id()
    # A submit that waits subscribes to its job's changes before the job exists: nothing to read after.
    with watch_new_job(job_id) if seconds is not None else contextlib.nullcontext() as woken:
        job = _accept(settings, fields, uploads, limits, job_id)
        g.job_id = job.id
        headers = {"Location": url_for("api.status", job_id=job.id), "Vary": "Prefer"}
        if seconds is not None:
            # One request per job: the answer is /result's once the job ends within the wait.
            if job.cached:  # answered from an identical image's result: done already
                ended, applied = fresh_job(job.id), True
            else:
                ended, applied = wait_for_result(job.id, woken, seconds)
            if applied:
                headers["Preference-Applied"] = f"wait={seconds}"
            if isinstance(ended, dict):  # done: the result its worker committed and published
                return jsonify(ended), 200, headers
            if ended is not None and ended.status in jobs.FINISHED:
                return (*result_answer(ended), headers)
    body = {"job_id": job.id, "status": job.status, "message": "Job submitted successfully"}
    if job.cached:
        body |= {"cached": True, "message": "Identical image already described; result is ready"}
    return jsonify(body), 202, headers


def _accept(
    settings: Settings, fields: MultiDict, uploads: list[FileStorage], limits: dict[str, Any], job_id: str
) -> Accepted:
    """The submit's one image, by URL or as a file, accepted as job ``job_id``."""
    if any(fields.getlist("image_url")):
        if uploads:
            raise BadRequest("send the image as the field 'file' or its address as 'image_url', not both")
        return accept_url(
            _intake(),
            _image_url(fields, settings),
            parse_submission(fields, settings),
            owner=g.get("owner"),
            bucket=limits["bucket"],
            job_id=job_id,
        )
    if not uploads:
        raise MissingFile(
            "send the image as the multipart form field 'file' (or its address as the field 'image_url')"
        )
    if len(uploads) > 1:
        raise BadRequest(
            f"submit takes one file and this request has {len(uploads)}; "
            "send several files to POST /api/v1/batch instead",
            batch_url=url_for("api.submit_batch"),
        )
    upload = uploads[0]
    return accept_upload(
        _intake(),
        upload.stream,
        parse_submission(fields, settings),
        owner=g.get("owner"),
        filename=client_filename(upload.filename),
        job_id=job_id,
        **limits,
    )


def _image_url(fields: MultiDict, settings: Settings) -> str:
    """The ``image_url`` field, vetted by the SSRF guard (parsed and resolved, never connected to:
    the worker fetches it); an empty one is absent, as for every field."""
    given = [value for value in fields.getlist("image_url") if value]
    if len(given) > 1:
        raise BadRequest("submit takes one image_url; submit each image on its own")
    return check_url(given[0], settings.image_url_allow_private, UnsafeImageURL)


@bp.post("/batch")
@idempotent
def submit_batch() -> tuple[Response, int]:
    """Several ``file`` fields; each is checked on its own, so one bad file spoils nothing."""
    settings = app_settings()
    request.max_content_length = settings.max_file_size * settings.max_batch_files + 64 * 1024
    limits = _limits(settings)
    uploads: list[FileStorage] = request.files.getlist("file")
    if not uploads:
        raise MissingFile("send the images as repeated multipart form fields 'file'")
    if len(uploads) > settings.max_batch_files:
        raise BadRequest(f"at most {settings.max_batch_files} files per batch")
    fields = form_fields(request.files, request.form)
    if any(fields.getlist("image_url")):
        raise BadRequest("a batch takes files only; submit each image_url on its own to POST /api/v1/submit")
    submission = parse_submission(fields, settings)
    intake = _intake()
    model_route(intake, submission.model)  # a model nobody serves refuses the batch, not each file
    batch_id = jobs.new_id()
    entries: list[dict[str, Any]] = []
    outage: ServiceUnavailable | None = None
    for index, upload in enumerate(uploads):
        filename = client_filename(upload.filename)
        entry: dict[str, Any] = {"index": index, "filename": filename}
        try:
            job = accept_upload(
                intake,
                upload.stream,
                submission,
                owner=g.get("owner"),
                batch_id=batch_id,
                filename=filename,
                **limits,
            )
            entry |= {"job_id": job.id, "status": job.status}
        except ImgsvcError as exc:
            entry |= exc.to_dict()
            if isinstance(exc, ServiceUnavailable):
                outage = exc
        entries.append(entry)
    accepted = sum("job_id" in e for e in entries)
    if not accepted and outage is not None:
        raise outage  # nothing was taken, and the fault is ours, not the files': 503, retry later
    body = {"batch_id": batch_id, "accepted": accepted, "rejected": len(entries) - accepted, "jobs": entries}
    if not accepted:
        body["error"] = {
            "code": "no_valid_files",
            "message": "no file in the batch was accepted",
            "status": 400,
        }
        return jsonify(body), 400
    return jsonify(body), 202


@bp.get("/models")
def list_models() -> Response:
    """The models this deployment's workers serve (or served lately), the default first."""
    registry = ModelRegistry(current_app.task_queue, app_settings().worker_ttl)
    models = registry.served(depths=True)
    default = next((m.name for m in models if m.default), None)
    return jsonify({"default": default, "models": [m.to_json() for m in models]})


@bp.get("/batch/<batch_id>")
def batch_status(batch_id: str) -> Response:
    canonical = jobs.parse_job_id(batch_id)
    members = jobs.batch_members(canonical, g.get("owner")) if canonical else []
    if not members:
        raise NotFound(f"no batch with id {batch_id!r}")
    counts = Counter(job.status for job in members)
    finished = all(job.status in jobs.FINISHED for job in members)
    return jsonify(
        {
            "batch_id": canonical,
            "finished": finished,
            "counts": counts,
            "jobs": [
                job.result_dict() if job.status == jobs.Status.DONE else job.status_dict() for job in members
            ],
        }
    )


def _find(job_id: str) -> jobs.Job:
    canonical = jobs.parse_job_id(job_id)
    job = jobs.get_job(canonical) if canonical else None
    if job is None or (g.get("owner") is not None and job.owner != g.owner):
        raise NotFound(f"no job with id {job_id!r}")
    g.job_id = job.id
    return job


def _waited(job: jobs.Job) -> tuple[jobs.Job, dict[str, str]]:
    """The job once finished, if the request asked to wait for it (``Prefer: wait=N``), and the
    headers that say whether the wait was applied (RFC 7240's Preference-Applied)."""
    headers = {"Vary": "Prefer"}
    seconds = preferred_wait(request.headers.get("Prefer"), app_settings())
    if seconds is None or job.status in jobs.FINISHED:
        return job, headers
    later, applied = wait_for(job.id, seconds)
    if later is None:
        raise NotFound(f"no job with id {job.id!r}")  # deleted while the client waited
    if applied:
        headers["Preference-Applied"] = f"wait={seconds}"
    return later, headers


def _polled(kind: str, job_id: str) -> Response | tuple[jobs.Job, dict[str, str]]:
    """A poll of ``job_id``: a 304 from its validator when the client's ETag still holds (no SQL),
    else the row (once finished, if the request waits for it) and the headers for the answer."""
    waits = preferred_wait(request.headers.get("Prefer"), app_settings()) is not None
    canonical = jobs.parse_job_id(job_id)
    validator = read_validator(canonical) if canonical and not waits else None
    if (unchanged := not_modified(kind, canonical or "", validator)) is not None:
        return unchanged
    job, headers = _waited(_find(job_id))
    # A waited-for row was read after the validator was, and after changes it may not vouch for.
    return job, headers | poll_headers(kind, job, None if waits else validator)


@bp.get("/status/<job_id>")
def status(job_id: str) -> Response | tuple[Response, int, dict[str, str]]:
    polled = _polled("status", job_id)
    if isinstance(polled, Response):
        return polled
    job, headers = polled
    return jsonify(job.status_dict()), 200, headers


#: What /result says about a job that ended without a description.
FINISHED_MESSAGES = {
    jobs.Status.FAILED: "the job failed; its error says why",
    jobs.Status.CANCELLED: "the job was cancelled",
}


@bp.get("/result/<job_id>")
def result(job_id: str) -> Response | tuple[Response, int, dict[str, str]]:
    polled = _polled("result", job_id)
    if isinstance(polled, Response):
        return polled
    job, headers = polled
    return (*result_answer(job), headers)


def result_answer(job: jobs.Job) -> tuple[Response, int]:
    """/result's body and status for a job as it is: 200 done, 422 ended without one, 202 not yet."""
    if job.status == jobs.Status.DONE:
        return jsonify(job.result_dict()), 200
    if job.status in FINISHED_MESSAGES:
        return jsonify(job.status_dict() | {"message": FINISHED_MESSAGES[job.status]}), 422
    return jsonify(job.status_dict() | {"message": f"the job is {job.status}; try again shortly"}), 202


def event_payload(job: jobs.Job) -> dict[str, Any]:
    """What each server-sent event carries: the result once done, else the status."""
    return job.result_dict() if job.status == jobs.Status.DONE else job.status_dict()


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str) -> Response:
    """Server-sent events: the job's state now, each change, and the end at a finished state."""
    job = _find(job_id)
    stream = stream_with_context(event_stream(job.id, event_payload))
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # nginx: pass each event on now
    return Response(stream, mimetype="text/event-stream", headers=headers)


@bp.get("/jobs")
def list_jobs() -> Response:
    """Newest first, with an opaque cursor for the next page."""
    status_filter = request.args.get("status") or None
    if status_filter and status_filter not in set(jobs.Status):
        raise BadRequest(f"status must be one of {', '.join(jobs.Status)}")
    try:
        limit = int(request.args.get("limit", 20))
    except ValueError as exc:
        raise BadRequest("limit must be an integer") from exc
    if not 1 <= limit <= 100:
        raise BadRequest("limit must be between 1 and 100")
    before = _decode_cursor(request.args["cursor"]) if request.args.get("cursor") else None
    page = jobs.list_jobs(status=status_filter, owner=g.get("owner"), limit=limit + 1, before=before)
    more, page = len(page) > limit, page[:limit]
    next_cursor = _encode_cursor(page[-1]) if more else None
    return jsonify({"jobs": [job.status_dict() for job in page], "next_cursor": next_cursor})


def _encode_cursor(job: jobs.Job) -> str:
    return base64.urlsafe_b64encode(f"{job.created_at.isoformat()}|{job.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(created), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadRequest("invalid cursor") from exc


@bp.delete("/jobs/<job_id>")
def delete_job(job_id: str) -> Response:
    """Queued: cancelled and dropped from RQ. Processing: its result will be discarded. Finished
    (cancelled included): deleted, with its image."""
    job = _find(job_id)
    if job.status in jobs.FINISHED:
        canonical = job.id  # read before the row is gone
        current_app.uploads.delete(job.upload_name)
        jobs.delete_job(canonical)
        _delete_rq_job(canonical)
        return jsonify({"job_id": canonical, "status": "deleted"})
    was = job.status
    jobs.mark_cancelled(job.id)
    if was == jobs.Status.QUEUED:
        _delete_rq_job(job.id)
    # The image stays, as a finished job's does, so the job can be retried; a DELETE of the
    # cancelled job deletes it at once, `flask prune` after UPLOAD_RETENTION.
    return jsonify({"job_id": job.id, "status": "cancelled", "was": was})


def _delete_rq_job(job_id: str) -> None:
    """RQ's job and its registry entries go too, so the dashboard lists no deleted job. If RQ
    cannot be told, the worker still finds the row cancelled or gone and skips the job."""
    with contextlib.suppress(NoSuchJobError, RedisError):
        RQJob.fetch(job_id, connection=current_app.redis).delete()


@bp.post("/jobs/<job_id>/retry")
def retry(job_id: str) -> tuple[Response, int, dict[str, str]]:
    """A failed or cancelled job, again: same id, its ``attempt`` one higher; 409 says why not."""
    job = _find(job_id)
    canonical = job.id  # read before the row is written (the write expires the object)
    attempt = retry_job(app_settings(), current_app.task_queue, current_app.uploads, job)
    body = {"job_id": canonical, "status": jobs.Status.QUEUED, "attempt": attempt}
    return jsonify(body), 202, {"Location": url_for("api.status", job_id=canonical)}
