"""Builders for hostile uploads, generated at test time (no binaries are committed).

Zips are built with zipfile and then changed by byte surgery on their records; safetensors files
are written byte by byte; pickles are hand-written opcodes or objects whose `__reduce__` would
run code (each payload creates a canary file, so a test can prove it never ran).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Offsets of fields inside zip records (APPNOTE 4.3.7, 4.3.12, 4.3.16).
LOCAL_FLAGS, LOCAL_METHOD, LOCAL_NAME = 6, 8, 30
CENTRAL_FLAGS, CENTRAL_METHOD, CENTRAL_CRC, CENTRAL_COMPRESSED, CENTRAL_SIZE = 8, 10, 16, 20, 24
CENTRAL_EXTERNAL_ATTR, CENTRAL_OFFSET = 38, 42
END_DISK, END_COUNT_HERE, END_COUNT, END_CD_SIZE, END_CD_OFFSET = 4, 8, 10, 12, 16


# --- multipart bodies --------------------------------------------------------------------------

BOUNDARY = "hostileboundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def part(name: str, data: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"


def multipart(*parts: bytes, closing: bool = True) -> bytes:
    return b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if closing else b"")


# --- zip archives ------------------------------------------------------------------------------


def zip_bytes(
    entries: dict[str, bytes] | list[tuple[str, bytes]],
    compression: int = zipfile.ZIP_STORED,
) -> bytearray:
    buffer = io.BytesIO()
    items = entries.items() if isinstance(entries, dict) else entries
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in items:
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return bytearray(buffer.getvalue())


def end_record(data: bytes | bytearray) -> int:
    return data.rindex(b"PK\x05\x06")


def central_records(data: bytes | bytearray) -> list[int]:
    """Offsets of each central directory record, walked from the end record."""
    end = end_record(data)
    count, _, offset = struct.unpack_from("<HLL", data, end + END_COUNT)
    positions = []
    for _ in range(count):
        assert data[offset : offset + 4] == b"PK\x01\x02"
        positions.append(offset)
        name, extra, comment = struct.unpack_from("<3H", data, offset + 28)
        offset += 46 + name + extra + comment
    return positions


def local_header(data: bytes | bytearray, index: int) -> int:
    (offset,) = struct.unpack_from("<L", data, central_records(data)[index] + CENTRAL_OFFSET)
    return int(offset)


def patch(data: bytearray, offset: int, fmt: str, value: int) -> bytearray:
    struct.pack_into(fmt, data, offset, value)
    return data


def patch_central(data: bytearray, index: int, field: int, fmt: str, value: int) -> bytearray:
    return patch(data, central_records(data)[index] + field, fmt, value)


def with_method(data: bytearray, index: int, method: int) -> bytearray:
    """Claim another compression method (bzip2 12, lzma 14, AES 99) for entry `index`."""
    patch(data, local_header(data, index) + LOCAL_METHOD, "<H", method)
    return patch_central(data, index, CENTRAL_METHOD, "<H", method)


def with_flags(data: bytearray, index: int, flags: int) -> bytearray:
    patch(data, local_header(data, index) + LOCAL_FLAGS, "<H", flags)
    return patch_central(data, index, CENTRAL_FLAGS, "<H", flags)


def with_unix_mode(data: bytearray, index: int, mode: int) -> bytearray:
    """Unix file type and permission bits live in the high half of external_attr."""
    return patch_central(data, index, CENTRAL_EXTERNAL_ATTR, "<L", mode << 16)


def sharing_bytes(data: bytearray) -> bytearray:
    """Point entry 1's central record at entry 0's local header (an overlapping-entry bomb)."""
    return patch_central(data, 1, CENTRAL_OFFSET, "<L", local_header(data, 0))


def with_bad_crc(data: bytearray, index: int) -> bytearray:
    (crc,) = struct.unpack_from("<L", data, central_records(data)[index] + CENTRAL_CRC)
    patch(data, local_header(data, index) + 14, "<L", crc ^ 0xFFFF)
    return patch_central(data, index, CENTRAL_CRC, "<L", crc ^ 0xFFFF)


# --- safetensors ---------------------------------------------------------------------------------


def raw_file(header: dict[str, Any] | bytes, data: bytes = b"") -> bytes:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def entry(dtype: Any, shape: list[Any], begin: Any, end: Any) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# --- pickles -------------------------------------------------------------------------------------


class Reduce:
    """Pickles as `func(*args)`: what a hostile checkpoint runs under unrestricted unpickling."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


def hostile_payloads(canary: Path) -> dict[str, Any]:
    touch = f"open({str(canary)!r}, 'w').close()"
    return {
        "os.system": Reduce(os.system, f"touch {canary}"),
        "eval": Reduce(eval, touch),
        "exec": Reduce(exec, touch),
        "subprocess.Popen": Reduce(subprocess.Popen, ["touch", str(canary)]),
    }


def getattr_builtins_pickle(canary: Path) -> bytes:
    """getattr(__import__('os'), 'system')('touch canary'), hand-written in protocol 0."""
    command = f"touch {canary}".encode()
    return b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V" + command + b"\ntR."


def dup_bomb(copies: int = 10_000) -> bytes:
    """{"a": [...]} followed by DUP opcodes (which weights-only unpickling does not support)."""
    return b"\x80\x02}X\x01\x00\x00\x00a]" + b"2" * copies + b"s."


def memo_bomb(levels: int = 250) -> bytes:
    """{"bomb": (L0, ..., Ln)} where L[i] = [L[i-1], L[i-1]]: 2**levels paths in a tiny pickle."""
    body = b"]q\x00"
    for level in range(1, levels + 1):
        body += b"]q" + bytes([level]) + b"(h" + bytes([level - 1]) + b"h" + bytes([level - 1])
        body += b"e"
    return b"\x80\x02}X\x04\x00\x00\x00bomb(" + body + b"ts."


def torch_bytes(obj: Any, **save_options: Any) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer, **save_options)
    return buffer.getvalue()


def rewrite_zip_bytes(data: bytes, edit: Callable[[str, bytes], bytes]) -> bytes:
    """Copy a torch.save archive, passing each member's bytes through `edit`."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as old, zipfile.ZipFile(out, "w") as new:
        for info in old.infolist():
            new.writestr(info.filename, edit(info.filename, old.read(info.filename)))
    return out.getvalue()


def with_data_pkl_bytes(data_pkl: bytes) -> bytes:
    """A torch.save archive whose data.pkl is replaced by hand-written pickle bytes."""
    import torch

    base = torch_bytes({"w": torch.zeros(2)})
    return rewrite_zip_bytes(base, lambda n, d: data_pkl if n.endswith("/data.pkl") else d)


def rewrite_zip(src: Path, dst: Path, edit: Callable[[str, bytes], bytes]) -> Path:
    dst.write_bytes(rewrite_zip_bytes(src.read_bytes(), edit))
    return dst


def with_data_pkl(tmp_path: Path, name: str, data_pkl: bytes) -> Path:
    path = tmp_path / f"{name}.pt"
    path.write_bytes(with_data_pkl_bytes(data_pkl))
    return path


def oversized_tensor_pickle() -> bytes:
    """A tensor of shape (200,) over a storage that holds 7 float32 elements."""
    import torch

    base = torch_bytes({"w": torch.arange(7, dtype=torch.float32)})

    def claim_200_elements(name: str, data: bytes) -> bytes:
        if not name.endswith("/data.pkl"):
            return data
        # BINPERSID, storage offset 0, shape (7,) -> shape (200,)
        assert data.count(b"QK\x00K\x07\x85") == 1
        return data.replace(b"QK\x00K\x07\x85", b"QK\x00K\xc8\x85")

    return rewrite_zip_bytes(base, claim_200_elements)


def torchscript_bytes() -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buffer)
    return buffer.getvalue()
