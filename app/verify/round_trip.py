"""round_trip: what comes back out equals what went in.

1. For archives, every stored member file equals the archive's member byte for byte.
2. Every tensor reloaded through the model's own loader (`from_pretrained`; safetensors without a
   known architecture) hashes to the sha256 recorded at ingest from the upload's bytes. A byte
   changed in a stored file since then shows here.
3. ε = ‖θ_load − θ_orig‖₂ per tensor and in total, expected exactly 0: a tensor whose sha256
   equals the upload's has ε = 0 by construction; a changed one is measured against a copy
   independent of the stored file, the weights member inside the stored upload archive. A bare
   safetensors upload *is* its stored file and a pickle was converted at ingest, so a changed
   tensor there has no copy to subtract from: ε is then reported as not computed, never as 0.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes

from app.errors import AppError
from app.ingest.archive_scan import scan_zip
from app.ingest.types import TensorRecord
from app.verify.base import CheckContext, CheckResult, verdict
from app.verify.stored_names import as_stored

NAME = "round_trip"
_CHUNK = 4 << 20


def run(ctx: CheckContext) -> CheckResult:
    metrics: dict[str, Any] = {}
    problems: list[str] = []
    if ctx.subject.view.format == "hf_zip":
        differing = _archive_members_differ(ctx)
        metrics["archive_members_differing"] = differing
        problems += [f"member {name} differs from the stored file" for name in differing]
    loader = "from_pretrained" if ctx.subject.model_unavailable_reason is None else "safetensors"
    metrics["loader"] = loader
    try:
        reloaded = _reload(ctx, loader)
    except Exception as exc:  # a stored file that no longer loads is this check's finding
        problems.insert(0, f"the stored files do not reload ({loader}): {_describe(exc)}")
        return _result(metrics, problems)
    comparison = _compare_with_ingest(ctx.subject.tensors, reloaded)
    metrics |= comparison.metrics()
    problems += comparison.problems()
    epsilon_metrics, epsilon_problems = _epsilon(ctx, reloaded, comparison.mismatched)
    metrics |= epsilon_metrics
    problems += epsilon_problems
    return _result(metrics, problems)


def _result(metrics: dict[str, Any], problems: list[str]) -> CheckResult:
    return verdict(
        NAME,
        not problems,
        metrics=metrics,
        thresholds={"hash_mismatched": 0, "total_epsilon": 0.0, "archive_members_differing": 0},
        detail="; ".join(problems[:5]) if problems else _success_detail(metrics),
    )


def _success_detail(metrics: dict[str, Any]) -> str:
    count = metrics.get("tensors_compared", 0)
    text = f"all {count} tensors reload with the sha256 recorded at ingest"
    if metrics.get("total_epsilon") is not None:
        text += f" and equal the upload's own ({metrics['epsilon_source']}): ε = 0"
    else:
        text += f"; ε not computed: {metrics['epsilon_unavailable']}"
    if "archive_members_differing" in metrics:
        text += "; every archive member equals its stored file"
    return text


def _describe(exc: Exception) -> str:
    return exc.message if isinstance(exc, AppError) else f"{type(exc).__name__}: {exc}"


def _reload(ctx: CheckContext, loader: str) -> dict[str, torch.Tensor]:
    if loader == "from_pretrained":
        model = ctx.subject.model()
        return as_stored(model, model.state_dict())
    return ctx.subject.state_dict()


# --- 1. archive members ------------------------------------------------------------------------


def _archive_members_differ(ctx: CheckContext) -> list[str]:
    view = ctx.subject.view
    upload = ctx.blob_path(view.sha256)
    stored = {f.path: f for f in view.files if f.origin == "member"}
    plan = scan_zip(upload, ctx.limits)
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


# --- 2. hashes recorded at ingest --------------------------------------------------------------


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's bytes as safetensors lays them out (row-major, little-endian): what
    ingest's SafetensorsStreamHasher records per tensor, hashed in place without a copy."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().data).hexdigest()


@dataclass
class _IngestComparison:
    compared: int = 0
    mismatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    reshaped: dict[str, str] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        return {
            "tensors_compared": self.compared,
            "hash_mismatched": self.mismatched,
            "missing_tensors": self.missing,
            "reshaped_tensors": self.reshaped,
        }

    def problems(self) -> list[str]:
        return (
            [f"{name} differs from the sha256 recorded at ingest" for name in self.mismatched]
            + [f"{name} is not in the reloaded model" for name in self.missing]
            + [f"{name} {change}" for name, change in self.reshaped.items()]
        )


@torch.inference_mode()
def _compare_with_ingest(
    recorded: tuple[TensorRecord, ...], reloaded: dict[str, torch.Tensor]
) -> _IngestComparison:
    comparison = _IngestComparison()
    for entry in sorted(recorded, key=lambda t: t.name):
        tensor = reloaded.get(entry.name)
        if tensor is None:
            comparison.missing.append(entry.name)
            continue
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
            comparison.reshaped[entry.name] = (
                f"reloads as {dtype}{list(tensor.shape)}, {entry.dtype}{list(entry.shape)} recorded"
            )
            continue
        comparison.compared += 1
        if tensor_sha256(tensor) != entry.sha256:
            comparison.mismatched.append(entry.name)
    return comparison


# --- 3. ε against an independent copy ----------------------------------------------------------


def _epsilon(
    ctx: CheckContext, reloaded: dict[str, torch.Tensor], changed: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """ε of every tensor. Equal sha256 to the upload's bytes means equal bytes, so ε = 0 without
    arithmetic; only a changed tensor needs the upload's own values to measure how far it moved."""
    if not changed:
        return {
            "epsilon_source": "sha256 equal to the upload's bytes",
            "epsilon_unavailable": None,
            "total_epsilon": 0.0,
            "max_tensor_epsilon": 0.0,
            "nonzero_epsilon_tensors": {},
        }, []
    source, unavailable = _independent_source(ctx)
    if source is None:
        return {
            "epsilon_source": None,
            "epsilon_unavailable": unavailable,
            "total_epsilon": None,
        }, []
    wanted, per_tensor = set(changed), {}
    for originals in _archive_weights(ctx, source):
        for name, original in originals.items():
            loaded = reloaded.get(name)
            if name in wanted and loaded is not None and loaded.shape == original.shape:
                per_tensor[name] = _distance(loaded, original)
    nonzero = {name: eps for name, eps in per_tensor.items() if eps != 0.0}
    metrics = {
        "epsilon_source": "upload archive member " + ", ".join(sorted(source.values())),
        "epsilon_unavailable": None,
        "total_epsilon": math.sqrt(sum(eps * eps for eps in per_tensor.values())),
        "max_tensor_epsilon": max(per_tensor.values(), default=0.0),
        "nonzero_epsilon_tensors": nonzero,
    }
    problems = [f"{name} changed since upload (ε = {eps:.3g})" for name, eps in nonzero.items()]
    return metrics, problems


def _independent_source(ctx: CheckContext) -> tuple[dict[str, str] | None, str]:
    """Stored weight file -> its member in the upload archive; else why there is none."""
    view = ctx.subject.view
    weight_files = sorted({t.file for t in ctx.subject.tensors})
    if view.format == "safetensors":
        return None, "the upload is the stored file itself, so no independent copy exists"
    if view.format == "torch":
        return None, "the stored weights were converted from the uploaded pickle at ingest"
    members = {f.path for f in view.files if f.origin == "member"}
    converted = [name for name in weight_files if name not in members]
    if converted:
        return None, f"{converted[0]} was converted from a pickle in the archive at ingest"
    plan = scan_zip(ctx.blob_path(view.sha256), ctx.limits)
    in_zip = {m.path: m.name_in_zip for m in plan.members}
    absent = [name for name in weight_files if name not in in_zip]
    if absent:
        return None, f"the upload archive has no member {absent[0]}"
    return {name: in_zip[name] for name in weight_files}, ""


def _archive_weights(
    ctx: CheckContext, source: dict[str, str]
) -> Iterator[dict[str, torch.Tensor]]:
    """The weight files as the upload archive holds them, one file at a time."""
    with zipfile.ZipFile(ctx.blob_path(ctx.subject.view.sha256)) as archive:
        for member in source.values():
            yield load_safetensors_bytes(archive.read(member))


def _distance(loaded: torch.Tensor, original: torch.Tensor) -> float:
    loaded = loaded.detach().cpu()
    if loaded.dtype == original.dtype and torch.equal(loaded, original):
        return 0.0  # the usual case: no difference tensor built
    return float(torch.linalg.vector_norm((loaded.double() - original.double()).flatten()))
