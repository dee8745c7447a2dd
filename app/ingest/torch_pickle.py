"""Convert an untrusted `torch.save` archive into safetensors without ever trusting its pickle.

The parent side (this module) never unpickles anything. It checks the zip layout, scans data.pkl's
GLOBAL opcodes statically (a cheap first filter), then runs `app.ingest.torch_child` in a separate
process under memory / CPU / file-size rlimits, a wall-clock timeout and a scrubbed environment.
The child is the only place `torch.load(..., weights_only=True)` runs; it writes model.safetensors
(and optimizer.safetensors + training.json for training checkpoints) into `out_dir` and reports on
stdout. Whatever the upload does to the child (crash, OOM, timeout) becomes a RejectedCheckpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import pickletools
import resource
import signal
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.errors import RejectedCheckpoint, ServiceUnavailable
from app.ingest.model_config import CHECKPOINT_CONFIG_KEYS
from app.ingest.types import IngestLimits
from app.lifeline import parent_env

logger = logging.getLogger(__name__)

CHILD_MODULE = "app.ingest.torch_child"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINING_FILE = "training.json"
OUTPUT_FILES = (MODEL_FILE, OPTIMIZER_FILE, TRAINING_FILE)

# Codes the child may report; anything else it says is treated as a plain load failure.
CHILD_ERROR_CODES = frozenset(
    {
        "torch_unsafe_pickle",
        "torch_load_failed",
        "torch_resource_limit",
        "torch_no_state_dict",
        "torch_no_tensors",
        "torch_unsupported_tensor",
    }
)

# Pickle protocol 2 header followed by torch's legacy magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_ZIP_LOCAL_HEADER = b"PK\x03\x04"

# Non-torch globals that torch's weights-only unpickler allows by default (torch 2.13). Anything
# outside `torch.*` and this set is refused here before a child is spawned; a test pins this set
# to torch's own allowlist so an upgrade cannot silently diverge.
WEIGHTS_ONLY_NON_TORCH_GLOBALS = frozenset(
    {
        "_codecs.encode",
        "builtins.bytearray",
        "builtins.complex",
        "builtins.set",
        "collections.Counter",
        "collections.OrderedDict",
    }
)
_STATIC_SCAN_MAX_BYTES = 8 << 20

_MIN_OUTPUT_BUDGET = 64 << 20
_OUTPUT_EXPANSION_FACTOR = 4
_JSON_FILE_SLACK = 32 << 20
_CPU_HARD_LIMIT_GRACE_SECONDS = 5
_WALL_CLOCK_GRACE_SECONDS = 60
_MAX_RESULT_LINE_BYTES = 1 << 20
_MAX_TRAINING_JSON_BYTES = 256 << 20
# What the parent writes on the child's stdin once the child's rlimits are set.
GO_BYTE = b"\x01"

_MEMORY_FAILURE_MARKERS = (
    "MemoryError",
    "bad_alloc",
    "Cannot allocate memory",
    "failed to map segment",
    "can't allocate memory",
    "out of memory",
)
_RESOURCE_SIGNALS = {
    signal.SIGKILL: "it was killed (memory or CPU limit)",
    signal.SIGXCPU: "it ran out of CPU time",
    signal.SIGXFSZ: "its output grew past the file-size limit",
}


@dataclass(frozen=True)
class TorchConversion:
    """Result of converting one torch.save archive; `files` are absolute paths in out_dir."""

    kind: Literal["state_dict", "training"]
    files: list[Path]
    tied: dict[str, str]
    training: dict[str, Any] | None
    # config key -> the JSON-safe values the child read there (untrusted: validate before use)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class ChildOptions:
    """Caps the child enforces itself (the rlimits are the backstop); passed as JSON on argv."""

    max_tensors: int
    max_output_bytes: int
    max_header_bytes: int
    max_pickled_objects: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ChildOptions:
        values = json.loads(text)
        return cls(**{name: int(values[name]) for name in cls.__dataclass_fields__})


def convert_torch_checkpoint(src: Path, out_dir: Path, limits: IngestLimits) -> TorchConversion:
    """Convert `src` (torch.save zip output) into safetensors files inside `out_dir`.

    Raises RejectedCheckpoint (422) with a specific `code` for anything that is not a loadable,
    weights-only torch checkpoint; on failure no output file is left behind in `out_dir`.
    """
    src = src.resolve()
    check_torch_archive(src, limits)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_dir = out_dir.resolve()
    remove_outputs(out_dir)  # a stale file from an earlier run must not look like ours
    options = child_options_for(src.stat().st_size, limits)
    try:
        result = run_child(src, out_dir, options, limits)
        return _conversion_from_result(result, out_dir)
    except BaseException:
        remove_outputs(out_dir)
        raise


def child_options_for(upload_bytes: int, limits: IngestLimits) -> ChildOptions:
    """Output may not exceed a few times the upload: stride-0 or overlapping views can otherwise
    expand a tiny file into gigabytes when made contiguous."""
    budget = max(upload_bytes * _OUTPUT_EXPANSION_FACTOR, _MIN_OUTPUT_BUDGET)
    return ChildOptions(
        max_tensors=limits.max_tensors,
        max_output_bytes=min(budget, limits.max_uncompressed_bytes),
        max_header_bytes=limits.max_header_bytes,
        max_pickled_objects=20 * limits.max_tensors + 10_000,
    )


def remove_outputs(out_dir: Path) -> None:
    for name in OUTPUT_FILES:
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()


# --- parent-side checks (no unpickling) ------------------------------------------------------


def check_torch_archive(src: Path, limits: IngestLimits) -> None:
    """Reject everything that is not a plain torch.save zip archive, before spawning a child."""
    with src.open("rb") as stream:
        head = stream.read(len(_LEGACY_TORCH_MAGIC))
    if head.startswith(b"\x80"):
        raise legacy_pickle_error(head)
    if not head.startswith(_ZIP_LOCAL_HEADER):
        raise RejectedCheckpoint(
            "This file is not a torch.save archive: torch's format is a zip file starting with "
            "'PK', but this file starts with other bytes. Upload the file written by torch.save "
            "(or a .safetensors file through the safetensors upload).",
            code="torch_not_zip",
        )
    try:
        with zipfile.ZipFile(src) as archive:
            root = _check_zip_layout(archive.infolist(), limits)
            data_pkl = archive.read(f"{root}/data.pkl")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise RejectedCheckpoint(
            f"This file starts like a zip archive but cannot be read as one ({exc}). "
            "It is truncated or corrupt; upload the complete file written by torch.save.",
            code="torch_not_zip",
        ) from None
    scan_pickle_globals(data_pkl)


def looks_like_pickle(head: bytes) -> bool:
    """Protocol 2+ pickles (every torch.save before the zip format) start with PROTO."""
    return len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5


def legacy_pickle_error(head: bytes) -> RejectedCheckpoint:
    if head.startswith(_LEGACY_TORCH_MAGIC):
        what = "torch's legacy serialization (_use_new_zipfile_serialization=False, torch < 1.6)"
    else:
        what = "a raw Python pickle, not a torch.save archive"
    return RejectedCheckpoint(
        f"This file is {what}. Only torch's zip format is accepted: load it where you trust it "
        "and re-save it with a current torch, e.g. torch.save(model.state_dict(), 'model.pt').",
        code="torch_legacy_format",
    )


def _check_zip_layout(entries: list[zipfile.ZipInfo], limits: IngestLimits) -> str:
    """Return the archive's root folder after checking it is laid out like torch.save output."""
    if not entries:
        raise _bad_archive("the zip archive is empty")
    if len(entries) > limits.max_zip_entries:
        raise _bad_archive(f"it has {len(entries)} entries (the limit is {limits.max_zip_entries})")
    names = [entry.filename for entry in entries]
    if len(set(names)) != len(names):
        raise _bad_archive("it contains the same entry name twice")
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or any("/" not in name for name in names):
        raise _bad_archive("torch.save puts every entry under one top-level folder; this does not")
    root = roots.pop()
    if f"{root}/constants.pkl" in names or any(n.startswith(f"{root}/code/") for n in names):
        raise RejectedCheckpoint(
            "This is a TorchScript archive (torch.jit.save), which contains code. Upload the "
            "weights instead: torch.save(model.state_dict(), 'model.pt').",
            code="torch_torchscript",
        )
    if f"{root}/data.pkl" not in names:
        raise _bad_archive(f"there is no {root}/data.pkl entry")
    for entry in entries:
        if entry.flag_bits & 0x1:
            raise _bad_archive(f"entry {entry.filename} is encrypted")
        if entry.compress_type != zipfile.ZIP_STORED:
            raise _bad_archive(
                f"entry {entry.filename} is compressed; torch.save stores entries uncompressed"
            )
    total = sum(entry.file_size for entry in entries)
    if total > limits.max_uncompressed_bytes:
        raise RejectedCheckpoint(
            f"The archive holds {total} bytes, more than the limit of "
            f"{limits.max_uncompressed_bytes} bytes.",
            code="torch_resource_limit",
        )
    data_pkl = next(entry for entry in entries if entry.filename == f"{root}/data.pkl")
    if data_pkl.file_size > limits.max_header_bytes:
        raise RejectedCheckpoint(
            f"{root}/data.pkl is {data_pkl.file_size} bytes, more than the limit of "
            f"{limits.max_header_bytes} bytes for a checkpoint's pickled structure.",
            code="torch_resource_limit",
        )
    return root


def _bad_archive(reason: str) -> RejectedCheckpoint:
    return RejectedCheckpoint(
        f"This zip archive is not a torch.save checkpoint: {reason}.", code="torch_bad_archive"
    )


def scan_pickle_globals(data_pkl: bytes) -> None:
    """Refuse, without executing anything, a pickle that names a global weights-only forbids.

    This only parses opcodes (pickletools.genops); it is a fast first filter, not the guard: the
    child's torch.load(weights_only=True) is authoritative, so anything this scan cannot decide
    (torch.* globals, malformed pickles, STACK_GLOBAL) is left to the child.
    """
    if len(data_pkl) > _STATIC_SCAN_MAX_BYTES:
        return
    try:
        for opcode, argument, _position in pickletools.genops(io.BytesIO(data_pkl)):
            if opcode.name in ("GLOBAL", "INST") and isinstance(argument, str):
                module, _, name = argument.partition(" ")
                _check_global(module, name)
    except (ValueError, EOFError, UnicodeDecodeError, IndexError, KeyError):
        return


def _check_global(module: str, name: str) -> None:
    if module == "torch" or module.startswith("torch."):
        return
    if f"{module}.{name}" in WEIGHTS_ONLY_NON_TORCH_GLOBALS:
        return
    raise RejectedCheckpoint(
        f"The checkpoint's pickle references the global {module}.{name}, which weights-only "
        "loading refuses: unpickling it could run arbitrary code. A checkpoint may contain only "
        "tensors, dicts, lists and numbers; re-save just the state_dict (and optimizer state).",
        code="torch_unsafe_pickle",
    )


# --- the child process -----------------------------------------------------------------------


class LoaderSlots:
    """At most `count` sandboxed loaders run at once in this process (each may hold gigabytes
    and a core for minutes); a caller waits up to `wait_seconds` for a free one."""

    def __init__(self, count: int, wait_seconds: float) -> None:
        self.count = count
        self.wait_seconds = wait_seconds
        self._free = threading.BoundedSemaphore(count)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if not self._free.acquire(timeout=self.wait_seconds):
            raise self._busy()
        try:
            yield
        finally:
            self._free.release()

    def _busy(self) -> ServiceUnavailable:
        retry_after = max(1, math.ceil(self.wait_seconds))
        return ServiceUnavailable(
            f"All {self.count} torch checkpoint loaders (CKPT_MAX_TORCH_LOADERS) stayed busy for "
            f"{self.wait_seconds:g} s (CKPT_TORCH_LOADER_WAIT_SECONDS); nothing was stored. "
            f"Retry the upload in {retry_after} s.",
            code="torch_loaders_busy",
            headers={"Retry-After": str(retry_after)},
        )


_loader_slots = LoaderSlots(2, 60.0)


def configure_loader_slots(count: int, wait_seconds: float) -> None:
    """Set this process's loader cap (the API's lifespan does, from its settings)."""
    global _loader_slots
    _loader_slots = LoaderSlots(count, wait_seconds)


def run_child(
    src: Path, out_dir: Path, options: ChildOptions, limits: IngestLimits
) -> dict[str, Any]:
    """Run the loader child and return its JSON result, or raise RejectedCheckpoint (or
    ServiceUnavailable when every loader slot stays busy)."""
    with _loader_slots.held():
        return _run_limited_child(src, out_dir, options, limits)


def _run_limited_child(
    src: Path, out_dir: Path, options: ChildOptions, limits: IngestLimits
) -> dict[str, Any]:
    command = [sys.executable, "-P", "-s", "-m", CHILD_MODULE, str(src), str(out_dir)]
    command.append(options.to_json())
    file_size_limit = options.max_output_bytes + options.max_header_bytes + _JSON_FILE_SLACK
    wall_seconds = limits.torch_cpu_seconds + _WALL_CLOCK_GRACE_SECONDS
    # No preexec_fn (unsafe in a threaded server): the child waits for GO_BYTE on stdin before
    # it opens anything, and the limits are set on it from here in the meantime.
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=out_dir,
        env=child_environment(),
        start_new_session=True,
    )
    try:
        limit_resources(
            process.pid, limits.torch_memory_bytes, limits.torch_cpu_seconds, file_size_limit
        )
        stdout, stderr = process.communicate(GO_BYTE, timeout=wall_seconds)
    except subprocess.TimeoutExpired:
        _kill_process_group(process)
        process.communicate()
        raise RejectedCheckpoint(
            f"Loading the checkpoint took longer than {wall_seconds} seconds and was stopped.",
            code="torch_resource_limit",
        ) from None
    except BaseException:
        _kill_process_group(process)
        process.communicate()
        raise
    return _interpret_child_exit(process.returncode, stdout, stderr)


def child_environment() -> dict[str, str]:
    """A minimal environment: nothing from the server (secrets, TORCH_FORCE_* switches) leaks in."""
    project_root = Path(__file__).resolve().parents[2]
    return {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(project_root),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "PYTHONIOENCODING": "utf-8",
        "LC_ALL": "C.UTF-8",
        # One thread keeps the address-space footprint (per-thread stacks, malloc arenas) small
        # and makes RLIMIT_CPU mean roughly wall time.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
        **parent_env(),  # the child is SIGKILLed if the server dies while it loads
    }


def limit_resources(pid: int, memory_bytes: int, cpu_seconds: int, file_bytes: int) -> None:
    """Lower the child's rlimits (prlimit) while it waits for GO_BYTE, before it reads the upload.

    A child that already died is left to the exit status communicate() reports."""
    with contextlib.suppress(ProcessLookupError):
        _lower_limit(pid, resource.RLIMIT_AS, memory_bytes, memory_bytes)
        cpu_hard = cpu_seconds + _CPU_HARD_LIMIT_GRACE_SECONDS
        _lower_limit(pid, resource.RLIMIT_CPU, cpu_seconds, cpu_hard)
        _lower_limit(pid, resource.RLIMIT_FSIZE, file_bytes, file_bytes)
        _lower_limit(pid, resource.RLIMIT_CORE, 0, 0)


def _lower_limit(pid: int, kind: int, soft: int, hard: int) -> None:
    _, current_hard = resource.prlimit(pid, kind)
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.prlimit(pid, kind, (soft, hard))


def _kill_process_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _interpret_child_exit(returncode: int, stdout: bytes, stderr: bytes) -> dict[str, Any]:
    result = _parse_result_line(stdout)
    if returncode == 0 and result is not None and result.get("ok") is True:
        return result
    error_tail = stderr[-4000:].decode("utf-8", "replace")
    if result is not None and result.get("ok") is False:
        code = result.get("code")
        message = result.get("message")
        if code in CHILD_ERROR_CODES and isinstance(message, str):
            raise RejectedCheckpoint(message, code=str(code))
    logger.warning("torch loader child failed (exit %s): %s", returncode, error_tail)
    if returncode < 0 and -returncode in _RESOURCE_SIGNALS:
        reason = _RESOURCE_SIGNALS[signal.Signals(-returncode)]
        raise RejectedCheckpoint(
            f"Loading the checkpoint exceeded the loader's resource limits: {reason}.",
            code="torch_resource_limit",
        )
    if any(marker in error_tail for marker in _MEMORY_FAILURE_MARKERS):
        raise RejectedCheckpoint(
            "Loading the checkpoint ran out of memory under the loader's memory limit.",
            code="torch_resource_limit",
        )
    if returncode < 0:
        how = f"was killed by signal {-returncode}"
    else:
        how = f"exited with status {returncode}" if returncode else "returned no result"
    raise RejectedCheckpoint(
        f"torch could not load this checkpoint: the loader process {how}. "
        "The file is probably corrupt.",
        code="torch_load_failed",
    )


def _parse_result_line(stdout: bytes) -> dict[str, Any] | None:
    lines = stdout.strip().splitlines()
    if not lines or len(lines[-1]) > _MAX_RESULT_LINE_BYTES:
        return None
    try:
        parsed = json.loads(lines[-1])
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _conversion_from_result(result: dict[str, Any], out_dir: Path) -> TorchConversion:
    """Check the child's claims against what is actually in out_dir."""
    kind = result.get("kind")
    names = result.get("files")
    tied = result.get("tied")
    if kind not in ("state_dict", "training") or not isinstance(names, list):
        raise _protocol_error("malformed result")
    if not isinstance(tied, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in tied.items()
    ):
        raise _protocol_error("malformed tied map")
    expected = [MODEL_FILE] if kind == "state_dict" else [MODEL_FILE, TRAINING_FILE]
    if MODEL_FILE not in names or not set(expected) <= set(names):
        raise _protocol_error("missing output files")
    if not set(names) <= set(OUTPUT_FILES) or not all((out_dir / n).is_file() for n in names):
        raise _protocol_error("unexpected or absent output files")
    training = _read_training_summary(out_dir / TRAINING_FILE) if kind == "training" else None
    files = [out_dir / name for name in OUTPUT_FILES if name in names]
    configs = _carried_configs(result.get("configs", {}))
    return TorchConversion(
        kind=kind, files=files, tied=dict(tied), training=training, configs=configs
    )


def _carried_configs(value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict) or not all(
        key in CHECKPOINT_CONFIG_KEYS and isinstance(config, dict) for key, config in value.items()
    ):
        raise _protocol_error("malformed configs")
    return {str(key): dict(config) for key, config in value.items()}


def _read_training_summary(path: Path) -> dict[str, Any]:
    if path.stat().st_size > _MAX_TRAINING_JSON_BYTES:
        raise _protocol_error("training summary too large")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:  # UnicodeDecodeError is a ValueError too
        raise _protocol_error("training summary is not JSON") from None
    if not isinstance(summary, dict):
        raise _protocol_error("training summary is not an object")
    return summary


def _protocol_error(what: str) -> RejectedCheckpoint:
    logger.error("torch loader child broke its output contract: %s", what)
    return RejectedCheckpoint(
        f"torch could not load this checkpoint: the loader produced inconsistent output ({what}).",
        code="torch_load_failed",
    )
