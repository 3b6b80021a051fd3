"""One error hierarchy for the whole service; the web side turns it into JSON.

Raise an :class:`ImgsvcError` subclass anywhere on a request's path and the single
handler in :mod:`imgsvc.web` answers with its HTTP status and a stable ``code``.
"""

from __future__ import annotations


class ImgsvcError(Exception):
    status = 500
    code = "internal_error"

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


class FileTooLarge(ImgsvcError):
    status = 413
    code = "file_too_large"


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


class QueueUnavailable(ImgsvcError):
    status = 503
    code = "queue_unavailable"


class StoreUnavailable(ImgsvcError):
    """The upload store (object storage) cannot be reached; the worker retries, the client may too."""

    status = 503
    code = "storage_unavailable"
