"""Why the loader child refuses a checkpoint, and the text helpers its messages use."""

from __future__ import annotations

from typing import Any


class Rejection(Exception):
    """A reason to refuse the upload; becomes RejectedCheckpoint(message, code) in the parent."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def short(value: Any) -> str:
    return truncate(repr(value), 80)


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
