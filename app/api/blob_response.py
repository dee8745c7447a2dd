"""A stored blob sent to a client: the local file as is, or streamed from the object store.

Both carry the same headers (Content-Length, ETag = sha256, Content-Disposition,
Accept-Ranges) and answer a single `Range: bytes=...` with 206; a multi-range request gets the
whole blob, which HTTP allows.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from app.errors import InvalidInput, RangeNotSatisfiable
from app.services.checkpoints import StoredBlob
from app.storage.base import BlobStorage

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def blob_response(blob: StoredBlob, store: BlobStorage, request: Request) -> Response:
    headers = {"ETag": f'"{blob.sha256}"', "X-Checkpoint-SHA256": blob.sha256}
    if blob.path is not None:
        return FileResponse(
            blob.path,
            media_type="application/octet-stream",
            filename=blob.filename,
            headers=headers,
        )
    headers |= {"Accept-Ranges": "bytes", "Content-Disposition": _disposition(blob.filename)}
    wanted = _wanted_range(request, blob)
    if wanted is None:
        headers["Content-Length"] = str(blob.size)
        return _stream(store, blob, 0, blob.size, 200, headers)
    start, end = wanted
    headers["Content-Length"] = str(end - start)
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
    return _stream(store, blob, start, end, 206, headers)


def _stream(
    store: BlobStorage, blob: StoredBlob, start: int, end: int, status: int, headers: dict[str, str]
) -> StreamingResponse:
    chunks = store.read(blob.sha256, start, end) if end > start else iter(())
    return StreamingResponse(
        chunks, status_code=status, media_type="application/octet-stream", headers=headers
    )


def _wanted_range(request: Request, blob: StoredBlob) -> tuple[int, int] | None:
    """(start, end exclusive) of a single satisfiable range, None for the whole blob."""
    header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if header is None or "," in header or (if_range and if_range != f'"{blob.sha256}"'):
        return None
    match = _RANGE.match(header.strip())
    if match is None or match.groups() == ("", ""):
        raise InvalidInput(f"malformed Range header {header!r}", code="invalid_range")
    first, last = match.groups()
    if not first:  # a suffix: the last N bytes
        start, end = max(blob.size - int(last), 0), blob.size
    else:
        start, end = int(first), min(int(last) + 1, blob.size) if last else blob.size
    if start >= blob.size or start >= end:
        raise RangeNotSatisfiable(
            f"range {header!r} is outside the blob's {blob.size} bytes",
            headers={"Content-Range": f"bytes */{blob.size}"},
        )
    return start, end


def _disposition(filename: str) -> str:
    quoted = quote(filename)
    if quoted == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename*=utf-8''{quoted}"
