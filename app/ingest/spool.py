"""Receive an upload onto disk in one pass, hashing while writing, off the event loop.

The event loop only gathers network chunks into large buffers; two single-thread executors do
the rest in parallel (hashlib releases the GIL): one computes the upload's sha256, the other
writes the buffer and, for a safetensors upload, hashes every tensor as its bytes go by. A
500 MB upload is therefore never held in memory and never re-read to hash it.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from app import faults
from app.errors import PayloadTooLarge
from app.ingest.safetensors_format import SafetensorsHeader, SafetensorsStreamHasher
from app.ingest.types import IngestLimits
from app.storage.blobs import out_of_space_is_507

BUFFER_BYTES = 4 << 20
HEAD_BYTES = 64
_MAX_IN_FLIGHT = 2


def looks_like_safetensors(head: bytes) -> bool:
    return len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 0


def looks_like_zip(head: bytes) -> bool:
    return head[:4] == b"PK\x03\x04"


@dataclass
class SpooledUpload:
    path: Path
    size: int
    sha256: str
    head: bytes
    tensor_hashes: tuple[SafetensorsHeader, dict[str, str]] | None


class UploadSpool:
    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        limits: IngestLimits,
        expected_size: int | None = None,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.limits = limits
        self.expected_size = expected_size
        self._file: BinaryIO = open(path, "xb")  # noqa: SIM115 - closed in finish/abort
        self._sha = hashlib.sha256()
        self._tensors: SafetensorsStreamHasher | None = None
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._size = 0
        self._head = b""
        self._hash_pool = ThreadPoolExecutor(1, thread_name_prefix="spool-hash")
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="spool-write")
        self._in_flight: list[tuple[Future[None], Future[None]]] = []

    @property
    def received(self) -> int:
        return self._size

    async def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._size += len(chunk)
        if self._size > self.max_bytes:
            raise PayloadTooLarge(
                f"upload exceeds the limit of {self.max_bytes} bytes (CKPT_MAX_UPLOAD_BYTES)",
                code="upload_too_large",
            )
        self._pending.append(chunk)
        self._pending_len += len(chunk)
        if self._pending_len >= BUFFER_BYTES:
            await self._flush()

    async def finish(self) -> SpooledUpload:
        await self._flush()
        await self._drain(0)
        with out_of_space_is_507("while receiving the upload"):
            self._close()  # flushes what the file object still buffers
        tensor_hashes = self._tensors.finish() if self._tensors else None
        return SpooledUpload(
            self.path, self._size, self._sha.hexdigest(), self._head, tensor_hashes
        )

    def abort(self) -> None:
        for pair in self._in_flight:
            for future in pair:
                future.cancel()
        self._close(wait=True)
        self.path.unlink(missing_ok=True)

    async def _flush(self) -> None:
        if not self._pending:
            return
        buffer = b"".join(self._pending)
        self._pending, self._pending_len = [], 0
        if not self._head:
            self._start(buffer)
        await self._drain(_MAX_IN_FLIGHT - 1)
        self._in_flight.append(
            (
                self._hash_pool.submit(self._sha.update, buffer),
                self._write_pool.submit(self._write_buffer, buffer),
            )
        )

    def _start(self, first: bytes) -> None:
        self._head = first[:HEAD_BYTES]
        if looks_like_safetensors(self._head):
            self._tensors = SafetensorsStreamHasher(self.expected_size, self.limits)

    def _write_buffer(self, buffer: bytes) -> None:
        with out_of_space_is_507("while receiving the upload"):
            faults.before_write("spool", self._file, buffer)
            self._file.write(buffer)
        if self._tensors is not None:
            self._tensors.update(buffer)

    async def _drain(self, keep: int) -> None:
        while len(self._in_flight) > keep:
            sha_done, write_done = self._in_flight.pop(0)
            await asyncio.wrap_future(sha_done)
            await asyncio.wrap_future(write_done)

    def _close(self, wait: bool = True) -> None:
        self._hash_pool.shutdown(wait=wait)
        self._write_pool.shutdown(wait=wait)
        self._file.close()
