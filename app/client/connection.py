"""Where the registry is and how to authenticate: arguments, else CKPT_URL / CKPT_API_KEY."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Connection:
    url: str
    headers: dict[str, str]
    timeout: float


def connection(url: str | None, api_key: str | None, timeout: float | None) -> Connection:
    base = (url or os.environ.get("CKPT_URL") or DEFAULT_URL).rstrip("/")
    key = api_key if api_key is not None else os.environ.get("CKPT_API_KEY")
    headers = {"User-Agent": "ckpt-client"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return Connection(base, headers, DEFAULT_TIMEOUT if timeout is None else timeout)
