"""The training loop's pieces: token split, random windows, validation loss, epochs, samples."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 3
    steps_per_epoch: int = 150
    eval_every: int = 50
    batch_size: int = 16
    block_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    val_windows: int = 32
    seed: int = 0


@dataclass(frozen=True)
class TokenSplit:
    train: torch.Tensor
    val: torch.Tensor


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    step: int
    loss: float
    val_loss: float


def split_tokens(tokens: torch.Tensor, train_fraction: float = 0.9) -> TokenSplit:
    """The first `train_fraction` of the stream trains, the rest is held out for validation."""
    cut = int(len(tokens) * train_fraction)
    return TokenSplit(train=tokens[:cut], val=tokens[cut:])


def sample_batch(
    data: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of `block_size` tokens; targets are the inputs shifted by one token."""
    if len(data) <= block_size:
        raise ValueError(f"need more than {block_size} tokens to sample windows, got {len(data)}")
    starts = torch.randint(0, len(data) - block_size, (batch_size,), generator=generator)
    inputs = torch.stack([data[start : start + block_size] for start in starts.tolist()])
    targets = torch.stack([data[start + 1 : start + 1 + block_size] for start in starts.tolist()])
    return inputs, targets


def validation_windows(
    data: torch.Tensor, block_size: int, max_windows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive, non-overlapping windows from the start of `data` (the same every time)."""
    count = min(max_windows, (len(data) - 1) // block_size)
    if count < 1:
        raise ValueError(f"need more than {block_size} held-out tokens, got {len(data)}")
    span = count * block_size
    inputs = data[:span].view(count, block_size)
    targets = data[1 : span + 1].view(count, block_size)
    return inputs, targets


def language_model_loss(model: Any, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=inputs).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


@torch.no_grad()
def evaluate(model: Any, data: torch.Tensor, block_size: int, max_windows: int) -> float:
    model.eval()
    inputs, targets = validation_windows(data, block_size, max_windows)
    loss = float(language_model_loss(model, inputs, targets))
    model.train()
    return loss


def build_model(vocab_size: int, eos_token_id: int, seed: int = 0) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=128,
        n_embd=128,
        n_layer=2,
        n_head=4,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
    )
    return GPT2LMHeadModel(config)


def make_optimizer(model: Any, config: TrainingConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )


class Trainer:
    """Runs epochs of `steps_per_epoch` random-window steps, validating every `eval_every`."""

    def __init__(self, model: Any, split: TokenSplit, config: TrainingConfig) -> None:
        self.model = model
        self.split = split
        self.config = config
        self.optimizer = make_optimizer(model, config)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0

    def validation_loss(self) -> float:
        return evaluate(self.model, self.split.val, self.config.block_size, self.config.val_windows)

    def run_epoch(self, epoch: int, on_eval: Callable[[int, float, float], None]) -> EpochResult:
        """One epoch; `on_eval(step, train_loss, val_loss)` every `eval_every` steps."""
        self.model.train()
        losses: list[float] = []
        for _ in range(self.config.steps_per_epoch):
            losses.append(self._train_step())
            self.step += 1
            if self.step % self.config.eval_every == 0:
                window = losses[-self.config.eval_every :]
                on_eval(self.step, sum(window) / len(window), self.validation_loss())
        loss = sum(losses) / len(losses)
        return EpochResult(epoch=epoch, step=self.step, loss=loss, val_loss=self.validation_loss())

    def _train_step(self) -> float:
        config = self.config
        inputs, targets = sample_batch(
            self.split.train, config.batch_size, config.block_size, self.generator
        )
        loss = language_model_loss(self.model, inputs, targets)
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        self.optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(f"training diverged at step {self.step}: loss {value}")
        return value

    def save_checkpoint(self, result: EpochResult, path: Path) -> Path:
        torch.save(
            {
                "epoch": result.epoch,
                "step": result.step,
                "model_state_dict": self.model.state_dict(),
                "optimizer_state_dict": self.optimizer.state_dict(),
                "loss": result.loss,
                "val_loss": result.val_loss,
            },
            path,
        )
        return path


@torch.no_grad()
def sample_text(
    model: Any,
    tokenizer: Any,
    prompt: str,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    seed: int,
) -> str:
    """A seeded sample of the continuation of `prompt`."""
    model.eval()
    torch.manual_seed(seed)
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(
        **inputs,
        do_sample=True,
        temperature=temperature,
        top_k=top_k,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.eos_token_id,
    )
    text: str = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :])
    return text
