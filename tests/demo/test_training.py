"""The demo's training loop pieces, on a real tokenizer and a real (small) GPT-2."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from app.demo.corpus import generate_corpus, train_tokenizer
from app.demo.training import (
    TokenSplit,
    Trainer,
    TrainingConfig,
    build_model,
    sample_batch,
    split_tokens,
    validation_windows,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """As the demo trains: one intra-op thread (a second one only spins on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokens() -> tuple[object, torch.Tensor]:
    text = generate_corpus(sentences=600, seed=1)
    tokenizer = train_tokenizer(text, vocab_size=300)
    return tokenizer, torch.tensor(tokenizer(text)["input_ids"])


def test_corpus_is_deterministic_and_seed_dependent() -> None:
    assert generate_corpus(50, seed=3) == generate_corpus(50, seed=3)
    assert generate_corpus(50, seed=3) != generate_corpus(50, seed=4)


def test_split_keeps_order_and_sizes() -> None:
    stream = torch.arange(1000)
    split = split_tokens(stream)
    assert (len(split.train), len(split.val)) == (900, 100)
    assert torch.equal(torch.cat([split.train, split.val]), stream)


def test_windows_have_the_batch_shape_and_targets_shifted_by_one() -> None:
    stream = torch.arange(500)
    generator = torch.Generator().manual_seed(0)
    inputs, targets = sample_batch(stream, batch_size=8, block_size=16, generator=generator)
    assert inputs.shape == targets.shape == (8, 16)
    # arange makes each token its own position: targets are the next positions.
    assert torch.equal(targets, inputs + 1)
    assert int(targets.max()) < 500
    assert len({int(row[0]) for row in inputs}) > 1  # random starts, not one window


def test_training_windows_never_touch_the_validation_tokens() -> None:
    split = split_tokens(torch.arange(2000))
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        _, targets = sample_batch(split.train, 16, 32, generator)
        assert int(targets.max()) < 1800


def test_validation_windows_come_from_the_held_out_tokens_only() -> None:
    split = split_tokens(torch.arange(2000))
    inputs, targets = validation_windows(split.val, block_size=32, max_windows=100)
    assert inputs.shape == (6, 32)  # 199 usable tokens hold 6 whole windows
    assert int(inputs.min()) == 1800
    assert torch.equal(targets, inputs + 1)


def test_too_few_tokens_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="more than 64"):
        sample_batch(torch.arange(64), 2, 64, torch.Generator())
    with pytest.raises(ValueError, match="held-out"):
        validation_windows(torch.arange(10), 64, 4)


def test_validation_loss_depends_on_the_held_out_tokens_only(
    tokens: tuple[object, torch.Tensor],
) -> None:
    tokenizer, stream = tokens
    model = build_model(len(tokenizer), 0)  # type: ignore[arg-type]
    config = TrainingConfig(block_size=32, val_windows=4)
    split = split_tokens(stream)
    other_train = TokenSplit(train=split.train.flip(0), val=split.val)
    other_val = TokenSplit(train=split.train, val=split.train[-len(split.val) :])
    loss = Trainer(model, split, config).validation_loss()
    assert Trainer(model, other_train, config).validation_loss() == loss
    assert Trainer(model, other_val, config).validation_loss() != loss


def test_a_short_run_lowers_the_validation_loss_and_saves_a_training_checkpoint(
    tokens: tuple[object, torch.Tensor], tmp_path: Path
) -> None:
    tokenizer, stream = tokens
    model = build_model(len(tokenizer), 0)  # type: ignore[arg-type]
    config = TrainingConfig(
        epochs=1, steps_per_epoch=30, eval_every=10, batch_size=8, block_size=32, val_windows=8
    )
    trainer = Trainer(model, split_tokens(stream), config)
    before = trainer.validation_loss()
    evals: list[tuple[int, float, float]] = []
    result = trainer.run_epoch(1, lambda *values: evals.append(values))
    assert [step for step, _, _ in evals] == [10, 20, 30]
    assert result.val_loss < before - 1.0
    assert result.step == 30
    saved = torch.load(trainer.save_checkpoint(result, tmp_path / "e1.pt"), weights_only=True)
    assert set(saved) >= {"epoch", "model_state_dict", "optimizer_state_dict", "loss", "val_loss"}
    assert saved["val_loss"] == result.val_loss
    assert saved["optimizer_state_dict"]["state"]  # AdamW moments exist after steps
