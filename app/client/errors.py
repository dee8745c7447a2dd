"""Errors the client raises: every non-2xx answer becomes a RegistryError with the server's code.

The registry answers `{"error": {"code", "message"}}`; its TGI routes answer
`{"error": "...", "error_type": "..."}` and its OpenAI routes
`{"error": {"message", "type", "param", "code"}}`. All three end up in the same three fields.
"""

from __future__ import annotations

from typing import Any

import httpx


class RegistryError(Exception):
    """`status` is the HTTP status (None when no answer came back), `code` a stable identifier."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class ChecksumMismatch(RegistryError):
    """The downloaded bytes do not hash to the sha256 the registry recorded for them."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(
            None,
            "checksum_mismatch",
            f"downloaded bytes have sha256 {actual}, expected {expected}",
        )
        self.expected = expected
        self.actual = actual


def error_from_body(status: int | None, body: Any, fallback: str) -> RegistryError:
    """The error named in a parsed JSON body, in any of the server's three dialects."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = error.get("code") or error.get("type") or "http_error"
            return RegistryError(status, str(code), str(error.get("message", fallback)))
        if isinstance(error, str):
            return RegistryError(status, str(body.get("error_type") or "http_error"), error)
    return RegistryError(status, "http_error", fallback)


def error_from_response(response: httpx.Response) -> RegistryError:
    """Call once the body has been read (streamed responses: after `read()`)."""
    fallback = response.text[:500].strip() or response.reason_phrase
    try:
        body = response.json()
    except ValueError:
        body = None
    return error_from_body(response.status_code, body, fallback)


def unreachable(url: str, exc: httpx.TransportError) -> RegistryError:
    return RegistryError(
        None, "unreachable", f"connection to {url} failed: {exc or type(exc).__name__}"
    )
