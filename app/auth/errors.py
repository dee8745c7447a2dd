"""The errors of authentication and of per-key limits (AppErrors, rendered in every dialect)."""

from __future__ import annotations

import math

from app.errors import AppError


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(AppError):
    status = 403
    code = "forbidden"


class RateLimited(AppError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        retry_after = str(max(1, math.ceil(retry_after_seconds)))
        super().__init__(message, headers={"Retry-After": retry_after})


class QuotaExceeded(AppError):
    status = 413
    code = "quota_exceeded"
