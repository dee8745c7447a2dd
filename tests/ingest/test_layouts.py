"""From-scratch GPT layouts: detection, mapping, and logits equal to the original module's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch.nn import functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from app.errors import RejectedCheckpoint
from app.ingest.layout_apply import gpt2_parameter_order, remap_optimizer, settle_layout_config
from app.ingest.layouts import detect_layout, map_tensors
from app.ingest.torch_pickle import OPTIMIZER_FILE
from app.ingest.torch_training import optimizer_tensors, parse_optimizer, summarize_optimizer
from app.verify.resumability import load_optimizer_record, rebuild_optimizer
from tests.from_scratch_gpt import BOOK_CONFIG, NANOGPT_ARGS, book_gpt, nanogpt, trained_optimizer

VARIANTS = {
    "nanogpt": lambda: nanogpt(bias=True),
    "nanogpt_no_bias": lambda: nanogpt(bias=False),
    "book_qkv_bias": lambda: book_gpt(qkv_bias=True),
    "book_no_qkv_bias": lambda: book_gpt(qkv_bias=False),
}


def _saved(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state_dict as ingestion sees it: exact aliases (the tied head) dropped."""
    seen: set[int] = set()
    out = {}
    for name, tensor in module.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            out[prefix + name] = tensor
    return out


def _mapped_model(module: torch.nn.Module, prefix: str = "") -> tuple[GPT2LMHeadModel, Any]:
    tensors = _saved(module, prefix)
    plan = detect_layout({name: tuple(t.shape) for name, t in tensors.items()})
    assert plan is not None
    book = {key: value for key, value in BOOK_CONFIG.items() if key != "qkv_bias"}
    carried = {"model_args": NANOGPT_ARGS, "cfg": book}  # each layout reads its own names
    config, _ = settle_layout_config(plan, None, carried)
    assert "_inferred_assumptions" not in config
    model = GPT2LMHeadModel(GPT2Config(**config)).eval()
    missing, unexpected = model.load_state_dict(map_tensors(plan, tensors), strict=False)
    assert unexpected == []
    assert set(missing) <= {"lm_head.weight"} and plan.tied == bool(missing)
    model.tie_weights()
    return model, plan


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("prefix", ["", "_orig_mod."])
def test_mapped_logits_equal_the_original_module(variant: str, prefix: str) -> None:
    module = VARIANTS[variant]()
    model, plan = _mapped_model(module, prefix)
    ids = torch.tensor([[3, 17, 42, 7, 95, 0, 64, 11, 5, 5]])
    with torch.no_grad():
        delta = (model(ids).logits - module(ids)).abs().max().item()
    print(f"{variant}{' compiled' if prefix else ''}: max|Δlogit| = {delta:.3g}")
    assert delta < 1e-5
    assert plan.spec.name == ("nanogpt" if variant.startswith("nano") else "llms_from_scratch")
    assert all(name.startswith(prefix) for name in plan.placements)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_added_biases_and_dropped_buffers_are_reported(variant: str) -> None:
    module = VARIANTS[variant]()
    model, plan = _mapped_model(module)
    described = plan.describe()
    own = sum(p.numel() for p in module.parameters())
    assert own + described["added_parameter_count"] == sum(p.numel() for p in model.parameters())
    assert bool(described["added_parameters"]) == ("_no_" in variant)
    assert described["dropped_buffers"] and all(
        name.endswith(("attn.bias", "att.mask")) for name in described["dropped_buffers"]
    )
    assert described["tied_embeddings"] == variant.startswith("nano")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gpt2_parameter_order_is_gpt2s_own(variant: str) -> None:
    model, plan = _mapped_model(VARIANTS[variant]())
    own = [name for name, _ in model.named_parameters() if name not in plan.added]
    assert gpt2_parameter_order(plan) == own


def test_heads_come_from_the_checkpoint_config_or_are_an_assumption() -> None:
    tensors = _saved(book_gpt())
    plan = detect_layout({name: tuple(t.shape) for name, t in tensors.items()})
    assert plan is not None
    config, source = settle_layout_config(plan, None, {"cfg": BOOK_CONFIG})
    assert (config["n_head"], source) == (BOOK_CONFIG["n_heads"], "checkpoint:cfg")
    assert "_inferred_assumptions" not in config
    config, source = settle_layout_config(plan, dict(BOOK_CONFIG, n_heads=8), {})
    assert (config["n_head"], source) == (8, "upload")
    config, source = settle_layout_config(plan, None, {})
    assert source == "inferred" and config["_inferred_assumptions"]
    given = {"model_type": "gpt2", "n_head": 2, "activation_function": "relu"}
    config, source = settle_layout_config(plan, given, {})
    assert (config["n_head"], config["activation_function"], source) == (2, "gelu_new", "upload")
    with pytest.raises(RejectedCheckpoint) as raised:
        settle_layout_config(plan, {"model_type": "llama"}, {})
    assert raised.value.code == "config_weights_mismatch"


def test_hugging_face_gpt2_state_dicts_are_not_a_layout() -> None:
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=96))
    assert detect_layout({n: tuple(t.shape) for n, t in model.state_dict().items()}) is None


@pytest.mark.parametrize(
    ("drop", "reshape", "named"),
    [
        ("transformer.h.1.mlp.c_fc.weight", None, "transformer.h.1.mlp.c_fc.weight is missing"),
        (
            None,
            "transformer.h.0.attn.c_proj.weight",
            "transformer.h.0.attn.c_proj.weight has shape",
        ),
        ("trf_blocks.1.att.W_key.weight", None, "trf_blocks.1.att.W_key.weight is missing"),
        ("trf_blocks.0.att.W_query.bias", None, "trf_blocks.0.att.W_query.bias is missing"),
    ],
)
def test_inconsistent_layouts_are_refused_naming_the_tensors(
    drop: str | None, reshape: str | None, named: str
) -> None:
    module = (
        nanogpt() if (drop or reshape or "").startswith("transformer") else book_gpt(qkv_bias=True)
    )
    shapes = {name: tuple(t.shape) for name, t in _saved(module).items()}
    if drop:
        shapes.pop(drop)
    if reshape:
        shapes[reshape] = (NANOGPT_ARGS["n_embd"], 3)
    with pytest.raises(RejectedCheckpoint) as raised:
        detect_layout(shapes)
    assert raised.value.code == "layout_mismatch" and named in raised.value.message


def _book_adamw(module: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.1)


TRAINING = {
    "nanogpt": (lambda: nanogpt(bias=True), lambda m: m.configure_optimizers()),
    "nanogpt_no_bias": (lambda: nanogpt(bias=False), lambda m: m.configure_optimizers()),
    "book_qkv_bias": (lambda: book_gpt(qkv_bias=True), _book_adamw),
    "book_no_qkv_bias": (lambda: book_gpt(qkv_bias=False), _book_adamw),
}


@pytest.mark.parametrize("variant", sorted(TRAINING))
def test_a_resumed_step_on_the_mapped_model_equals_the_original_modules(
    variant: str, tmp_path: Path
) -> None:
    """The renumbered optimizer state drives GPT-2 exactly as the user's drove their module."""
    make_module, make_optimizer = TRAINING[variant]
    module = make_module()
    optimizer = make_optimizer(module)
    trained_optimizer(module, optimizer)
    model, plan = _mapped_model(module)
    parsed = parse_optimizer(optimizer.state_dict())
    assert parsed is not None
    state = optimizer_tensors(parsed)
    remapped = remap_optimizer(plan, state, summarize_optimizer(parsed, len(state)))
    assert remapped is not None
    tensors, summary, resumable = remapped
    assert resumable == {"ok": True, "reasons": []}
    save_file(tensors, str(tmp_path / OPTIMIZER_FILE))
    problems: list[str] = []
    record = load_optimizer_record(tmp_path, summary, problems)
    assert record is not None and problems == []
    added = set(plan.added)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name not in added)
    trainable = [p for n, p in model.named_parameters() if n not in added]
    resumed = rebuild_optimizer(torch.optim.AdamW, trainable, record)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    ids = torch.tensor([[3, 17, 42, 7, 95, 0, 64, 11, 5, 5]])
    _step(optimizer, _loss(module(ids), ids))
    _step(resumed, model(input_ids=ids, labels=ids).loss)
    expected = map_tensors(plan, _saved(module))
    after = model.state_dict()
    delta = max(
        _comparable(after, n).sub(_comparable(expected, n)).abs().max().item() for n in expected
    )
    moved = max((after[n] - before[n]).abs().max().item() for n in expected)
    print(f"{variant}: step moved weights by {moved:.3g}, max|Δ| to the original's {delta:.3g}")
    assert moved > 1e-4 and delta < 1e-6
    assert all(not after[name].any() for name in added)  # added biases stay zero


def _comparable(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """The key bias shifts every score of a query alike, so softmax makes its true gradient 0:
    Adam then divides rounding noise by its own size, and the two models' steps differ there by
    up to 2 lr. Everything else must agree to float32 rounding."""
    tensor = state[name].clone()
    if name.endswith("c_attn.bias"):
        width = tensor.numel() // 3
        tensor[width : 2 * width] = 0
    return tensor


def _loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_optimizer_state_that_fits_no_order_is_left_for_resumability_to_report() -> None:
    module = nanogpt()
    optimizer = module.configure_optimizers()
    trained_optimizer(module, optimizer, steps=1)
    plan = detect_layout({n: tuple(t.shape) for n, t in _saved(module).items()})
    assert plan is not None
    saved = optimizer.state_dict()
    saved["state"][-1] = saved["state"].pop(0)  # a hostile index
    parsed = parse_optimizer(saved)
    assert parsed is not None
    state = optimizer_tensors(parsed)
    assert remap_optimizer(plan, state, summarize_optimizer(parsed, len(state))) is None
