"""integrity: every stored blob re-hashed and compared with the sha256 recorded at upload."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app.hashing import sha256_file
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
    detail = (
        f"all {len(expected)} stored blobs match their recorded sha256"
        if ok
        else f"stored bytes changed since upload: {', '.join(mismatched + missing)}"
    )
    return verdict(
        NAME,
        ok,
        metrics={
            "blobs_checked": len(expected),
            "bytes_hashed": nbytes,
            "mismatched": mismatched,
            "missing": missing,
        },
        thresholds={"mismatched": 0, "missing": 0},
        detail=detail,
    )


def _hash_or_missing(path: Path) -> str:
    try:
        return sha256_file(path)
    except FileNotFoundError:
        return "missing"
