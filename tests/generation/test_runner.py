"""The per-sequence KV buffers and the decode step, below the scheduler."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from app.generation import LoadedModel, ModelUnavailable, products
from app.generation.products import ExactProducts, HelperThread, shares
from app.generation.runner import GPT2Runner, SequenceCache


def test_buffer_grows_and_keeps_its_contents() -> None:
    like = torch.empty(0)
    cache = SequenceCache(layers=2, heads=2, head_dim=4, limit=200, like=like)
    prefill = DynamicCache()
    for layer in range(2):
        prefill.update(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), layer)
    cache.fill(prefill)
    assert (cache.length, cache.buffer.shape[3]) == (5, 64)
    written = []
    for _ in range(100):
        cache.reserve(cache.length + 1)
        key = torch.randn(1, 2, 1, 4)
        keys, _values = cache.append(1, key, key)
        written.append(key)
        cache.length += 1
    assert cache.buffer.shape[3] == 128  # doubled once, never past what is needed
    assert torch.equal(keys[:, :, :5], prefill.layers[1].keys)
    assert torch.equal(keys[:, :, 5:], torch.cat(written, dim=2))
    cache.reserve(200)
    assert cache.buffer.shape[3] == 200  # capped by the limit


def test_decode_continues_the_prefill(loaded: LoadedModel) -> None:
    """Two sequences decoded together give the logits of a plain forward over each whole
    sequence (to float tolerance: the full forward multiplies other matrix shapes)."""
    helper = HelperThread("test-helper")
    runner = GPT2Runner(loaded.model, products=ExactProducts([helper]))
    sequences = [[5, 9, 31, 7], [44, 2]]
    caches = [runner.new_cache(16) for _ in sequences]
    for tokens, cache in zip(sequences, caches, strict=True):
        runner.prefill(tokens, cache, all_logits=False)
    logits = runner.decode(caches, [11, 12], exact=True)
    for row, (tokens, extra) in enumerate(zip(sequences, [11, 12], strict=True)):
        with torch.inference_mode():
            expected = loaded.model(torch.tensor([[*tokens, extra]])).logits[0, -1]
        torch.testing.assert_close(logits[row], expected, rtol=1e-5, atol=1e-5)
    assert [c.length for c in caches] == [5, 3]
    helper.stop()


def test_other_architectures_are_refused(loaded: LoadedModel) -> None:
    class NotGPT2:
        config = type("Config", (), {"model_type": "llama"})()

    with pytest.raises(ModelUnavailable, match="'llama'"):
        GPT2Runner.check_supported(NotGPT2())
    GPT2Runner.check_supported(loaded.model)


def test_shared_rows_are_exact_and_survive_errors() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 301)
    helper = HelperThread("test-helper")
    products = ExactProducts([helper])
    hidden = torch.randn(5, 1, 48)
    with torch.inference_mode():
        expected = torch.cat([linear(hidden[row : row + 1]) for row in range(5)])
        with pytest.raises(RuntimeError):
            products(linear, torch.randn(5, 1, 47))  # both threads fail
        assert torch.equal(products(linear, hidden), expected)  # no stale result left over
    helper.stop()


def test_shares() -> None:
    assert shares(5, 2) == [(0, 3), (3, 5)]
    assert shares(2, 2) == [(0, 1), (1, 2)]
    assert shares(7, 3) == [(0, 3), (3, 5), (5, 7)]


def test_large_linear_is_sliced_only_when_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(products, "SLICE_BYTES", 16 << 10)
    torch.manual_seed(0)
    lm_head = torch.nn.Linear(128, 3000, bias=False)
    slices = products.exact_slices(lm_head)
    assert slices is not None and len(slices) == 47  # 64 output rows (32 KB) per slice
    hidden = torch.randn(6, 1, 128)
    helper = HelperThread("test-helper")
    with torch.inference_mode():
        got = ExactProducts([helper])(lm_head, hidden)
    helper.stop()
    assert torch.equal(got, products.one_row_at_a_time(lm_head, hidden))
    assert products.exact_slices(torch.nn.Linear(128, 3000)) is None  # with a bias: never
    assert products.exact_slices(torch.nn.Linear(16, 16, bias=False)) is None  # small: no need
