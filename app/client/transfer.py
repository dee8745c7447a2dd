"""Pieces of streamed transfers shared by both clients: downloads and server-sent events."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import unquote

import httpx

from app.client.errors import ChecksumMismatch, RegistryError, error_from_body
from app.client.sources import ProgressCallback

_TGI_STATUS = {"validation": 422, "overloaded": 429, "generation": 424}


class GenerationParameters(TypedDict, total=False):
    """TGI's generation parameters; the ones left out take the server's defaults."""

    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: list[str]
    repetition_penalty: float
    return_full_text: bool
    details: bool


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    sha256: str


class DownloadTarget:
    """Writes a response body to `<dest>.part` while hashing it; renamed into place only when
    the hash equals the one the registry sent, deleted otherwise."""

    def __init__(
        self,
        response: httpx.Response,
        dest: Path,
        progress: ProgressCallback | None,
        expected_sha256: str | None = None,
    ) -> None:
        expected = expected_sha256 or _announced_sha256(response)
        if expected is None:
            raise RegistryError(
                response.status_code, "no_checksum", "the server sent no sha256 to verify"
            )
        self.expected = expected
        self.dest = dest / _filename(response) if dest.is_dir() else dest
        self.total = int(response.headers["content-length"]) if _has_length(response) else None
        self.progress = progress
        self.partial = self.dest.with_name(self.dest.name + ".part")
        self.handle = self.partial.open("wb")
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, block: bytes) -> None:
        self.handle.write(block)
        self.hasher.update(block)
        self.size += len(block)
        if self.progress is not None:
            self.progress(self.size, self.total)

    def finish(self) -> Downloaded:
        self.handle.close()
        actual = self.hasher.hexdigest()
        if actual != self.expected:
            self.partial.unlink(missing_ok=True)
            raise ChecksumMismatch(self.expected, actual)
        self.partial.replace(self.dest)
        return Downloaded(self.dest, self.size, actual)

    def abort(self) -> None:
        self.handle.close()
        self.partial.unlink(missing_ok=True)


def _has_length(response: httpx.Response) -> bool:
    return str(response.headers.get("content-length", "")).isdigit()


def _announced_sha256(response: httpx.Response) -> str | None:
    value = response.headers.get("x-checkpoint-sha256") or response.headers.get("etag", "")
    value = value.removeprefix("W/").strip('"')
    return value if re.fullmatch(r"[0-9a-f]{64}", value) else None


def _filename(response: httpx.Response) -> str:
    disposition = response.headers.get("content-disposition", "")
    match = re.search(r"filename\*?=(?:utf-8'')?\"?([^\";]+)\"?", disposition, re.IGNORECASE)
    name = Path(unquote(match.group(1))).name if match else ""
    return name or "download"


def sse_event(line: str) -> dict[str, Any] | None:
    """The JSON of one `data:` line, or None for other lines and OpenAI's `[DONE]`."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if not payload or payload == "[DONE]":
        return None
    event: dict[str, Any] = json.loads(payload)
    if "error" in event:
        # Errors inside a stream arrive after a 200; TGI's error types name the status they
        # would have had, others (the registry's own codes) leave it unknown.
        kind = str(event.get("error_type") or "")
        raise error_from_body(_TGI_STATUS.get(kind), event, "error in stream")
    return event
