"""Apply a from-scratch GPT layout to a converted torch upload (see app.ingest.layouts).

Runs in the parent after the loader child wrote model.safetensors (and, for a training checkpoint,
optimizer.safetensors + training.json) under their own names. Those files are rewritten in place
as GPT2LMHeadModel's: weights mapped, optimizer state renumbered (and transposed / joined like its
parameters) to positions in GPT-2's named_parameters without the added biases, which the user's
optimizer never saw. The config is settled from the upload's config, else the checkpoint's own
(model_args, cfg, ...), else inferred with the head count listed as an assumption.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from app.errors import RejectedCheckpoint
from app.hashing import sha256_file
from app.ingest.layouts import (
    NANOGPT,
    LayoutPlan,
    combine_tensors,
    config_overrides,
    detect_layout,
    map_tensors,
    translate_config,
)
from app.ingest.model_config import (
    CHECKPOINT_CONFIG_KEYS,
    config_from_checkpoint,
    infer_gpt2_config,
)
from app.ingest.optimizer_state import coverage_problems, shape_problems
from app.ingest.safetensors_format import DTYPE_TORCH_NAME, hash_safetensors_file
from app.ingest.torch_convert import SAFETENSORS_METADATA
from app.ingest.torch_pickle import MODEL_FILE, OPTIMIZER_FILE, TRAINING_FILE
from app.ingest.types import FileRecord, IngestLimits, TensorRecord

# GPT2LMHeadModel's named_parameters order, by name with the block index removed
_GPT2_ORDER = [e.hf for e in (*NANOGPT.head, *NANOGPT.block, *NANOGPT.tail)]


@dataclass
class AppliedLayout:
    plan: LayoutPlan
    config: dict[str, Any]
    config_source: str

    def annotate(self, architecture: dict[str, Any] | None) -> None:
        if architecture is not None:
            architecture["config_source"] = self.config_source
            architecture["layout"] = self.plan.describe()


def apply_layout(
    inspection: Any, given: dict[str, Any] | None, limits: IngestLimits
) -> AppliedLayout | None:
    """Map the stored files of a from-scratch layout onto GPT-2's; None if it is not one."""
    record = next((f for f in inspection.files if f.path == MODEL_FILE), None)
    if record is None or record.origin != "derived" or inspection.config is not None:
        return None
    plan = detect_layout({t.name: t.shape for t in inspection.tensors})
    if plan is None:
        return None
    path = inspection.sources[MODEL_FILE]
    save_file(map_tensors(plan, load_file(str(path))), str(path), metadata=SAFETENSORS_METADATA)
    _rehash_model(inspection, path, limits)
    if isinstance(inspection.training, dict):
        _remap_training(inspection, plan)
    config, source = settle_layout_config(plan, given, inspection.carried_configs)
    inspection.carried_configs = _carried_as_gpt2(plan, inspection.carried_configs)
    return AppliedLayout(plan, config, source)


def _rehash_model(inspection: Any, path: Path, limits: IngestLimits) -> None:
    sha, header, hashes = hash_safetensors_file(path, limits)
    inspection.tensors = [
        TensorRecord(
            span.name,
            DTYPE_TORCH_NAME[span.dtype],
            tuple(span.shape),
            span.numel,
            span.end - span.begin,
            hashes[span.name],
            MODEL_FILE,
        )
        for span in header.tensors
    ]
    _replace_file(inspection, MODEL_FILE, path, sha)


def _replace_file(inspection: Any, name: str, path: Path, sha: str) -> None:
    inspection.files = [
        FileRecord(name, path.stat().st_size, sha, origin="derived") if f.path == name else f
        for f in inspection.files
    ]


# --- config ----------------------------------------------------------------------------------


def settle_layout_config(
    plan: LayoutPlan, given: Mapping[str, Any] | None, carried: Mapping[str, Any]
) -> tuple[dict[str, Any], str]:
    """(GPT-2 config, its source): the upload's, the checkpoint's, or inferred."""
    if given is not None:
        # the layout fixes what sizes do not say (GELU form, tying): a given config cannot change it
        model_type = given.get("model_type")
        if model_type is not None and model_type != "gpt2":
            raise RejectedCheckpoint(
                f"the weights are a {plan.spec.name} GPT-2 layout, but the config says "
                f"model_type {model_type!r}",
                code="config_weights_mismatch",
            )
        if model_type == "gpt2":
            return {**given, **config_overrides(plan)}, "upload"
        found = config_from_checkpoint({"config": translate_config(plan, given)}, plan.hf_shapes)
        if found is not None:
            return {**found[1], **config_overrides(plan)}, "upload"
    from_checkpoint = _from_checkpoint(plan, carried)
    if from_checkpoint is not None:
        return from_checkpoint
    return _inferred(plan), "inferred"


def _from_checkpoint(
    plan: LayoutPlan, carried: Mapping[str, Any]
) -> tuple[dict[str, Any], str] | None:
    translated = {
        key: translate_config(plan, raw)
        for key, raw in carried.items()
        if key in CHECKPOINT_CONFIG_KEYS and isinstance(raw, Mapping)
    }
    found = config_from_checkpoint(translated, plan.hf_shapes)
    if found is None:
        return None
    source, config = found
    return {**config, **config_overrides(plan)}, source


def _inferred(plan: LayoutPlan) -> dict[str, Any]:
    config = infer_gpt2_config(plan.hf_shapes)
    assert config is not None  # a plan always has GPT-2's embeddings and blocks
    return {**config, **config_overrides(plan)}


def _carried_as_gpt2(plan: LayoutPlan, carried: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The checkpoint's own config as a GPT-2 one, so ingestion compares the chosen one with it."""
    found = _from_checkpoint(plan, carried)
    if found is None:
        return {}
    config, source = found
    return {source.removeprefix("checkpoint:"): config}


# --- training state --------------------------------------------------------------------------


def gpt2_parameter_order(plan: LayoutPlan) -> list[str]:
    """GPT-2's named_parameters without the added biases: what the stored optimizer indexes."""
    blocks = [
        name.format(i=i) for i in range(plan.n_layer) for name in _GPT2_ORDER if "{i}" in name
    ]
    names = [n for n in _GPT2_ORDER if "{i}" not in n]
    ordered = [*names[:2], *blocks, *names[2:]]
    return [name for name in ordered if name in plan.hf_shapes and name not in plan.added]


def _remap_training(inspection: Any, plan: LayoutPlan) -> None:
    summary: dict[str, Any] = inspection.training
    optimizer = summary.get("optimizer")
    path = inspection.sources.get(OPTIMIZER_FILE)
    if not isinstance(optimizer, dict) or path is None:
        return
    remapped = remap_optimizer(plan, load_file(str(path)), optimizer)
    if remapped is None:
        return  # left as the user's: resumability reports what does not fit
    tensors, summary["optimizer"], summary["resumable"] = remapped
    save_file(tensors, str(path), metadata=SAFETENSORS_METADATA)
    _rewrite_training_files(inspection, path, summary)


def remap_optimizer(
    plan: LayoutPlan, tensors: Mapping[str, torch.Tensor], optimizer: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]] | None:
    """(state tensors, optimizer summary, resumable) indexed by GPT-2's parameters, or None when
    their optimizer's order cannot be told (its state fits neither order)."""
    state = _state_by_index(tensors)
    theirs = _their_index_order(plan, state, optimizer["param_groups"])
    scalars = optimizer.get("state_scalars") or {}
    if theirs is None or not all(i.isdigit() and int(i) < len(theirs) for i in scalars):
        return None
    hf_order = gpt2_parameter_order(plan)
    renumber = {
        index: hf_order.index(plan.placements[name].hf) for index, name in enumerate(theirs)
    }
    remapped = _renumbered_state(plan, state, theirs, hf_order)
    summary = {
        **optimizer,
        "param_groups": [_renumbered_group(g, renumber) for g in optimizer["param_groups"]],
        "state_scalars": {str(renumber[int(i)]): v for i, v in scalars.items()},
        "state_tensors": len(remapped),
    }
    return remapped, summary, _resumable(plan, summary, remapped, hf_order)


def _state_by_index(tensors: Mapping[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    return state


def _their_index_order(
    plan: LayoutPlan, state: Mapping[int, Mapping[str, torch.Tensor]], groups: list[dict[str, Any]]
) -> list[str] | None:
    """Their parameter names by optimizer index: one group over model.parameters(), or nanoGPT's
    configure_optimizers (matrices decayed, then vectors) — whichever every state shape fits."""
    named = plan.parameter_order
    shapes = {name: _their_shape(plan, name) for name in named}
    by_decay = [n for n in named if len(shapes[n]) >= 2] + [n for n in named if len(shapes[n]) < 2]
    indices = sorted(i for group in groups for i in group["params"])
    for order in (named, by_decay):
        if (
            indices == list(range(len(order)))
            and all(0 <= index < len(order) for index in state)
            and _state_fits(state, order, shapes)
        ):
            return order
    return None


def _their_shape(plan: LayoutPlan, name: str) -> tuple[int, ...]:
    placement = plan.placements[name]
    shape = plan.hf_shapes[placement.hf]
    if placement.columns is not None:
        shape = (*shape[:-1], placement.columns[1] - placement.columns[0])
    return shape[::-1] if placement.transposed else shape


def _state_fits(
    state: Mapping[int, Mapping[str, torch.Tensor]],
    order: list[str],
    shapes: Mapping[str, tuple[int, ...]],
) -> bool:
    return all(
        tensor.dim() == 0 or tuple(tensor.shape) == shapes[order[index]]
        for index, entry in state.items()
        for tensor in entry.values()
    )


def _renumbered_state(
    plan: LayoutPlan,
    state: Mapping[int, Mapping[str, torch.Tensor]],
    theirs: list[str],
    hf_order: list[str],
) -> dict[str, torch.Tensor]:
    """Each state key's tensors placed like their parameters; a 0-dim one (Adam's step) is the
    same for every piece of a joined parameter, so the first is kept."""
    out: dict[str, torch.Tensor] = {}
    keys = {key for entry in state.values() for key in entry}
    for key in sorted(keys):
        pieces = {theirs[i]: entry[key] for i, entry in state.items() if key in entry}
        elementwise = {name: t for name, t in pieces.items() if t.dim() > 0}
        for hf, tensor in combine_tensors(plan, elementwise).items():
            out[f"state.{hf_order.index(hf)}.{key}"] = tensor
        for name, tensor in pieces.items():
            if tensor.dim() == 0:
                out.setdefault(f"state.{hf_order.index(plan.placements[name].hf)}.{key}", tensor)
    return out


def _renumbered_group(group: dict[str, Any], renumber: Mapping[int, int]) -> dict[str, Any]:
    params = list(dict.fromkeys(renumber[i] for i in group["params"]))
    return {**{k: v for k, v in group.items() if k != "param_names"}, "params": params}


def _resumable(
    plan: LayoutPlan,
    optimizer: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    hf_order: list[str],
) -> dict[str, Any]:
    state = _state_by_index(tensors)
    reasons = coverage_problems(optimizer["param_groups"], state, len(hf_order))
    if not reasons:
        reasons = shape_problems(state, [(name, plan.hf_shapes[name]) for name in hf_order])
    return {"ok": not reasons, "reasons": reasons[:20]}


def _rewrite_training_files(inspection: Any, optimizer_path: Path, summary: dict[str, Any]) -> None:
    _replace_file(inspection, OPTIMIZER_FILE, optimizer_path, sha256_file(optimizer_path))
    training_path = inspection.sources.get(TRAINING_FILE)
    if training_path is not None:
        text = json.dumps(summary, indent=2, allow_nan=False) + "\n"
        training_path.write_text(text, encoding="utf-8")
        _replace_file(inspection, TRAINING_FILE, training_path, sha256_file(training_path))
