"""Read an upload request body (raw octet-stream or multipart/form-data) into an UploadSpool.

Both paths stream: the multipart body is parsed incrementally with python-multipart's low-level
parser, so the file part goes straight to the spool and never into Starlette's temp files.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.errors import InvalidInput, PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from app.ingest.spool import SpooledUpload, UploadSpool

MAX_FIELD_BYTES = 1 << 20
MAX_FIELDS = 8
ALLOWED_FIELDS = {"name", "config", "metadata", "filename"}


@dataclass(frozen=True)
class BodyPace:
    """How slow a body may arrive: `stall_seconds` without a byte, or below `min_rate` bytes
    per second on average once `stall_seconds` have passed, ends the upload with 408."""

    stall_seconds: float = 60.0
    min_rate: int = 1024


@dataclass
class ReceivedUpload:
    spooled: SpooledUpload
    fields: dict[str, str]
    filename: str | None


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    data: list[bytes] = field(default_factory=list)
    size: int = 0


async def receive_upload(
    request: Request,
    make_spool: Callable[[int | None], UploadSpool],
    pace: BodyPace | None = None,
) -> ReceivedUpload:
    """Stream the body into a spool; `make_spool` gets the file's size when it is known."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    multipart = content_type == b"multipart/form-data"
    if not multipart and content_type not in (b"application/octet-stream", b""):
        raise UnsupportedMediaType(
            f"Content-Type {content_type.decode(errors='replace')!r} is not accepted: send "
            "multipart/form-data with a 'file' part, or application/octet-stream",
        )
    expected = None if multipart else _content_length(request)
    spool = make_spool(expected)
    fields: dict[str, str] = {}
    filename: str | None = None
    chunks = _paced_body(request, pace or BodyPace())
    try:
        if multipart:
            fields, filename = await _receive_multipart(chunks, options, spool)
        else:
            await _receive_raw(chunks, spool)
        _check_length(spool, expected)
        spooled = await spool.finish()
    except ClientDisconnect as exc:
        await _abort(spool)
        raise InvalidInput(
            "the client disconnected before the upload finished", code="upload_interrupted"
        ) from exc
    except BaseException:
        await _abort(spool)
        raise
    return ReceivedUpload(spooled, fields, filename)


async def _abort(spool: UploadSpool) -> None:
    """abort() waits for the spool's writes in flight: on a thread, and shielded so that a
    cancelled request still removes its partial file."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(spool.abort)


def _check_length(spool: UploadSpool, expected: int | None) -> None:
    if expected is not None and spool.received != expected:
        raise InvalidInput(
            f"body has {spool.received} bytes but Content-Length announced {expected}",
            code="length_mismatch",
        )


def _content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise InvalidInput(f"invalid Content-Length {raw!r}")
    return int(raw)


async def _paced_body(request: Request, pace: BodyPace) -> AsyncIterator[bytes]:
    """The body's chunks; raises RequestTimeout for a stalled or too slow client."""
    chunks = request.stream().__aiter__()
    started, received = time.monotonic(), 0
    while True:
        try:
            with anyio.fail_after(pace.stall_seconds):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimeout(
                f"no upload data arrived for {pace.stall_seconds:g} s; the request timed out"
            ) from None
        received += len(chunk)
        elapsed = time.monotonic() - started
        if elapsed > pace.stall_seconds and received < pace.min_rate * elapsed:
            raise RequestTimeout(
                f"the upload arrives at {received / elapsed:.0f} bytes/s, below the minimum of "
                f"{pace.min_rate} bytes/s; the request timed out"
            )
        yield chunk


async def _receive_raw(chunks: AsyncIterator[bytes], spool: UploadSpool) -> None:
    async for chunk in chunks:
        await spool.write(chunk)


async def _receive_multipart(
    chunks: AsyncIterator[bytes], options: dict[bytes, bytes], spool: UploadSpool
) -> tuple[dict[str, str], str | None]:
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidInput("multipart/form-data without a boundary", code="bad_multipart")
    collector = _MultipartCollector()
    parser = MultipartParser(boundary, collector.callbacks())
    file_chunks: list[bytes] = collector.file_chunks
    async for chunk in chunks:
        try:
            parser.write(chunk)
        except Exception as exc:  # python-multipart raises its own error types
            if isinstance(exc, InvalidInput | PayloadTooLarge):
                raise
            raise InvalidInput(f"malformed multipart body: {exc}", code="bad_multipart") from exc
        for piece in file_chunks:
            await spool.write(piece)
        file_chunks.clear()
    parser.finalize()
    if not collector.ended:
        raise InvalidInput("multipart body ended before its closing boundary", code="bad_multipart")
    if not collector.saw_file:
        raise InvalidInput("multipart upload has no 'file' part", code="missing_file")
    return collector.fields, collector.filename


class _MultipartCollector:
    """Turns python-multipart callbacks into one file stream plus a few small text fields."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_chunks: list[bytes] = []
        self.saw_file = False
        self.ended = False
        self._part = _Part()
        self._header_field = b""
        self._header_value = b""

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._add_header("_header_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._add_header("_header_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._finish,
        }

    def _begin(self) -> None:
        self._part = _Part()

    def _add_header(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def _header_end(self) -> None:
        if self._header_field.lower() == b"content-disposition":
            _, params = parse_options_header(self._header_value)
            name = params.get(b"name")
            filename = params.get(b"filename")
            self._part.name = name.decode("utf-8", "replace") if name is not None else None
            self._part.filename = filename.decode("utf-8", "replace") if filename else None
            self._start_part()
        self._header_field = self._header_value = b""

    def _start_part(self) -> None:
        name = self._part.name
        if name == "file":
            if self.saw_file:
                raise InvalidInput(
                    "multipart upload has more than one 'file' part", code="bad_multipart"
                )
            self.saw_file = True
            self.filename = self._part.filename
        elif name not in ALLOWED_FIELDS:
            raise InvalidInput(
                f"unexpected multipart part {name!r}; allowed: file, "
                + ", ".join(sorted(ALLOWED_FIELDS)),
                code="bad_multipart",
            )
        elif name in self.fields or len(self.fields) >= MAX_FIELDS:
            raise InvalidInput(f"multipart field {name!r} given twice", code="bad_multipart")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part.name == "file":
            self.file_chunks.append(bytes(data[start:end]))
            return
        self._part.size += end - start
        if self._part.size > MAX_FIELD_BYTES:
            raise PayloadTooLarge(
                f"multipart field {self._part.name!r} is larger than {MAX_FIELD_BYTES} bytes",
                code="field_too_large",
            )
        self._part.data.append(bytes(data[start:end]))

    def _end(self) -> None:
        if self._part.name is None:
            raise InvalidInput("multipart part without a name", code="bad_multipart")
        if self._part.name != "file":
            raw = b"".join(self._part.data)
            try:
                self.fields[self._part.name] = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"multipart field {self._part.name!r} is not UTF-8", code="bad_multipart"
                ) from exc

    def _finish(self) -> None:
        self.ended = True
