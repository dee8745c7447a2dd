"""The per-sequence caches and the decode step, below the scheduler."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from app.generation import LoadedModel, ModelUnavailable, lockstep
from app.generation.lockstep import dense_modules
from app.generation.rows import HelperThread, RowPool, shares
from app.generation.runner import ModelRunner


@pytest.fixture
def pool() -> Iterator[RowPool]:
    helper = HelperThread("test-helper")
    yield RowPool([helper])
    helper.stop()


@pytest.mark.parametrize("exact", [True, False])
def test_decode_continues_the_prefill(loaded: LoadedModel, pool: RowPool, exact: bool) -> None:
    """Two sequences decoded together give the logits of a plain forward over each whole
    sequence (to float tolerance: the full forward multiplies other matrix shapes)."""
    runner = ModelRunner(loaded.model, rows=pool)
    sequences = [[5, 9, 31, 7], [44, 2]]
    caches = [runner.new_cache() for _ in sequences]
    for tokens, cache in zip(sequences, caches, strict=True):
        runner.prefill(tokens, cache, all_logits=False)
    logits = runner.decode(caches, [11, 12], exact=exact)
    for row, (tokens, extra) in enumerate(zip(sequences, [11, 12], strict=True)):
        with torch.inference_mode():
            expected = loaded.model(torch.tensor([[*tokens, extra]])).logits[0, -1]
        torch.testing.assert_close(logits[row], expected, rtol=1e-5, atol=1e-5)
    assert [c.length for c in caches] == [5, 3]
    assert [c.dynamic.get_seq_length() for c in caches] == [5, 3]
    assert loaded.config._attn_implementation == runner.implementation  # switched back


def test_prefill_logits_of_every_position(loaded: LoadedModel, pool: RowPool) -> None:
    runner = ModelRunner(loaded.model, rows=pool)
    prompt = [5, 9, 31, 7]
    last, every = runner.prefill(prompt, runner.new_cache(), all_logits=True)
    assert every is not None and every.shape == (4, loaded.config.vocab_size)
    torch.testing.assert_close(every[-1:], last, rtol=1e-5, atol=1e-5)


def test_non_causal_lm_architectures_are_refused(loaded: LoadedModel) -> None:
    class NotACausalLM:
        config = type("Config", (), {"model_type": "vit", "is_encoder_decoder": False})()

    with pytest.raises(ModelUnavailable, match="'vit'"):
        ModelRunner.check_supported(NotACausalLM())
    ModelRunner.check_supported(loaded.model)


def test_shared_rows_keep_order_and_survive_errors(pool: RowPool) -> None:
    def compute(start: int, end: int) -> torch.Tensor:
        if end - start > 3:
            raise RuntimeError("too many")
        return torch.arange(start, end)

    with pytest.raises(RuntimeError):
        pool.shared(9, compute)  # both threads fail
    assert pool.shared(5, compute).tolist() == [0, 1, 2, 3, 4]  # no stale result left over


def test_shares() -> None:
    assert shares(5, 2) == [(0, 3), (3, 5)]
    assert shares(2, 2) == [(0, 1), (1, 2)]
    assert shares(7, 3) == [(0, 3), (3, 5), (5, 7)]


def test_lockstep_exact_steps_only_where_the_probe_matched(
    loaded: LoadedModel, pool: RowPool
) -> None:
    """GPT-2's exact steps run as one forward with row-by-row products (the probe matched);
    a model holding a matrix outside Linear/Conv1D/Embedding never does."""
    assert ModelRunner(loaded.model, rows=pool).lockstep_is_exact()

    class Experts(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(2, 4, 4))

    assert dense_modules(torch.nn.Sequential(torch.nn.Linear(4, 4), Experts())) is None
    assert dense_modules(torch.nn.Sequential(torch.nn.Embedding(3, 4), torch.nn.Linear(4, 4)))


def test_large_linear_is_sliced_only_when_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lockstep, "SLICE_BYTES", 16 << 10)
    torch.manual_seed(0)
    lm_head = torch.nn.Linear(128, 3000, bias=False)
    slices = lockstep.exact_slices(lm_head)
    assert slices is not None and len(slices) == 47  # 64 output rows (32 KB) per slice
    hidden = torch.randn(6, 1, 128)
    helper = HelperThread("test-helper")
    products = lockstep.RowByRowProducts([lm_head], RowPool([helper]))
    with torch.inference_mode(), products.active():
        got = lm_head(hidden)
    helper.stop()
    with torch.inference_mode():
        expected = torch.cat([lm_head(hidden[row : row + 1]) for row in range(6)])
    assert torch.equal(got, expected)
    assert lockstep.exact_slices(torch.nn.Linear(128, 3000)) is None  # with a bias: never
    assert lockstep.exact_slices(torch.nn.Linear(16, 16, bias=False)) is None  # small: no need
