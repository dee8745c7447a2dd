"""round_trip: what comes back out equals what went in.

1. For archives, every stored member file equals the archive's member byte for byte.
2. Every tensor reloaded through the model's own loader (`from_pretrained`) equals the tensor
   stored at ingest: per-tensor and total ε = ‖θ_load − θ_orig‖₂, expected exactly 0. Without a
   known architecture the stored tensors are re-read with safetensors and their bytes re-hashed.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
from pathlib import Path
from typing import Any

import torch

from app.ingest.archive import scan_zip
from app.ingest.types import IngestLimits
from app.verify.base import CheckContext, CheckResult, verdict

NAME = "round_trip"
_CHUNK = 4 << 20


def run(ctx: CheckContext) -> CheckResult:
    metrics: dict[str, Any] = {}
    problems: list[str] = []
    if ctx.subject.view.format == "hf_zip":
        differing = _archive_members_differ(ctx)
        metrics["archive_members_differing"] = differing
        problems += [f"member {name} differs from the stored file" for name in differing]
    if ctx.subject.model_unavailable_reason is None:
        tensor_metrics, tensor_problems = _compare_reloaded_tensors(ctx)
    else:
        tensor_metrics, tensor_problems = _rehash_stored_tensors(ctx)
    metrics |= tensor_metrics
    problems += tensor_problems
    detail = "; ".join(problems[:5]) if problems else _success_detail(metrics)
    return verdict(
        NAME,
        not problems,
        metrics=metrics,
        thresholds={"total_epsilon": 0.0, "archive_members_differing": 0},
        detail=detail,
    )


def _success_detail(metrics: dict[str, Any]) -> str:
    count = metrics.get("tensors_compared", 0)
    return f"all {count} tensors reload bit-identical (ε = 0)" + (
        " and every archive member equals its stored file"
        if "archive_members_differing" in metrics
        else ""
    )


def _archive_members_differ(ctx: CheckContext) -> list[str]:
    view = ctx.subject.view
    upload = ctx.blob_path(view.sha256)
    stored = {f.path: f for f in view.files if f.origin == "member"}
    plan = scan_zip(upload, IngestLimits())
    differing = sorted(set(stored) ^ {m.path for m in plan.members})
    with zipfile.ZipFile(upload) as archive:
        for member in plan.members:
            if member.path in stored and not _same_bytes(
                archive, member.name_in_zip, ctx.blob_path(stored[member.path].sha256)
            ):
                differing.append(member.path)
    return differing


def _same_bytes(archive: zipfile.ZipFile, name: str, stored: Path) -> bool:
    with archive.open(name) as member, stored.open("rb") as blob:
        while True:
            left, right = member.read(_CHUNK), blob.read(_CHUNK)
            if left != right:
                return False
            if not left:
                return True


@torch.inference_mode()
def _compare_reloaded_tensors(ctx: CheckContext) -> tuple[dict[str, Any], list[str]]:
    original = ctx.subject.state_dict()
    reloaded = ctx.subject.model().state_dict()
    per_tensor: dict[str, float] = {}
    problems: list[str] = []
    for name, stored in original.items():
        loaded = reloaded.get(name)
        if loaded is None:
            problems.append(f"{name} is not in the reloaded model")
        elif loaded.shape != stored.shape or loaded.dtype != stored.dtype:
            problems.append(f"{name} reloads as {loaded.dtype}{list(loaded.shape)}")
        elif torch.equal(loaded.cpu(), stored):
            per_tensor[name] = 0.0  # the usual case: skip building a difference tensor
        else:
            per_tensor[name] = float(torch.linalg.vector_norm((loaded.cpu() - stored).double()))
    nonzero = {name: eps for name, eps in per_tensor.items() if eps != 0.0}
    problems += [f"{name} changed on reload (ε = {eps:.3g})" for name, eps in nonzero.items()]
    total = math.sqrt(sum(eps * eps for eps in per_tensor.values()))
    metrics = {
        "loader": "from_pretrained",
        "tensors_compared": len(per_tensor),
        "total_epsilon": total,
        "max_tensor_epsilon": max(per_tensor.values(), default=0.0),
        "nonzero_epsilon_tensors": nonzero,
    }
    return metrics, problems


def _rehash_stored_tensors(ctx: CheckContext) -> tuple[dict[str, Any], list[str]]:
    recorded = {t.name: t.sha256 for t in ctx.subject.tensors}
    loaded = ctx.subject.state_dict()
    changed = sorted(
        name for name, tensor in loaded.items() if _tensor_sha256(tensor) != recorded.get(name)
    )
    missing = sorted(set(recorded) - set(loaded))
    problems = [f"{name} differs from ingest" for name in changed]
    problems += [f"{name} is missing" for name in missing]
    metrics = {
        "loader": "safetensors",
        "tensors_compared": len(loaded),
        "total_epsilon": 0.0 if not changed else None,
        "changed_tensors": changed,
        "missing_tensors": missing,
    }
    return metrics, problems


def _tensor_sha256(tensor: torch.Tensor) -> str:
    raw = tensor.contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
    return hashlib.sha256(raw).hexdigest()
