"""integrity: every stored blob re-hashed and compared with the sha256 recorded at upload."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app.errors import RejectedCheckpoint
from app.hashing import sha256_file
from app.ingest.safetensors_format import hash_safetensors_file
from app.verify.base import CheckContext, CheckResult, verdict

NAME = "integrity"


def run(ctx: CheckContext) -> CheckResult:
    view = ctx.subject.view
    expected = {view.sha256: "(upload)"} | {f.sha256: f.path for f in view.files}
    # hashlib releases the GIL, so two threads hash two blobs at once.
    with ThreadPoolExecutor(max_workers=2) as pool:
        actual = dict(
            zip(
                expected,
                pool.map(_hash_or_missing, [ctx.blob_path(s) for s in expected]),
                strict=True,
            )
        )
    mismatched = sorted(expected[s] for s, got in actual.items() if got != s and got != "missing")
    missing = sorted(expected[s] for s, got in actual.items() if got == "missing")
    sizes = {view.sha256: view.size_bytes} | {f.sha256: f.size for f in view.files}
    nbytes = sum(sizes.values())  # each distinct blob is hashed once
    ok = not mismatched and not missing
    changed = _changed_tensors(ctx, mismatched)
    detail = (
        f"all {len(expected)} stored blobs match their recorded sha256"
        if ok
        else f"stored bytes changed since upload: {', '.join(mismatched + missing)}"
        + "".join(f"; in {path}: {what}" for path, what in _describe_changes(changed).items())
    )
    return verdict(
        NAME,
        ok,
        metrics={
            "blobs_checked": len(expected),
            "bytes_hashed": nbytes,
            "mismatched": mismatched,
            "missing": missing,
            "changed_tensors": changed,
        },
        thresholds={"mismatched": 0, "missing": 0},
        detail=detail,
    )


def _hash_or_missing(path: Path) -> str:
    try:
        return sha256_file(path)
    except FileNotFoundError:
        return "missing"


def _changed_tensors(ctx: CheckContext, mismatched: list[str]) -> dict[str, list[str] | str]:
    """For each changed weight file: the tensors whose bytes changed (by the ingest hasher),
    or why the file can no longer be read as safetensors."""
    recorded: dict[str, dict[str, str]] = {}
    for tensor in ctx.subject.tensors:
        recorded.setdefault(tensor.file, {})[tensor.name] = tensor.sha256
    files = {f.path: f.sha256 for f in ctx.subject.view.files}
    changed: dict[str, list[str] | str] = {}
    for path in mismatched:
        if path in recorded and path in files:
            try:
                _, _, digests = hash_safetensors_file(ctx.blob_path(files[path]), ctx.limits)
            except RejectedCheckpoint as exc:
                changed[path] = f"no longer a valid safetensors file ({exc.message})"
                continue
            changed[path] = sorted(
                name for name, sha in recorded[path].items() if digests.get(name) != sha
            )
    return changed


def _describe_changes(changed: dict[str, list[str] | str]) -> dict[str, str]:
    return {
        path: what if isinstance(what, str) else "tensors " + ", ".join(what[:5])
        for path, what in changed.items()
        if what
    }
