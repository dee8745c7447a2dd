"""Check "resumability": a training checkpoint holds everything needed to continue training.

Applies to training checkpoints with an optimizer (from a torch.save upload: ingestion wrote
optimizer.safetensors, tensors named `state.<param_index>.<key>`, and training.json with the
param_groups, optimizer type, non-tensor per-parameter state and progress counters; see
app.ingest.torch_training). Structural checks: the optimizer state is present, the param groups
cover the model's parameters exactly once, every state tensor has its parameter's shape, and the
epoch or step is recorded. Then the model and the optimizer are rebuilt and one training step is
taken on a fixed batch (labels = inputs).

Parameter indices are positions in `model.named_parameters()` (tied weights count once), which is
how torch.optim numbers `model.parameters()`. Without a buildable model that order is unknown (the
stored safetensors are sorted by name), so shapes are then compared as multisets, ingestion's own
ordered check (made while the original pickle's order was known) is reported, and no step is
taken; the status is decided by the structural checks alone.
"""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import torch
from safetensors.torch import load_file

from app.ingest.optimizer_state import (
    IMPLEMENTATION_FLAGS,
    Shape,
    coverage_problems,
    is_elementwise,
    shape_problems,
    trainable_parameters,
)
from app.ingest.torch_pickle import OPTIMIZER_FILE, TRAINING_FILE
from app.runtime.precision import compute_context
from app.verify.base import CheckContext, CheckResult, not_applicable, verdict
from app.verify.reference_outputs import default_token_ids

NAME = "resumability"
_MAX_LISTED_PROBLEMS = 20
_MIN_BATCH_TOKENS = 2
_STEP_ERRORS = (RuntimeError, ValueError, KeyError, TypeError, IndexError)


@dataclass
class OptimizerRecord:
    """The optimizer as stored: its state rebuilt from optimizer.safetensors + training.json."""

    type: str
    param_groups: list[dict[str, Any]]
    state: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def stateless_sgd(self) -> bool:
        """Plain SGD without momentum keeps no state, so empty state is correct for it."""
        return self.type == "SGD" and all(not group.get("momentum") for group in self.param_groups)


def run(ctx: CheckContext) -> CheckResult:
    training = ctx.subject.view.training
    if training is None:
        return not_applicable(NAME, "This is not a training checkpoint.")
    summary = _training_summary(ctx.subject.folder, training)
    if not isinstance(summary.get("optimizer"), dict):
        return not_applicable(NAME, "The training checkpoint has no optimizer state.")
    problems: list[str] = []
    record = load_optimizer_record(ctx.subject.folder, summary["optimizer"], problems)
    if summary.get("epoch") is None and summary.get("step") is None:
        problems.append("neither the epoch nor the step is recorded")
    model_reason = ctx.subject.model_unavailable_reason
    metrics: dict[str, Any] = {
        "optimizer_type": summary["optimizer"].get("type"),
        "optimizer_state_present": record is not None,
        "epoch": summary.get("epoch"),
        "step": summary.get("step"),
        "ingest_resumable": summary.get("resumable"),
    }
    if record is not None:
        if model_reason is None:
            parameters = named_parameter_shapes(ctx.subject.model(), _added(ctx))
            problems += ordered_state_problems(record, parameters)
            metrics["parameter_order"] = "model.named_parameters()"
        else:
            parameters = trainable_parameters(ctx.subject.state_dict())  # as ingestion counts
            problems += unordered_state_problems(record, parameters)
            problems += _ingest_problems(summary.get("resumable"))
            metrics["parameter_order"] = "unknown (no model): shapes compared as multisets"
        metrics.update(_state_counts(record, parameters))
    metrics.update(_step_metrics(ctx, record, problems, model_reason))
    ok = not problems and metrics["step_ok"] is not False
    return verdict(
        NAME,
        ok,
        metrics=metrics,
        thresholds={"structural_problems": 0, "step_ok": True, "loss_finite": True},
        detail=_detail(metrics, problems, ok),
    )


# --- loading ---------------------------------------------------------------------------------


def _training_summary(folder: Path, training: dict[str, Any]) -> dict[str, Any]:
    """training.json as stored (the view's copy when the folder has none)."""
    path = folder / TRAINING_FILE
    if path.is_file():
        loaded = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            return loaded
    return training


def load_optimizer_record(
    folder: Path, summary: dict[str, Any], problems: list[str]
) -> OptimizerRecord | None:
    """Rebuild the torch.optim state_dict; appends to `problems` and returns None if impossible."""
    groups = summary.get("param_groups")
    if not _valid_groups(groups):
        problems.append("training.json has no valid param_groups (lists of parameter indices)")
        return None
    path = folder / OPTIMIZER_FILE
    record = OptimizerRecord(type=str(summary.get("type")), param_groups=groups)
    if path.is_file():
        for name, tensor in load_file(str(path)).items():
            index, key = _state_key(name)
            if index is None:
                problems.append(f"{OPTIMIZER_FILE} has an unexpected tensor {name!r}")
                continue
            record.state.setdefault(index, {})[key] = tensor
    elif not record.stateless_sgd:
        problems.append(f"the optimizer state ({OPTIMIZER_FILE}) is missing")
        return None
    for index_text, scalars in (summary.get("state_scalars") or {}).items():
        if index_text.isdigit() and isinstance(scalars, dict):
            record.state.setdefault(int(index_text), {}).update(scalars)
    return record


def _valid_groups(groups: Any) -> TypeGuard[list[dict[str, Any]]]:
    return (
        isinstance(groups, list)
        and bool(groups)
        and all(
            isinstance(group, dict)
            and isinstance(group.get("params"), list)
            and all(isinstance(i, int) and not isinstance(i, bool) for i in group["params"])
            for group in groups
        )
    )


def _state_key(name: str) -> tuple[int | None, str]:
    prefix, _, rest = name.partition(".")
    index_text, _, key = rest.partition(".")
    if prefix != "state" or not index_text.isdigit() or not key:
        return None, ""
    return int(index_text), key


def named_parameter_shapes(
    model: Any, added: frozenset[str] = frozenset()
) -> list[tuple[str, Shape]]:
    return [(name, tuple(p.shape)) for name, p in model.named_parameters() if name not in added]


def _added(ctx: CheckContext) -> frozenset[str]:
    """Zero biases a from-scratch layout's mapping added: the user's optimizer never had them, so
    they are not indexed by it and stay frozen in the step (as they were absent in training)."""
    layout = (ctx.subject.view.architecture or {}).get("layout") or {}
    return frozenset(layout.get("added_parameters") or ())


# --- structural checks -----------------------------------------------------------------------


def ordered_state_problems(
    record: OptimizerRecord, parameters: list[tuple[str, Shape]]
) -> list[str]:
    problems = coverage_problems(record.param_groups, record.state, len(parameters))
    if problems or (not record.state and record.stateless_sgd):
        return problems
    return shape_problems(record.state, parameters)


def unordered_state_problems(
    record: OptimizerRecord, parameters: list[tuple[str, Shape]]
) -> list[str]:
    problems = coverage_problems(record.param_groups, record.state, len(parameters))
    if problems or (not record.state and record.stateless_sgd):
        return problems
    if len(record.state) != len(parameters):
        problems.append(
            f"the optimizer has state for {len(record.state)} parameters but the checkpoint has "
            f"{len(parameters)}"
        )
    available = Counter(shape for _, shape in parameters)
    keys = {key for entry in record.state.values() for key in entry}
    for key in sorted(keys):
        shapes = Counter(
            tuple(entry[key].shape)
            for entry in record.state.values()
            if is_elementwise(entry.get(key))
        )
        extra = shapes - available
        if extra:
            shape = next(iter(extra))
            problems.append(
                f"optimizer state '{key}' has a tensor of shape {list(shape)} that no parameter has"
            )
    return problems


def _ingest_problems(resumable: Any) -> list[str]:
    if isinstance(resumable, dict) and resumable.get("ok") is False:
        return [f"at ingestion: {reason}" for reason in resumable.get("reasons", [])]
    return []


def _state_counts(record: OptimizerRecord, parameters: list[tuple[str, Shape]]) -> dict[str, Any]:
    return {
        "param_groups": len(record.param_groups),
        "parameters": len(parameters),
        "parameters_with_state": len(record.state),
        "state_tensors": sum(
            isinstance(value, torch.Tensor)
            for entry in record.state.values()
            for value in entry.values()
        ),
    }


# --- one training step -----------------------------------------------------------------------


def _step_metrics(
    ctx: CheckContext,
    record: OptimizerRecord | None,
    problems: list[str],
    model_reason: str | None,
) -> dict[str, Any]:
    if model_reason is not None:
        return _no_step(f"the model cannot be built ({model_reason})")
    if record is None or problems:
        return _no_step("skipped because of the structural problems")
    optimizer_class = getattr(torch.optim, record.type, None)
    if not (
        isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)
    ):
        return _no_step(f"the optimizer type {record.type!r} is not a torch.optim class")
    return training_step(ctx, optimizer_class, record)


def _no_step(reason: str) -> dict[str, Any]:
    return {"step_possible": False, "step_ok": None, "step_reason": reason}


def training_step(
    ctx: CheckContext, optimizer_class: type[torch.optim.Optimizer], record: OptimizerRecord
) -> dict[str, Any]:
    """One optimizer step on a copy of the model (the cached model other checks use is untouched).

    The copy is put in eval mode so the step is deterministic (no dropout); that changes nothing
    about whether the optimizer state can drive training.
    """
    model = copy.deepcopy(ctx.subject.model())
    model.eval()
    added = _added(ctx)
    parameters = [p for name, p in model.named_parameters() if name not in added]
    batch = _fixed_batch(ctx, model)
    try:
        optimizer = rebuild_optimizer(optimizer_class, parameters, record)
        with torch.enable_grad(), compute_context(model):
            for parameter in parameters:
                parameter.requires_grad_(True)
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            loss_before = float(loss.detach())
            before = [parameter.detach().clone() for parameter in parameters]
            optimizer.step()
        change = _change_norm(parameters, before)
        with torch.no_grad(), compute_context(model):
            loss_after = float(model(input_ids=batch, labels=batch).loss)
    except _STEP_ERRORS as exc:
        return {
            "step_possible": True,
            "step_ok": False,
            "step_error": f"{type(exc).__name__}: {exc}"[:1000],
        }
    finite = all(math.isfinite(value) for value in (loss_before, loss_after, change))
    return {
        "step_possible": True,
        "step_ok": finite,
        "loss_before": _json_float(loss_before),
        "loss_after": _json_float(loss_after),
        "loss_finite": finite,
        "parameter_change_norm": _json_float(change),
        "batch_tokens": int(batch.shape[1]),
    }


def rebuild_optimizer(
    optimizer_class: type[torch.optim.Optimizer],
    parameters: list[torch.nn.Parameter],
    record: OptimizerRecord,
) -> torch.optim.Optimizer:
    """Construct the optimizer over the same groups, then load the stored state into it.

    Implementation switches (foreach, fused, capturable, differentiable) are the new optimizer's
    own defaults: they pick a kernel for the machine, and the training machine's may not exist
    here. Everything else (lr, betas, weight_decay, ...) comes from the stored param_groups.
    """
    construct: Callable[..., torch.optim.Optimizer] = optimizer_class
    optimizer = construct(
        [{"params": [parameters[i] for i in group["params"]]} for group in record.param_groups]
    )
    saved_groups = [
        {
            **{key: value for key, value in built.items() if key != "params"},
            **{
                key: value
                for key, value in saved.items()
                if key not in IMPLEMENTATION_FLAGS and key != "param_names"
            },
            "params": list(saved["params"]),
        }
        for built, saved in zip(optimizer.param_groups, record.param_groups, strict=True)
    ]
    optimizer.load_state_dict({"state": copy.copy(record.state), "param_groups": saved_groups})
    return optimizer


def _fixed_batch(ctx: CheckContext, model: Any) -> torch.Tensor:
    """The job's first prompt if it fits the model, else a fixed id sequence."""
    vocab_size = int(model.config.vocab_size)
    context = int(
        getattr(model.config, "n_positions", 0)
        or getattr(model.config, "max_position_embeddings", 0)
        or 1024
    )
    ids = ctx.inputs[0][:context] if ctx.inputs else []
    if len(ids) < _MIN_BATCH_TOKENS or max(ids) >= vocab_size:
        ids = default_token_ids(vocab_size)[0][:context]
    return torch.tensor([ids], dtype=torch.long, device=ctx.device)


def _change_norm(parameters: list[torch.nn.Parameter], before: list[torch.Tensor]) -> float:
    total = sum(
        float((parameter.detach() - old).double().square().sum())
        for parameter, old in zip(parameters, before, strict=True)
    )
    return math.sqrt(total)


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


# --- reporting -------------------------------------------------------------------------------


def _detail(metrics: dict[str, Any], problems: list[str], ok: bool) -> str:
    progress = _progress(metrics)
    if problems:
        shown = problems[:_MAX_LISTED_PROBLEMS]
        more = len(problems) - len(shown)
        listed = "; ".join(shown) + (f"; and {more} more" if more else "")
        return f"The checkpoint cannot resume training: {listed}."
    structure = (
        f"The {metrics['optimizer_type']} state covers all {metrics.get('parameters', 0)} "
        f"parameters in {metrics.get('param_groups', 0)} group(s) with matching shapes{progress}"
    )
    if not metrics["step_possible"]:
        return f"{structure}; no training step was taken: {metrics['step_reason']}."
    if not ok:
        error = metrics.get("step_error") or "the loss or the update is not finite"
        return f"{structure}, but a training step failed: {error}."
    return (
        f"{structure}; one training step ran (loss {metrics['loss_before']:.4g} → "
        f"{metrics['loss_after']:.4g}, parameter change norm "
        f"{metrics['parameter_change_norm']:.3g})."
    )


def _progress(metrics: dict[str, Any]) -> str:
    parts = [f"{key} {metrics[key]}" for key in ("epoch", "step") if metrics.get(key) is not None]
    return f" ({', '.join(parts)})" if parts else ""
