"""From-scratch GPT layouts: state_dicts of people's own GPT-2 modules, mapped onto GPT2LMHeadModel.

Two layouts are recognised by their key pattern (after any `_orig_mod.` prefix torch.compile adds):

- `nanogpt`: nanoGPT's `transformer.wte/wpe/h.N.ln_1/attn.c_attn/...`, `lm_head`. Its names are
  GPT-2's, but its projections are `nn.Linear` ([out, in]) where GPT-2's `Conv1D` stores [in, out],
  so those weights are transposed. Told apart from a Hugging Face GPT-2 state_dict by exactly that
  orientation (c_attn [3E, E] rather than [E, 3E]).
- `llms_from_scratch`: the book's `GPTModel` (`tok_emb`, `trf_blocks.N.att.W_query/W_key/W_value`,
  `ff.layers.0/2`, `norm1/norm2` scale/shift, `final_norm`, `out_head`); W_query/W_key/W_value are
  transposed and concatenated into c_attn.

Causal-mask buffers are dropped; biases the module does not have (bias=False, qkv_bias=False) are
added as zeros and reported. An absent output head means it was tied to the token embedding (the
only way torch.save loses it: ingestion drops exact aliases). Everything here is pure: names and
shapes in, a plan out; tensors in, tensors out.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from app.errors import RejectedCheckpoint

COMPILE_PREFIX = "_orig_mod."
MISMATCH_CODE = "layout_mismatch"
_BLOCK_INDEX = "{i}"
_MAX_NAMED = 8

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Entry:
    """One tensor of a layout: its name there (with {i} for the block), GPT-2's name, its shape in
    symbols (V vocab, P positions, E width, I MLP width), and how it lands in GPT-2's tensor."""

    theirs: str
    hf: str
    shape: tuple[str, ...]
    transposed: bool = False
    optional: bool = False
    slot: int | None = None  # which third of c_attn (query, key, value) it fills


@dataclass(frozen=True)
class LayoutSpec:
    name: str
    # in the original module's named_parameters order: embeddings, then each block, then the tail
    head: tuple[Entry, ...]
    block: tuple[Entry, ...]
    tail: tuple[Entry, ...]
    buffers: tuple[str, ...]  # block buffers in their state_dict, not parameters
    output_head: str  # their output-embedding name; absent = tied to the token embedding
    embedding: str
    mlp_in: str  # their MLP input weight, [I, E]: its rows give I
    activation: str  # GPT-2 config activation_function that equals the module's GELU
    config_names: Mapping[str, str]  # their config key -> nanoGPT/GPT-2 key


def _linear(theirs: str, hf: str, out: str, inp: str, *, bias: bool = True) -> tuple[Entry, ...]:
    weight = Entry(f"{theirs}.weight", f"{hf}.weight", (out, inp), transposed=True)
    if not bias:
        return (weight,)
    return weight, Entry(f"{theirs}.bias", f"{hf}.bias", (out,), optional=True)


def _norm(theirs: str, hf: str, weight: str, bias: str) -> tuple[Entry, ...]:
    return (
        Entry(f"{theirs}.{weight}", f"{hf}.weight", ("E",)),
        Entry(f"{theirs}.{bias}", f"{hf}.bias", ("E",), optional=True),
    )


_H = "transformer.h.{i}"

NANOGPT = LayoutSpec(
    name="nanogpt",
    head=(
        Entry("transformer.wte.weight", "transformer.wte.weight", ("V", "E")),
        Entry("transformer.wpe.weight", "transformer.wpe.weight", ("P", "E")),
    ),
    block=(
        *_norm(f"{_H}.ln_1", f"{_H}.ln_1", "weight", "bias"),
        *_linear(f"{_H}.attn.c_attn", f"{_H}.attn.c_attn", "3E", "E"),
        *_linear(f"{_H}.attn.c_proj", f"{_H}.attn.c_proj", "E", "E"),
        *_norm(f"{_H}.ln_2", f"{_H}.ln_2", "weight", "bias"),
        *_linear(f"{_H}.mlp.c_fc", f"{_H}.mlp.c_fc", "I", "E"),
        *_linear(f"{_H}.mlp.c_proj", f"{_H}.mlp.c_proj", "E", "I"),
    ),
    tail=(
        *_norm("transformer.ln_f", "transformer.ln_f", "weight", "bias"),
        Entry("lm_head.weight", "lm_head.weight", ("V", "E"), optional=True),
    ),
    buffers=(f"{_H}.attn.bias",),
    output_head="lm_head.weight",
    embedding="transformer.wte.weight",
    mlp_in="transformer.h.0.mlp.c_fc.weight",
    activation="gelu",  # nn.GELU(): the exact erf form
    config_names={"block_size": "block_size", "n_head": "n_head", "n_layer": "n_layer"},
)

_B = "trf_blocks.{i}"
_QKV = ("W_query", "W_key", "W_value")

LLMS_FROM_SCRATCH = LayoutSpec(
    name="llms_from_scratch",
    head=(
        Entry("tok_emb.weight", "transformer.wte.weight", ("V", "E")),
        Entry("pos_emb.weight", "transformer.wpe.weight", ("P", "E")),
    ),
    block=(
        *(
            entry
            for k, w in enumerate(_QKV)
            for entry in (
                Entry(f"{_B}.att.{w}.weight", f"{_H}.attn.c_attn.weight", ("E", "E"), True, slot=k),
                Entry(
                    f"{_B}.att.{w}.bias", f"{_H}.attn.c_attn.bias", ("E",), optional=True, slot=k
                ),
            )
        ),
        *_linear(f"{_B}.att.out_proj", f"{_H}.attn.c_proj", "E", "E"),
        *_linear(f"{_B}.ff.layers.0", f"{_H}.mlp.c_fc", "I", "E"),
        *_linear(f"{_B}.ff.layers.2", f"{_H}.mlp.c_proj", "E", "I"),
        *_norm(f"{_B}.norm1", f"{_H}.ln_1", "scale", "shift"),
        *_norm(f"{_B}.norm2", f"{_H}.ln_2", "scale", "shift"),
    ),
    tail=(
        *_norm("final_norm", "transformer.ln_f", "scale", "shift"),
        Entry("out_head.weight", "lm_head.weight", ("V", "E"), optional=True),
    ),
    buffers=(f"{_B}.att.mask",),
    output_head="out_head.weight",
    embedding="tok_emb.weight",
    mlp_in="trf_blocks.0.ff.layers.0.weight",
    activation="gelu_new",  # the book's GELU is the tanh approximation
    config_names={
        "context_length": "block_size",
        "emb_dim": "n_embd",
        "n_heads": "n_head",
        "n_layers": "n_layer",
        "drop_rate": "dropout",
    },
)

LAYOUTS = (NANOGPT, LLMS_FROM_SCRATCH)


@dataclass(frozen=True)
class Placement:
    """Where one of their tensors lands: GPT-2's tensor, transposed or not, and which columns."""

    hf: str
    transposed: bool
    columns: tuple[int, int] | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"to": self.hf, "transposed": self.transposed}
        if self.columns is not None:
            out["columns"] = list(self.columns)
        return out


@dataclass
class LayoutPlan:
    """How one state_dict maps onto GPT2LMHeadModel (names and shapes only)."""

    spec: LayoutSpec
    prefix: str
    n_layer: int
    dims: dict[str, int]
    tied: bool
    placements: dict[str, Placement] = field(default_factory=dict)  # their full name -> where
    added: dict[str, Shape] = field(default_factory=dict)  # GPT-2 name -> shape (zeros)
    dropped_buffers: list[str] = field(default_factory=list)
    hf_shapes: dict[str, Shape] = field(default_factory=dict)
    # their parameter names in their module's named_parameters order (tied weights once)
    parameter_order: list[str] = field(default_factory=list)

    @property
    def has_biases(self) -> bool:
        return not any(name.endswith("c_attn.bias") for name in self.added)

    def describe(self) -> dict[str, Any]:
        """What the metadata records as architecture["layout"]."""
        return {
            "name": self.spec.name,
            "target": "GPT2LMHeadModel",
            "compiled_prefix": self.prefix or None,
            "tied_embeddings": self.tied,
            "mapping": {theirs: p.describe() for theirs, p in self.placements.items()},
            "added_parameters": sorted(self.added),
            "added_parameter_count": sum(_numel(shape) for shape in self.added.values()),
            "dropped_buffers": self.dropped_buffers,
        }


def detect_layout(shapes: Mapping[str, Shape]) -> LayoutPlan | None:
    """The plan for a from-scratch layout, None if the names are not one; a recognised layout
    whose tensors are inconsistent is refused (422 layout_mismatch, naming the tensors)."""
    prefix = COMPILE_PREFIX if shapes and all(n.startswith(COMPILE_PREFIX) for n in shapes) else ""
    bare = {name.removeprefix(prefix): tuple(shape) for name, shape in shapes.items()}
    for spec in LAYOUTS:
        if _recognises(spec, bare):
            return _plan(spec, prefix, bare)
    return None


def _recognises(spec: LayoutSpec, shapes: Mapping[str, Shape]) -> bool:
    embedding = shapes.get(spec.embedding)
    if embedding is None or len(embedding) != 2:
        return False
    first_block = [e.theirs.format(i=0) for e in spec.block if not e.optional]
    if not any(name in shapes for name in first_block):
        return False
    if spec is NANOGPT:  # GPT-2's own names: only the nn.Linear orientation tells them apart
        c_attn = shapes.get("transformer.h.0.attn.c_attn.weight")
        return c_attn is not None and len(c_attn) == 2 and c_attn[0] == 3 * embedding[1]
    return True


def _plan(spec: LayoutSpec, prefix: str, shapes: Mapping[str, Shape]) -> LayoutPlan:
    n_layer = _layer_count(spec, shapes)
    dims = _dimensions(spec, shapes)
    plan = LayoutPlan(spec, prefix, n_layer, dims, tied=spec.output_head not in shapes)
    expected = _expected_entries(spec, n_layer)
    problems = _shape_problems(expected, shapes, dims)
    problems += _optional_problems(spec, shapes, n_layer)
    known = {entry.theirs for entry in expected} | _buffer_names(spec, n_layer)
    problems += [
        f"{name} is not part of the {spec.name} layout" for name in shapes if name not in known
    ]
    if problems:
        raise _mismatch(spec, problems)
    for entry in expected:
        _place(plan, entry, shapes)
    plan.dropped_buffers = sorted(
        prefix + name for name in _buffer_names(spec, n_layer) if name in shapes
    )
    return plan


def _layer_count(spec: LayoutSpec, shapes: Mapping[str, Shape]) -> int:
    pattern = re.compile(re.escape(spec.block[0].theirs.split(_BLOCK_INDEX)[0]) + r"(\d+)\.")
    indices = {int(m.group(1)) for name in shapes if (m := pattern.match(name))}
    missing = sorted(set(range(max(indices, default=-1) + 1)) - indices)
    if not indices or missing:
        raise _mismatch(spec, [f"block {i} has no tensors" for i in missing] or ["no blocks"])
    return len(indices)


def _dimensions(spec: LayoutSpec, shapes: Mapping[str, Shape]) -> dict[str, int]:
    vocab, width = shapes[spec.embedding]
    position = shapes.get(spec.head[1].theirs)
    mlp_in = shapes.get(spec.mlp_in)
    if position is None or mlp_in is None or len(mlp_in) != 2:
        missing = [n for n, s in ((spec.head[1].theirs, position), (spec.mlp_in, mlp_in)) if not s]
        raise _mismatch(
            spec, [f"{name} is missing or not a matrix" for name in missing or [spec.mlp_in]]
        )
    return {"V": vocab, "E": width, "3E": 3 * width, "P": position[0], "I": mlp_in[0]}


def _expected_entries(spec: LayoutSpec, n_layer: int) -> list[Entry]:
    blocks = [_at_block(entry, i) for i in range(n_layer) for entry in spec.block]
    return [*spec.head, *blocks, *spec.tail]


def _at_block(entry: Entry, index: int) -> Entry:
    return Entry(
        entry.theirs.format(i=index),
        entry.hf.format(i=index),
        entry.shape,
        entry.transposed,
        entry.optional,
        entry.slot,
    )


def _buffer_names(spec: LayoutSpec, n_layer: int) -> set[str]:
    return {buffer.format(i=i) for buffer in spec.buffers for i in range(n_layer)}


def _shape_problems(
    expected: list[Entry], shapes: Mapping[str, Shape], dims: Mapping[str, int]
) -> list[str]:
    problems = []
    for entry in expected:
        want = tuple(dims[symbol] for symbol in entry.shape)
        got = shapes.get(entry.theirs)
        if got is None and not entry.optional:
            problems.append(f"{entry.theirs} is missing")
        elif got is not None and got != want:
            problems.append(f"{entry.theirs} has shape {list(got)}, expected {list(want)}")
    return problems


def _optional_problems(spec: LayoutSpec, shapes: Mapping[str, Shape], n_layer: int) -> list[str]:
    """A bias the module lacks is lacking in every block, or nowhere (one flag builds them all)."""
    groups: dict[str, list[str]] = {}
    for entry in spec.block:
        if entry.optional:
            names = groups.setdefault(entry.hf, [])
            names += [entry.theirs.format(i=i) for i in range(n_layer)]
    problems = []
    for names in groups.values():
        if any(name in shapes for name in names):
            problems += [f"{name} is missing" for name in names if name not in shapes]
    return problems


def _place(plan: LayoutPlan, entry: Entry, shapes: Mapping[str, Shape]) -> None:
    dims = plan.dims
    width = dims["E"]
    hf_shape = tuple(dims[s] for s in (entry.shape[::-1] if entry.transposed else entry.shape))
    if entry.slot is not None:
        hf_shape = (*hf_shape[:-1], 3 * width)
    if entry.theirs == plan.spec.output_head and plan.tied:
        return
    plan.hf_shapes[entry.hf] = hf_shape
    if entry.theirs not in shapes:
        plan.added[entry.hf] = hf_shape
        return
    columns = None if entry.slot is None else (entry.slot * width, (entry.slot + 1) * width)
    plan.placements[plan.prefix + entry.theirs] = Placement(entry.hf, entry.transposed, columns)
    plan.parameter_order.append(plan.prefix + entry.theirs)


def _mismatch(spec: LayoutSpec, problems: list[str]) -> RejectedCheckpoint:
    shown = "; ".join(problems[:_MAX_NAMED])
    more = f"; and {len(problems) - _MAX_NAMED} more" if len(problems) > _MAX_NAMED else ""
    return RejectedCheckpoint(
        f"the state_dict looks like the {spec.name} GPT layout but does not fit it: {shown}{more}",
        code=MISMATCH_CODE,
    )


def _numel(shape: Shape) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


# --- tensors ---------------------------------------------------------------------------------


def map_tensors(plan: LayoutPlan, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Their tensors as GPT2LMHeadModel's state_dict; a tied head is left out, as saved."""
    dtype = tensors[plan.prefix + plan.spec.embedding].dtype
    placed = combine_tensors(plan, {name: tensors[name] for name in plan.placements})
    added = {hf: torch.zeros(shape, dtype=dtype) for hf, shape in plan.added.items()}
    return {hf: placed[hf] if hf in placed else added[hf] for hf in plan.hf_shapes}


def combine_tensors(
    plan: LayoutPlan, tensors: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Tensors shaped like their parameters (weights, or optimizer state) placed like them: each
    GPT-2 tensor whose pieces are all given, transposed and joined side by side."""
    pieces: dict[str, list[tuple[Placement, torch.Tensor]]] = {}
    for theirs, placement in plan.placements.items():
        pieces.setdefault(placement.hf, [])
        if theirs in tensors:
            tensor = tensors[theirs]
            pieces[placement.hf].append((placement, tensor.t() if placement.transposed else tensor))
    wanted = Counter(placement.hf for placement in plan.placements.values())
    return {
        hf: _joined(parts, plan.hf_shapes[hf])
        for hf, parts in pieces.items()
        if parts and len(parts) == wanted[hf]
    }


def _joined(parts: list[tuple[Placement, torch.Tensor]], shape: Shape) -> torch.Tensor:
    if len(parts) == 1 and parts[0][0].columns is None:
        return parts[0][1].contiguous()
    out = torch.empty(shape, dtype=parts[0][1].dtype)
    for placement, tensor in parts:
        assert placement.columns is not None
        start, end = placement.columns
        out[..., start:end] = tensor
    return out


# --- config ----------------------------------------------------------------------------------


def config_overrides(plan: LayoutPlan) -> dict[str, Any]:
    """What GPT2Config must say, beyond the sizes, for the mapped model to compute the same."""
    return {
        "activation_function": plan.spec.activation,
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": plan.tied,
    }


def translate_config(plan: LayoutPlan, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Their config keys in nanoGPT's names (which model_config reads); their bias flags are
    checked here against the tensors, since the mapping adds the biases they lack."""
    out = {plan.spec.config_names.get(key, key): value for key, value in raw.items()}
    for flag in ("bias", "qkv_bias"):
        value = out.pop(flag, None)
        if isinstance(value, bool) and value != _has_flagged_bias(plan, flag):
            held = "has" if not value else "lacks"
            raise RejectedCheckpoint(
                f"the config says {flag} = {value}, but the state_dict {held} those biases",
                code=MISMATCH_CODE,
            )
    return out


def _has_flagged_bias(plan: LayoutPlan, flag: str) -> bool:
    """nanoGPT's `bias` and the book's `qkv_bias` both decide c_attn's bias; the book has no
    `bias` flag of its own."""
    return plan.has_biases if flag == "qkv_bias" or plan.spec is NANOGPT else True


def added_parameter_count(architecture: Mapping[str, Any] | None) -> int:
    """Parameters a layout's mapping added (zero biases), which are not the checkpoint's own."""
    layout = (architecture or {}).get("layout")
    count = layout.get("added_parameter_count") if isinstance(layout, Mapping) else None
    return count if isinstance(count, int) else 0
