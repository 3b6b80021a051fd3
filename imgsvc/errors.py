"""One error hierarchy for the whole service; the web side turns it into JSON.

Raise an :class:`ImgsvcError` subclass anywhere on a request's path and the single
handler in :mod:`imgsvc.web` answers with its HTTP status and a stable ``code``.
"""

from __future__ import annotations


class ImgsvcError(Exception):
    """``message`` is shown to clients: it must never quote untrusted input or name an address."""

    status = 500
    code = "internal_error"
    headers: dict[str, str] = {}

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message, "status": self.status}
        body.update(self.details)
        return {"error": body}


class BadRequest(ImgsvcError):
    status = 400
    code = "bad_request"


class MissingFile(BadRequest):
    code = "missing_file"


class EmptyFile(BadRequest):
    code = "empty_file"


class NotFound(ImgsvcError):
    status = 404
    code = "not_found"


class Conflict(ImgsvcError):
    """The request does not fit the resource's state (e.g. retrying a job that has not ended)."""

    status = 409
    code = "conflict"


class FileTooLarge(ImgsvcError):
    status = 413
    code = "file_too_large"


class TooManyFormParts(ImgsvcError):
    status = 413
    code = "too_many_form_parts"


class ImageTooLarge(ImgsvcError):
    """Too many pixels: a decompression bomb or simply too big to describe."""

    status = 413
    code = "image_too_large"


class UnsupportedImage(ImgsvcError):
    """Not an image Pillow can decode, or a format outside the allow-list."""

    status = 415
    code = "unsupported_media_type"


class Unauthorized(ImgsvcError):
    status = 401
    code = "unauthorized"


class Forbidden(ImgsvcError):
    status = 403
    code = "forbidden"


class TooManyRequests(ImgsvcError):
    """A limit on this client ran out; ``Retry-After`` says when its window resets."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, retry_after: int, **details: object) -> None:
        super().__init__(message, **details)
        self.headers = {"Retry-After": str(retry_after)}


class ServiceUnavailable(ImgsvcError):
    """An infrastructure fault (Redis, the database, the upload disk): worth retrying shortly.

    The message names the part that failed, never its address; the details go to the log.
    """

    status = 503
    code = "service_unavailable"
    headers = {"Retry-After": "5"}
    what = "a service this request needs"

    def __init__(self, message: str | None = None, **details: object) -> None:
        super().__init__(message or f"{self.what} is unavailable; retry shortly", **details)


class QueueUnavailable(ServiceUnavailable):
    code = "queue_unavailable"
    what = "the job queue"


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
    what = "the database"


class StorageUnavailable(ServiceUnavailable):
    """The upload store cannot take or give a file: a full, read-only or foreign directory, or
    object storage that does not answer. The worker retries; a client may too."""

    code = "storage_unavailable"
    what = "the upload storage"
