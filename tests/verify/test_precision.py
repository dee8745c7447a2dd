"""Comparisons across dtypes and families: tolerances, near ties, rounding, architecture names."""

from __future__ import annotations

import pytest
import torch

from app.verify.architectures import architecture_differences
from app.verify.base import Tolerance
from app.verify.near_ties import top1_near_ties
from app.verify.weights import tensor_difference


@pytest.mark.parametrize(
    ("dtype", "other", "same_device", "expected", "source", "margin"),
    [
        ("bfloat16", "float32", True, (0.5, 0.99, 1e-3), "bfloat16 vs float32 on same", 1.0),
        ("float16", "float32", True, (0.0625, 0.99, 1e-4), "float16 vs float32 on same", 0.125),
        ("bfloat16", "float32", False, (0.5, 0.99, 1e-3), "bfloat16 vs float32 on other", 1.0),
        ("bfloat16", None, True, (1e-5, 1.0, 1e-6), "bfloat16 on same", None),
        ("float32", None, False, (1e-2, 0.99, 1e-3), "float32 on other", None),
    ],
)
def test_default_tolerances_follow_the_least_precise_dtype_of_the_pair(
    dtype: str,
    other: str | None,
    same_device: bool,
    expected: tuple[float, float, float],
    source: str,
    margin: float | None,
) -> None:
    tolerance = Tolerance.defaults(same_device=same_device, dtype=dtype, other_dtype=other)
    assert (tolerance.max_abs_logit, tolerance.min_top1_agreement, tolerance.max_kl) == expected
    assert set(tolerance.sources.values()) == {f"default for {source} device"}
    assert tolerance.near_tie_margin == margin
    requested = tolerance.overridden({"max_abs_logit": 0.25})
    assert requested.near_tie_margin == (None if margin is None else 0.5)


def test_only_top1_swaps_within_the_margin_are_near_ties() -> None:
    reference = torch.tensor([[1.0, 0.9, 0.0], [2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    subject = torch.tensor([[0.9, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 3.0, 0.0]])
    assert top1_near_ties(subject, reference, margin=0.5) == [0]
    assert top1_near_ties(subject, reference, margin=2.0) == [0, 1]


def test_a_dtype_conversion_is_no_change_but_anything_more_is() -> None:
    weights = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    converted = weights.to(torch.bfloat16)
    same = tensor_difference("w", converted, weights)
    assert (same.exactly_equal, same.within_tolerance) == (False, True)
    assert same.relative_change is not None and 0 < same.relative_change < 2**-8
    nudged = converted.clone()
    nudged[3, 5] *= 1 + 2**-7  # one bfloat16 step away from what rounding gives
    assert nudged[3, 5] != converted[3, 5]
    changed = tensor_difference("w", nudged, weights)
    assert changed.within_tolerance is False


def test_architecture_differences_are_named_once_across_families() -> None:
    gpt2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 300}
    llama = {
        "model_type": "llama",
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "vocab_size": 300,
    }
    assert architecture_differences(gpt2, llama) == ["model_type gpt2 vs llama", "n_head 4 vs 8"]
    assert architecture_differences(llama, gpt2) == [
        "model_type llama vs gpt2",
        "num_attention_heads 8 vs 4",
    ]


def test_fields_that_follow_from_a_named_difference_are_not_named_again() -> None:
    one_head = {"model_type": "gpt2", "n_embd": 64, "n_head": 1}
    two_heads = {"model_type": "gpt2", "n_embd": 64, "n_head": 2}
    derived = {"num_key_value_heads": 1, "head_dim": 64}
    assert architecture_differences(
        one_head | derived, two_heads | {"num_key_value_heads": 2, "head_dim": 32}
    ) == ["n_head 1 vs 2"]
    grouped = two_heads | {"num_key_value_heads": 1, "head_dim": 32}
    assert architecture_differences(two_heads | {"num_key_value_heads": 2}, grouped) == [
        "num_key_value_heads 2 vs 1"
    ]
