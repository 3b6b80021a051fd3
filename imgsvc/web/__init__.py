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
from werkzeug.formparser import FormDataParser, MultiPartParser
from werkzeug.sansio.multipart import File

from imgsvc.config import app_settings
from imgsvc.errors import (
    BadRequest,
    DatabaseUnavailable,
    FileTooLarge,
    ImgsvcError,
    QueueUnavailable,
    ServiceUnavailable,
    TooManyFormParts,
)
from imgsvc.metrics import HttpMetrics
from imgsvc.queue.routing import DefaultModelCache
from imgsvc.storage.uploads import StagingFile, file_too_large, human_size
from imgsvc.submissions import SubmitGroup

log = logging.getLogger("imgsvc.web")
#: GETs a probe or a waiting client repeats every second or so: logged at DEBUG (see _log_request).
HEALTH_PATHS = ("/healthz", "/readyz", "/metrics")
POLL_PATHS = ("/api/v1/status/", "/api/v1/result/", "/api/v1/batch/")


#: The one multipart field that may carry a file: a file part under any other name is refused
#: before it is staged (each staged part is an open temp file until the request ends).
FILE_FIELD = "file"


class _CountedStream:
    """The request body as the multipart parser reads it, refused once it holds too many parts.

    Each part starts with ``--BOUNDARY``; counting those as the bytes are read stops a form
    of thousands of tiny parts before the parser has made (and staged) the parts past the
    limit, and lets the refusal say what is wrong. Werkzeug's own ``max_form_parts`` answers
    with the same bare 413 as a field that is too large.
    """

    def __init__(self, stream: IO[bytes], boundary: bytes, max_parts: int) -> None:
        self.stream = stream
        self.delimiter = b"--" + boundary
        self.max_parts = max_parts
        self.delimiters = 0
        self.tail = b""

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        window = self.tail + data
        self.delimiters += window.count(self.delimiter)
        # Keep what could be the start of a delimiter cut by this read (never a whole one).
        self.tail = window[-(len(self.delimiter) - 1) :] if data else b""
        if self.delimiters > self.max_parts + 1:  # the closing delimiter follows the last part
            raise TooManyFormParts(
                f"the form has more than {self.max_parts} parts; the limit is {self.max_parts} "
                "(the files and the form fields together)",
                max_parts=self.max_parts,
            )
        return data


class _UploadPartParser(MultiPartParser):
    def start_file_streaming(self, event: File, total_content_length: int | None) -> IO[bytes]:
        from imgsvc.web.api import FORM_FIELDS  # the blueprint owns its form; imported late (a cycle)

        # A form builder that honours the OpenAPI encoding of a text field (Swagger UI's
        # ``options``) sends it as a file part; any other name is refused before it is staged.
        if event.name not in FORM_FIELDS:  # the name is the client's: never quoted back
            raise BadRequest(f"a file can only be sent in the form field '{FILE_FIELD}'")
        return super().start_file_streaming(event, total_content_length)


class _UploadFormParser(FormDataParser):
    def _parse_multipart(self, stream, mimetype, content_length, options):  # type: ignore[no-untyped-def]
        limit = app_settings().form_parts_limit
        parser = _UploadPartParser(
            stream_factory=self.stream_factory,
            max_form_memory_size=self.max_form_memory_size,
            max_form_parts=limit + 1,  # a backstop: the counted stream refuses first, and says why
            cls=self.cls,
        )
        boundary = options.get("boundary", "").encode("ascii")
        if not boundary:
            raise ValueError("Missing boundary")
        form, files = parser.parse(_CountedStream(stream, boundary, limit), boundary, content_length)  # type: ignore[arg-type]
        return stream, form, files


class UploadRequest(Request):
    """A request whose uploaded files are parsed straight into the upload store's staging directory.

    Werkzeug's multipart parser writes each file part into what ``_get_file_stream`` returns:
    here a :class:`StagingFile`, which hashes, counts and size-limits the bytes as they arrive.
    So an upload is read once, as it is parsed, and the API takes the staged file as it is,
    instead of a copy in memory (or a temp file) that is then copied, hashed and checked again.
    Whatever no route took is removed when the request closes.

    Before anything is staged, a form of more than ``MAX_FORM_PARTS`` parts is refused (413),
    and so is a file part not named ``file`` (400).
    """

    form_data_parser_class = _UploadFormParser

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


#: The ``code`` of werkzeug's own errors, by status. Any other status is reported under its
#: class (``bad_request``, ``internal_error``), so every code the API answers is one the
#: OpenAPI document lists and a generated client can parse.
WERKZEUG_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "service_unavailable",
}


def register_web(app: Flask) -> None:
    from imgsvc.web import api, docs, health, multipart, pages
    from imgsvc.web.dashboard import mount_dashboard

    multipart.install()
    app.request_class = UploadRequest
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(pages.bp)
    mount_dashboard(app, app_settings(app))
    register_errors(app)
    app.extensions["imgsvc.http_metrics"] = HttpMetrics(app.metrics)
    app.extensions["imgsvc.default_model"] = DefaultModelCache()
    app.extensions["imgsvc.submit_group"] = SubmitGroup()
    app.before_request(_start_timer)
    app.after_request(no_sniffing)
    app.after_request(_log_request)


def no_sniffing(response: Response) -> Response:
    """Every response, errors included: a browser must take our Content-Type as it is, so an
    uploaded file or a JSON body quoting one is never run as HTML or script."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


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
    status = exc.code or 500
    code = WERKZEUG_CODES.get(status, "bad_request" if status < 500 else "internal_error")
    body = {"error": {"code": code, "message": exc.description, "status": exc.code}}
    # Keep the exception's own headers (Allow on a 405, WWW-Authenticate ...), not its HTML type.
    headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
    return jsonify(body), status, headers


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
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    elapsed_ms = elapsed * 1000
    # The route's template (/api/v1/status/<job_id>), never the path: a job id per series would
    # grow without bound.
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    current_app.extensions["imgsvc.http_metrics"].observe(
        request.method, route, response.status_code, elapsed
    )
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
