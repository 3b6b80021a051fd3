"""The public JSON API under /api/v1: submit an image, poll its status, fetch its result."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, request, url_for

from imgsvc.config import Settings
from imgsvc.errors import ImgsvcError, MissingFile, NotFound
from imgsvc.images import inspect_image
from imgsvc.queue.connection import enqueue_describe
from imgsvc.storage import jobs
from imgsvc.storage.uploads import UploadStore

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.post("/submit")
def submit() -> tuple[Response, int, dict[str, str]]:
    settings: Settings = current_app.config["IMGSVC"]
    upload = request.files.get("file")
    if upload is None:
        raise MissingFile("send the image as the multipart form field 'file'")
    job = accept_upload(settings, current_app.uploads, upload.stream)
    g.job_id = job.id
    status_url = url_for("api.status", job_id=job.id)
    body = {"job_id": job.id, "status": job.status, "message": "Job submitted successfully"}
    return jsonify(body), 202, {"Location": status_url}


def accept_upload(settings: Settings, store: UploadStore, stream) -> jobs.Job:
    """Stage, check, store, record, enqueue; on any failure undo what was done so far."""
    staged = store.stage(stream)
    try:
        info = inspect_image(staged.path, settings.max_image_pixels)
    except BaseException:
        store.discard(staged)
        raise
    name = store.commit(staged, info.extension)
    try:
        job = jobs.create_job(
            upload_name=name,
            image_format=info.format,
            width=info.width,
            height=info.height,
            size_bytes=staged.size,
            sha256=staged.sha256,
        )
    except BaseException:
        store.delete(name)
        raise
    try:
        enqueue_describe(current_app.task_queue, settings, job.id)
    except ImgsvcError:
        jobs.delete_job(job)
        store.delete(name)
        raise
    current_app.metrics.count("submitted")
    return job


def _find(job_id: str) -> jobs.Job:
    canonical = jobs.parse_job_id(job_id)
    job = jobs.get_job(canonical) if canonical else None
    if job is None:
        raise NotFound(f"no job with id {job_id!r}")
    g.job_id = job.id
    return job


@bp.get("/status/<job_id>")
def status(job_id: str) -> Response:
    return jsonify(_find(job_id).status_dict())


@bp.get("/result/<job_id>")
def result(job_id: str) -> tuple[Response, int]:
    job = _find(job_id)
    if job.status == jobs.Status.DONE:
        return jsonify(job.result_dict()), 200
    if job.status == jobs.Status.FAILED:
        body = job.status_dict() | {"message": "the job failed; see error"}
        return jsonify(body), 422
    body = job.status_dict() | {"message": f"the job is {job.status}; try again shortly"}
    return jsonify(body), 202
