"""Loader child: the only code that reads an untrusted torch.save pickle.

Started by app.ingest.torch_pickle.run_child, under rlimits and a scrubbed environment, as

    python -P -s -m app.ingest.torch_child SRC OUT_DIR OPTIONS_JSON

It loads SRC with `torch.load(..., weights_only=True)` (never anything weaker), classifies what it
got, writes model.safetensors (plus optimizer.safetensors and training.json for a training
checkpoint) into OUT_DIR, and prints exactly one JSON line on the original stdout:
{"ok": true, "kind", "files", "tied"} or {"ok": false, "code", "message"}.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import resource
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

import torch

from app.ingest.torch_convert import convert, write_outputs
from app.ingest.torch_graph import check_object_graph
from app.ingest.torch_pickle import GO_BYTE, ChildOptions
from app.ingest.torch_rejection import Rejection, truncate
from app.ingest.torch_training import carried_configs
from app.lifeline import exit_with_parent


def main(argv: list[str]) -> int:
    exit_with_parent(signal.SIGKILL)
    result_stream = _claim_stdout()
    if len(argv) != 3:
        print("usage: python -m app.ingest.torch_child SRC OUT_DIR OPTIONS_JSON", file=sys.stderr)
        return 2
    if sys.stdin.buffer.read(1) != GO_BYTE:  # the parent sets our rlimits, then says go
        raise SystemExit("torch_child must be started by app.ingest.torch_pickle (no go byte)")
    _require_rlimits()
    torch.set_num_threads(1)
    src, out_dir, options = Path(argv[0]), Path(argv[1]), ChildOptions.from_json(argv[2])
    try:
        result = run(src, out_dir, options)
    except Rejection as rejection:
        result = {"ok": False, "code": rejection.code, "message": rejection.message}
    except MemoryError:
        result = {"ok": False, "code": "torch_resource_limit", "message": _out_of_memory_message()}
    result_stream.write(json.dumps(result) + "\n")
    result_stream.flush()
    return 0


def _claim_stdout() -> TextIO:
    """Keep the real stdout for the result line; anything else printing goes to stderr."""
    result_stream = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    return result_stream


def _require_rlimits() -> None:
    """Refuse to touch untrusted bytes if started without the parent's limits."""
    for kind in (resource.RLIMIT_AS, resource.RLIMIT_CPU):
        if resource.getrlimit(kind)[0] == resource.RLIM_INFINITY:
            raise SystemExit("torch_child must be started by app.ingest.torch_pickle (no rlimits)")


def run(src: Path, out_dir: Path, options: ChildOptions) -> dict[str, Any]:
    checkpoint = load_weights_only(src)
    check_object_graph(checkpoint, options.max_pickled_objects)
    try:
        conversion = convert(checkpoint, options)
        files = write_outputs(conversion, out_dir)
    except (Rejection, MemoryError):
        raise
    except Exception as exc:  # a bug or an exotic object: still only this upload fails
        if _is_allocation_failure(exc):
            raise MemoryError from exc
        raise Rejection(
            "torch_load_failed", f"Could not convert the loaded checkpoint: {_describe(exc)}"
        ) from exc
    return {
        "ok": True,
        "kind": conversion.kind,
        "files": files,
        "tied": conversion.tied,
        "configs": carried_configs(checkpoint),
    }


def load_weights_only(src: Path) -> Any:
    """torch.load with weights_only=True; a file object avoids torch's by-extension dispatch."""
    try:
        with src.open("rb") as stream:
            return torch.load(stream, weights_only=True, map_location="cpu", mmap=False)
    except pickle.UnpicklingError as exc:
        raise Rejection(
            "torch_unsafe_pickle",
            f"torch.load(weights_only=True) refused this checkpoint: {weights_only_reason(exc)}. "
            "A checkpoint may contain only tensors, dicts, lists and numbers; re-save just the "
            "state_dict (and optimizer state) with torch.save.",
        ) from None
    except MemoryError:
        raise
    except Exception as exc:
        if _is_allocation_failure(exc):
            raise MemoryError from exc
        raise Rejection(
            "torch_load_failed",
            f"torch could not load this checkpoint: {_describe(exc)}{_load_failure_hint(exc)}",
        ) from None


def weights_only_reason(exc: BaseException) -> str:
    """Pull the unpickler's own reason (e.g. the refused global) out of torch's long message."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    text = text.split("Check the documentation of torch.load")[0]
    marker = "WeightsUnpickler error:"
    if marker in text and text.split(marker, 1)[1].strip():
        reason = text.split(marker, 1)[1]
    else:
        paragraphs = [part.strip() for part in text.split("\n\n") if part.strip()]
        reason = paragraphs[-1] if paragraphs else text
    reason = reason.split(" Please use `torch.serialization")[0]
    return truncate(" ".join(reason.split()).rstrip("."), 500)


def _is_allocation_failure(exc: BaseException) -> bool:
    """torch reports a failed allocation under RLIMIT_AS as RuntimeError, not MemoryError."""
    text = str(exc)
    return "can't allocate memory" in text or "Cannot allocate memory" in text


def _out_of_memory_message() -> str:
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    limit_text = "" if limit == resource.RLIM_INFINITY else f" of {limit} bytes (address space)"
    return f"Loading the checkpoint needs more memory than the loader's limit{limit_text}."


def _load_failure_hint(exc: BaseException) -> str:
    text = str(exc)
    if "resize storage" in text or "does not match expected size" in text:
        return " (a tensor claims more data than its stored bytes hold: the file is corrupt)"
    if "out of bounds for storage" in text:
        return " (a tensor reaches outside its storage: the file is corrupt)"
    return ""


def _describe(exc: BaseException) -> str:
    return truncate(f"{type(exc).__name__}: {exc}", 600)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
