"""The web side: blueprints, the one JSON error handler, and per-request logging."""

from __future__ import annotations

import logging
import time
from typing import IO

from flask import Flask, Request, Response, current_app, g, jsonify, request
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from imgsvc.config import app_settings
from imgsvc.errors import (
    DatabaseUnavailable,
    FileTooLarge,
    ImgsvcError,
    QueueUnavailable,
    ServiceUnavailable,
)
from imgsvc.storage.uploads import StagingFile, file_too_large, human_size

log = logging.getLogger("imgsvc.web")
#: GETs a probe or a waiting client repeats every second or so: logged at DEBUG (see _log_request).
HEALTH_PATHS = ("/healthz", "/readyz", "/metrics")
POLL_PATHS = ("/api/v1/status/", "/api/v1/result/", "/api/v1/batch/")


class UploadRequest(Request):
    """A request whose uploaded files are parsed straight into the upload store's staging directory.

    Werkzeug's multipart parser writes each file part into what ``_get_file_stream`` returns:
    here a :class:`StagingFile`, which hashes, counts and size-limits the bytes as they arrive.
    So an upload is read once, as it is parsed, and the API takes the staged file as it is,
    instead of a copy in memory (or a temp file) that is then copied, hashed and checked again.
    Whatever no route took is removed when the request closes.
    """

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        settings = app_settings()
        staging = StagingFile(current_app.uploads.staging_dir, settings.max_file_size)
        self.__dict__.setdefault("_staging_files", []).append(staging)
        return staging  # type: ignore[return-value]

    def close(self) -> None:
        try:
            super().close()
        finally:
            for staging in self.__dict__.pop("_staging_files", []):
                staging.close()


def register_web(app: Flask) -> None:
    from imgsvc.web import api, docs, health, pages
    from imgsvc.web.dashboard import mount_dashboard

    app.request_class = UploadRequest
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(pages.bp)
    mount_dashboard(app, app_settings(app))
    register_errors(app)
    app.before_request(_start_timer)
    app.after_request(_log_request)


def register_errors(app: Flask) -> None:
    """Every error becomes JSON: ours, werkzeug's, infrastructure faults (503), and the rest (500)."""
    app.register_error_handler(ImgsvcError, _imgsvc_error)
    app.register_error_handler(HTTPException, _http_error)
    for infrastructure_fault in (RedisError, OperationalError, PoolTimeout):
        app.register_error_handler(infrastructure_fault, _infrastructure_error)
    app.register_error_handler(Exception, _unexpected_error)


def _imgsvc_error(exc: ImgsvcError) -> tuple[Response, int, dict[str, str]]:
    if isinstance(exc, ServiceUnavailable):
        # The cause names hosts, ports, paths or SQL: the log gets it, the client never does.
        cause = exc.__cause__
        log.warning(
            "service unavailable",
            extra={
                "path": request.path,
                "code": exc.code,
                "error_type": type(cause).__name__ if cause else None,
                "error": str(cause) if cause else None,
            },
        )
    return jsonify(exc.to_dict()), exc.status, exc.headers


def _infrastructure_error(exc: Exception) -> tuple[Response, int, dict[str, str]]:
    """Redis or the database failed anywhere under a request: 503 with Retry-After, not a 500."""
    error = QueueUnavailable() if isinstance(exc, RedisError) else DatabaseUnavailable()
    error.__cause__ = exc
    return _imgsvc_error(error)


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    """Werkzeug's own errors (404 route, 405, 413 from MAX_CONTENT_LENGTH) as JSON too."""
    if exc.code == 413:
        return _imgsvc_error(_body_too_large())
    code = (exc.name or "error").lower().replace(" ", "_")
    body = {"error": {"code": code, "message": exc.description, "status": exc.code}}
    # Keep the exception's own headers (Allow on a 405, WWW-Authenticate ...), not its HTML type.
    headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
    return jsonify(body), exc.code or 500, headers


def _body_too_large() -> FileTooLarge:
    """Werkzeug refused the body before it was parsed: word it like the per-file check does."""
    settings = app_settings()
    size = request.content_length
    if size is not None and request.max_content_length and size <= request.max_content_length:
        return FileTooLarge("a form field is larger than the form parser allows")
    if request.endpoint == "api.submit_batch":
        return FileTooLarge(
            f"this batch is larger than {settings.max_batch_files} files of "
            f"{human_size(settings.max_file_size)}, the limit",
            max_bytes=settings.max_file_size,
            max_files=settings.max_batch_files,
        )
    # One file plus a little form framing: the body's size is the file's, to the shown precision.
    return file_too_large(size, settings.max_file_size)


def _unexpected_error(exc: Exception) -> tuple[Response, int]:
    log.exception("unhandled error", extra={"path": request.path})
    body = {"error": {"code": "internal_error", "message": "unexpected server error", "status": 500}}
    return jsonify(body), 500


def _start_timer() -> None:
    g.started = time.perf_counter()


def _log_request(response: Response) -> Response:
    elapsed_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
    # The one line per request (gunicorn's access log is off): what an access log would say, plus job_id.
    extra = {
        "method": request.method,
        "path": request.path,
        "status": response.status_code,
        "ms": round(elapsed_ms, 2),
        "remote_addr": request.remote_addr,
    }
    if job_id := g.get("job_id"):
        extra["job_id"] = job_id
    # Health checks (a 503 from /readyz is its answer, not a fault) and polls that did not fail on
    # the server's side: DEBUG. Everything else, submits and cancels included, at INFO.
    polled = request.path.startswith(POLL_PATHS) and response.status_code < 500
    routine = request.method == "GET" and (request.path in HEALTH_PATHS or polled)
    log.log(logging.DEBUG if routine else logging.INFO, "request", extra=extra)
    return response
