"""Strict parsing and single-pass hashing of untrusted safetensors files.

Layout: an 8-byte little-endian u64 N, N bytes of UTF-8 JSON header, then the data buffer. The
header maps tensor names to `{"dtype", "shape", "data_offsets"}` (offsets relative to the data
buffer) plus an optional `"__metadata__": {str: str}`. Every tensor's bytes must tile the data
buffer exactly: no gaps, no overlaps, nothing after the last tensor.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from app.errors import RejectedCheckpoint
from app.ingest.types import IngestLimits

# Byte-sized dtypes only: the sub-byte ones (F4, F6_E2M3, F6_E3M2) cannot be sized per element.
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E5M2FNUZ": 1,
    "F8_E4M3FNUZ": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}

DTYPE_TORCH_NAME: dict[str, str] = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E8M0": "float8_e8m0fnu",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "I64": "int64",
    "U64": "uint64",
    "F64": "float64",
    "C64": "complex64",
}

METADATA_KEY = "__metadata__"
MAX_NAME_LENGTH = 1024
MAX_RANK = 64
_INT64_MAX = 2**63 - 1
_LENGTH_PREFIX = struct.Struct("<Q")
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class TensorSpan:
    """One tensor's entry; `begin`/`end` are byte offsets relative to the start of the data."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header; `tensors` is sorted by `begin`, so the spans tile the data buffer."""

    header_len: int
    data_start: int
    tensors: tuple[TensorSpan, ...]
    metadata: dict[str, str]

    @property
    def data_len(self) -> int:
        return self.tensors[-1].end if self.tensors else 0

    @property
    def file_size(self) -> int:
        return self.data_start + self.data_len


def _reject(code: str, message: str) -> NoReturn:
    raise RejectedCheckpoint(message, code=f"safetensors_{code}")


def _quote(name: str) -> str:
    """Hostile names can be huge; keep error messages readable."""
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


def declared_header_len(prefix: bytes, file_size: int | None, limits: IngestLimits) -> int:
    """Returns N from the 8-byte prefix, checked against the limits and the file size."""
    if len(prefix) < _LENGTH_PREFIX.size:
        shown = len(prefix) if file_size is None else file_size
        _reject("truncated", f"file is {shown} bytes; a safetensors file starts with 8 bytes")
    (header_len,) = _LENGTH_PREFIX.unpack_from(prefix)
    if header_len == 0:
        _reject("bad_header", "header length is 0; the JSON header is missing")
    if header_len > limits.max_header_bytes:
        _reject(
            "header_too_large",
            f"header declares {header_len} bytes; the limit is {limits.max_header_bytes}",
        )
    if file_size is not None and 8 + header_len > file_size:
        _reject(
            "truncated",
            f"header declares {header_len} bytes but the file has only {file_size - 8} after "
            "the length prefix",
        )
    return int(header_len)


def parse_header_bytes(
    prefix: bytes, file_size: int | None, limits: IngestLimits
) -> SafetensorsHeader:
    """Validates the first 8+N bytes of a safetensors file (more bytes are ignored).

    With `file_size` known, also checks that the tensors cover the data buffer exactly.
    """
    header_len = declared_header_len(prefix, file_size, limits)
    raw = prefix[8 : 8 + header_len]
    if len(raw) < header_len:
        _reject("truncated", f"header declares {header_len} bytes but only {len(raw)} arrived")
    document = _decode_json(raw)
    metadata = _parse_metadata(document.pop(METADATA_KEY, None))
    if len(document) > limits.max_tensors:
        _reject(
            "too_many_tensors",
            f"header lists {len(document)} tensors; the limit is {limits.max_tensors}",
        )
    spans = sorted(
        (_parse_entry(name, entry) for name, entry in document.items()),
        key=lambda span: (span.begin, span.end),
    )
    _check_tiling(spans)
    header = SafetensorsHeader(header_len, 8 + header_len, tuple(spans), metadata)
    if file_size is not None:
        _check_coverage(header, file_size)
    return header


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                _reject("duplicate_key", f"header lists the key {_quote(key)} twice")
            seen.add(key)
    return result


def _reject_constant(token: str) -> NoReturn:
    _reject("bad_json", f"header contains {token}, which is not valid JSON")


def _decode_json(raw: bytes) -> dict[str, Any]:
    if not raw.startswith(b"{"):
        _reject("bad_header", "header must be a JSON object starting with '{'")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        _reject("bad_json", f"header is not valid UTF-8 (byte {error.start})")
    try:
        document = json.loads(
            text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant
        )
    except RecursionError:
        _reject("bad_json", "header JSON is nested too deeply")
    except ValueError as error:
        _reject("bad_json", f"header is not valid JSON: {error}")
    if not isinstance(document, dict):
        _reject("bad_header", "header must be a JSON object")
    return document


def _is_utf8_encodable(text: str) -> bool:
    """JSON escapes can produce lone surrogates, which no database or response can carry."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_clean_text(text: str) -> bool:
    return _CONTROL_CHARACTER.search(text) is None and _is_utf8_encodable(text)


def _parse_metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        _reject("bad_metadata", f"{METADATA_KEY} must be an object mapping strings to strings")
    for key, item in value.items():
        if not _is_clean_text(key):
            _reject("bad_metadata", f"{METADATA_KEY} key {_quote(key)} has invalid characters")
        if not isinstance(item, str):
            _reject("bad_metadata", f"{METADATA_KEY}[{_quote(key)}] must be a string")
        if "\0" in item or not _is_utf8_encodable(item):
            _reject("bad_metadata", f"{METADATA_KEY}[{_quote(key)}] is not valid text")
    return value


def _check_name(name: str) -> None:
    if not name:
        _reject("bad_name", "a tensor has an empty name")
    if len(name) > MAX_NAME_LENGTH:
        _reject("bad_name", f"tensor name {_quote(name)} is longer than {MAX_NAME_LENGTH}")
    if not _is_clean_text(name):
        _reject("bad_name", f"tensor name {_quote(name)} contains control or invalid characters")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_shape(name: str, shape: object) -> tuple[int, ...]:
    if not isinstance(shape, list):
        _reject("bad_shape", f"tensor {_quote(name)}: shape must be a list of integers")
    if len(shape) > MAX_RANK:
        _reject("bad_shape", f"tensor {_quote(name)}: {len(shape)} dimensions; at most {MAX_RANK}")
    numel = 1
    for dim in shape:
        if not _is_int(dim) or dim < 0:
            _reject("bad_shape", f"tensor {_quote(name)}: shape entry {dim!r} is not an int >= 0")
        numel *= dim
        if dim > _INT64_MAX or numel > _INT64_MAX:
            _reject("bad_shape", f"tensor {_quote(name)}: shape {shape} overflows 64 bits")
    return tuple(shape)


def _parse_offsets(name: str, offsets: object) -> tuple[int, int]:
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
        _reject("bad_offsets", f"tensor {_quote(name)}: data_offsets must be two integers")
    begin, end = offsets
    if not 0 <= begin <= end <= _INT64_MAX:
        _reject("bad_offsets", f"tensor {_quote(name)}: data_offsets {offsets} are out of order")
    return begin, end


def _parse_entry(name: str, entry: object) -> TensorSpan:
    _check_name(name)
    if not isinstance(entry, dict) or entry.keys() != _ENTRY_KEYS:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        _reject(
            "bad_header",
            f"tensor {_quote(name)}: entry must have exactly dtype, shape and data_offsets "
            f"(got {keys})",
        )
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        _reject("bad_dtype", f"tensor {_quote(name)}: unsupported dtype {dtype!r:.40}")
    shape = _parse_shape(name, entry["shape"])
    begin, end = _parse_offsets(name, entry["data_offsets"])
    span = TensorSpan(name, dtype, shape, begin, end)
    expected = span.numel * DTYPE_SIZES[dtype]
    if span.nbytes != expected:
        _reject(
            "bad_offsets",
            f"tensor {_quote(name)}: shape {list(shape)} of {dtype} needs {expected} bytes but "
            f"data_offsets span {span.nbytes}",
        )
    return span


def _check_tiling(spans: list[TensorSpan]) -> None:
    """Sorted spans must follow each other with no gap and no overlap, starting at 0."""
    position = 0
    previous: TensorSpan | None = None
    for span in spans:
        if span.begin < position and previous is not None:
            _reject(
                "bad_offsets",
                f"tensor {_quote(span.name)} overlaps tensor {_quote(previous.name)} "
                f"(bytes {span.begin}..{position})",
            )
        if span.begin > position:
            _reject(
                "bad_offsets",
                f"data bytes {position}..{span.begin} before tensor {_quote(span.name)} "
                "belong to no tensor",
            )
        position = span.end
        previous = span


def _check_coverage(header: SafetensorsHeader, file_size: int) -> None:
    available = file_size - header.data_start
    if header.data_len < available:
        _reject(
            "trailing_bytes",
            f"{available - header.data_len} bytes follow the last tensor's data",
        )
    if header.data_len > available:
        last = header.tensors[-1]
        _reject(
            "truncated",
            f"tensor {_quote(last.name)} ends at data byte {last.end} but the file holds only "
            f"{available} data bytes",
        )


def read_header(path: str | os.PathLike[str], limits: IngestLimits) -> SafetensorsHeader:
    """Reads and validates only the 8+N header bytes, never the tensor data."""
    with open(path, "rb") as file:
        file_size = os.fstat(file.fileno()).st_size
        prefix = file.read(8)
        header_len = declared_header_len(prefix, file_size, limits)
        return parse_header_bytes(prefix + file.read(header_len), file_size, limits)


class SafetensorsStreamHasher:
    """Validates the header and sha256-hashes every tensor while the file's bytes stream by.

    Feed the whole file in order with `update` (any chunk sizes), then call `finish`. Tensor
    data is never buffered; only the header (at most `limits.max_header_bytes`) is.
    """

    def __init__(self, total_size: int | None, limits: IngestLimits) -> None:
        self._total_size = total_size
        self._limits = limits
        self._pending_header = bytearray()
        self._header_bytes_needed = 8
        self._header: SafetensorsHeader | None = None
        self._spans: list[TensorSpan] = []
        self._span_index = 0
        self._tensor_hash = hashlib.sha256()
        self._position = 0
        self._digests: dict[str, str] = {}

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        view = memoryview(chunk).cast("B")
        if self._header is None:
            view = self._take_header_bytes(view)
        if len(view):
            self._hash_data(view)

    def finish(self) -> tuple[SafetensorsHeader, dict[str, str]]:
        if self._header is None:
            _reject(
                "truncated",
                f"the file ended after {len(self._pending_header)} bytes, inside the header",
            )
        if self._position < self._header.data_len:
            _reject(
                "truncated",
                f"the file ended {self._header.data_len - self._position} bytes short of the "
                "end of the last tensor",
            )
        return self._header, {span.name: self._digests[span.name] for span in self._header.tensors}

    def _take_header_bytes(self, view: memoryview) -> memoryview:
        while self._header is None and len(view):
            missing = self._header_bytes_needed - len(self._pending_header)
            self._pending_header += view[:missing]
            view = view[missing:]
            if len(self._pending_header) < self._header_bytes_needed:
                break
            if self._header_bytes_needed == 8:
                prefix = bytes(self._pending_header)
                header_len = declared_header_len(prefix, self._total_size, self._limits)
                self._header_bytes_needed += header_len
            else:
                self._start_data(bytes(self._pending_header))
        return view

    def _start_data(self, prefix: bytes) -> None:
        header = parse_header_bytes(prefix, self._total_size, self._limits)
        self._header = header
        self._pending_header = bytearray()
        self._spans = [span for span in header.tensors if span.nbytes]
        self._digests = {span.name: _EMPTY_SHA256 for span in header.tensors if not span.nbytes}

    def _hash_data(self, view: memoryview) -> None:
        assert self._header is not None
        excess = self._position + len(view) - self._header.data_len
        if excess > 0:
            _reject("trailing_bytes", f"at least {excess} bytes follow the last tensor's data")
        offset = 0
        while offset < len(view):
            span = self._spans[self._span_index]
            take = min(len(view) - offset, span.end - self._position)
            self._tensor_hash.update(view[offset : offset + take])
            offset += take
            self._position += take
            if self._position == span.end:
                self._digests[span.name] = self._tensor_hash.hexdigest()
                self._tensor_hash = hashlib.sha256()
                self._span_index += 1


class BlockWorker:
    """Runs `consume(block)` for every submitted block, in order, on a helper thread.

    hashlib, file writes and zlib release the GIL on large buffers, so moving one of a pass's
    consumers (say the whole-file sha256) to a thread lets it overlap the others on a second
    core. Blocks are consumed later, so they must be immutable `bytes`. `offload=False` runs
    `consume` inline (cheaper for small inputs). Use as a context manager so the thread always
    ends, and call `finish()` before using what `consume` produced.
    """

    def __init__(
        self, consume: Callable[[bytes], object], *, offload: bool = True, max_pending: int = 4
    ) -> None:
        self._consume = consume
        self._blocks: queue.Queue[bytes | None] = queue.Queue(max_pending)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if offload:
            self._thread = threading.Thread(target=self._run, name="block-worker", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while (block := self._blocks.get()) is not None:
            if self._error is not None:
                continue  # keep draining so the producer never blocks on a full queue
            try:
                self._consume(block)
            except BaseException as error:
                self._error = error

    def submit(self, block: bytes) -> None:
        if self._thread is None:
            self._consume(block)
            return
        if self._error is not None:
            raise self._error
        self._blocks.put(block)

    def finish(self) -> None:
        """Waits until every block is consumed; re-raises the first error `consume` raised."""
        self._stop()
        if self._error is not None:
            raise self._error

    def _stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._blocks.put(None)
            self._thread.join()

    def __enter__(self) -> BlockWorker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()


def hash_safetensors_file(
    path: str | os.PathLike[str], limits: IngestLimits, chunk: int = 4 << 20
) -> tuple[str, SafetensorsHeader, dict[str, str]]:
    """One read pass: (sha256 of the whole file, validated header, tensor name -> sha256)."""
    file_path = Path(path)
    tensors = SafetensorsStreamHasher(file_path.stat().st_size, limits)
    file_hash = hashlib.sha256()
    with open(file_path, "rb", buffering=0) as file, BlockWorker(file_hash.update) as worker:
        while block := file.read(chunk):
            worker.submit(block)
            tensors.update(block)
        worker.finish()
    header, tensor_digests = tensors.finish()
    return file_hash.hexdigest(), header, tensor_digests
