"""Upload throughput of a GPT-2 124M-shaped checkpoint against the plain tools doing the same work.

    .venv/bin/python bench/ingest.py [--work DIR] [--repeat N]

Floors, measured in the same run on the same files. For the raw safetensors path the floor does
the server's work the way the server does it, with plain hashlib and file writes: one read of the
file in 4 MiB buffers, the whole-file sha256 on one thread while another writes each buffer and
hashes every tensor's bytes as they go by, then fsync and rename. For the zips it is plain
`unzip`. The server is a real `ckpt serve` process; its resident memory is sampled while each
upload runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import gpt2_124m_folder, markdown_table, running_server, timed


class RssSampler:
    """Peak resident memory of a process while a block runs, sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / 1e6


def upload(url: str, path: Path, name: str) -> dict[str, object]:
    with path.open("rb") as handle:
        response = httpx.post(
            f"{url}/v1/checkpoints",
            content=handle,
            params={"name": name, "filename": path.name},
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(path.stat().st_size),
            },
            timeout=600,
        )
    response.raise_for_status()
    body: dict[str, object] = response.json()
    return body


FLOOR_BUFFER = 4 << 20  # the server's spool buffer (app/ingest/spool.py BUFFER_BYTES)


def tensor_spans(path: Path) -> list[tuple[int, int]]:
    """Absolute (start, end) byte offsets of every tensor, read from the safetensors header."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    base = 8 + length
    return sorted(
        (base + entry["data_offsets"][0], base + entry["data_offsets"][1])
        for key, entry in header.items()
        if key != "__metadata__"
    )


class TensorHasher:
    """sha256 of each tensor's bytes, fed the file's buffers in order."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        self.spans, self.digests, self.offset = spans, [hashlib.sha256() for _ in spans], 0

    def update(self, buffer: bytes) -> None:
        view, start, end = memoryview(buffer), self.offset, self.offset + len(buffer)
        for (span_start, span_end), digest in zip(self.spans, self.digests, strict=True):
            low, high = max(span_start, start), min(span_end, end)
            if low < high:
                digest.update(view[low - start : high - start])
        self.offset = end


def floor_single_pass(path: Path, scratch: Path) -> None:
    """One read; file sha256 on one thread, write + per-tensor sha256 on another; fsync."""
    tensors = TensorHasher(tensor_spans(path))
    whole = hashlib.sha256()
    temp, dest = scratch / "landing.tmp", scratch / "landed"
    with (
        ThreadPoolExecutor(1) as hash_pool,
        ThreadPoolExecutor(1) as write_pool,
        path.open("rb") as source,
        temp.open("xb") as out,
    ):

        def write(buffer: bytes) -> None:
            out.write(buffer)
            tensors.update(buffer)

        in_flight: list[tuple[Future[None], Future[None]]] = []
        while buffer := source.read(FLOOR_BUFFER):
            if len(in_flight) >= 2:  # the server keeps two buffers in flight too
                for future in in_flight.pop(0):
                    future.result()
            in_flight.append(
                (hash_pool.submit(whole.update, buffer), write_pool.submit(write, buffer))
            )
        for pair in in_flight:
            for future in pair:
                future.result()
        out.flush()
        os.fsync(out.fileno())
    temp.rename(dest)
    dest.unlink()


def floor_unzip(path: Path, scratch: Path) -> None:
    out = scratch / "unzipped"
    subprocess.run(["unzip", "-q", "-o", str(path), "-d", str(out)], check=True)
    shutil.rmtree(out)


def make_zips(folder: Path, work: Path) -> dict[str, Path]:
    zips = {"zip (stored)": work / "stored.zip", "zip (deflated)": work / "deflated.zip"}
    for label, method in (
        ("zip (stored)", zipfile.ZIP_STORED),
        ("zip (deflated)", zipfile.ZIP_DEFLATED),
    ):
        if zips[label].is_file():
            continue
        with zipfile.ZipFile(zips[label], "w", compression=method, compresslevel=6) as archive:
            for file in sorted(folder.iterdir()):
                archive.write(file, f"gpt2/{file.name}")
    return zips


def header_parameter_count_ms(path: Path) -> tuple[float, int]:
    from app.ingest.safetensors_format import read_header
    from app.ingest.types import IngestLimits

    def count() -> int:
        return sum(span.numel for span in read_header(path, IngestLimits()).tensors)

    seconds, total = timed(count, repeat=20)
    return seconds * 1000, total


def measure(url: str, pid: int, label: str, path: Path, scratch: Path, repeat: int) -> list[str]:
    raw = label.endswith("(raw)")
    floor = partial(floor_single_pass if raw else floor_unzip, path, scratch)
    floor_s, _ = timed(floor, repeat=repeat)
    best, growth = float("inf"), 0.0
    for attempt in range(repeat):
        with RssSampler(pid) as rss:
            seconds, _ = timed(partial(upload, url, path, f"bench-{path.stem}-{attempt}"))
        best, growth = min(best, seconds), max(growth, rss.growth_mb)
    size_mb = path.stat().st_size / 1e6
    floor_name = "single-pass hashlib + write + fsync" if raw else "unzip"
    return [
        label,
        f"{size_mb:.0f}",
        f"{best:.2f}",
        f"{size_mb / best:.0f}",
        f"{floor_name}: {floor_s:.2f} s, {size_mb / floor_s:.0f} MB/s",
        f"{floor_s / best:.2f}x",
        f"{growth:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="reuse generated files here")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    folder = gpt2_124m_folder(work / "gpt2")
    inputs = {"safetensors (raw)": folder / "model.safetensors", **make_zips(folder, work)}
    scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=work))

    # No embedded worker: verifying each upload would compete with the next one for the CPU.
    with running_server(work / "data", CKPT_EMBEDDED_WORKER="false") as (url, process):
        upload(url, inputs["safetensors (raw)"], "warmup")  # imports, first-touch allocations
        rows = [
            measure(url, process.pid, label, path, scratch, args.repeat)
            for label, path in inputs.items()
        ]
    header_ms, parameters = header_parameter_count_ms(inputs["safetensors (raw)"])
    print(
        markdown_table(
            [
                "upload",
                "MB",
                "seconds",
                "MB/s",
                "floor (same run)",
                "vs floor",
                "server RSS growth MB",
            ],
            rows,
        )
    )
    print(f"\nparameter count from the safetensors header: {parameters:,} in {header_ms:.2f} ms")
    shutil.rmtree(scratch, ignore_errors=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
