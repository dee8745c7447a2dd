"""One exception hierarchy for the whole service.

Every domain error carries the HTTP status it maps to and a stable machine code; the API turns
them into `{"error": {"code", "message"}}` in exactly one place (app.main).
"""

from __future__ import annotations


class AppError(Exception):
    """Base class: `status` is the HTTP status, `code` a stable snake_case identifier."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        # Response headers the error needs (WWW-Authenticate on 401, Retry-After on 429).
        self.headers = headers or {}
        if code is not None:
            self.code = code


class InvalidInput(AppError):
    """The request itself is malformed (missing part, bad JSON field, bad ref syntax)."""

    status = 400
    code = "invalid_request"


class NotFound(AppError):
    status = 404
    code = "not_found"


class Conflict(AppError):
    status = 409
    code = "conflict"


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"


class RequestTimeout(AppError):
    """The client stalled or sent its body too slowly."""

    status = 408
    code = "request_timeout"


class UnsupportedMediaType(AppError):
    status = 415
    code = "unsupported_media_type"


class RejectedCheckpoint(AppError):
    """The uploaded bytes are not an acceptable checkpoint; `code` names the exact problem."""

    status = 422
    code = "invalid_checkpoint"


class UnprocessableRequest(AppError):
    """The request is well-formed JSON but its fields are not acceptable."""

    status = 422
    code = "validation"


class RangeNotSatisfiable(AppError):
    status = 416
    code = "range_not_satisfiable"


class InsufficientStorage(AppError):
    status = 507
    code = "insufficient_storage"


class ServiceUnavailable(AppError):
    status = 503
    code = "unavailable"
