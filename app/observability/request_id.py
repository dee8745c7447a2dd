"""One id per request: the client's `X-Request-ID` when it is sane, otherwise a fresh one.

The id lives in a context variable, so every log line written while the request is handled
(threadpool work included: anyio copies the context) carries it.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

HEADER = "X-Request-ID"
_SANE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_current: ContextVar[str | None] = ContextVar("request_id", default=None)


def accept_or_generate(incoming: str | None) -> str:
    """The incoming id if it is 1..128 chars of [A-Za-z0-9._-], else a new random one: an id
    is echoed into headers and logs, so anything else could inject or flood them."""
    if incoming is not None and _SANE.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return _current.get()


def bind(request_id: str) -> object:
    """Make `request_id` current; returns the token `unbind` needs."""
    return _current.set(request_id)


def unbind(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
