"""The demo, phase by phase: data, training with an upload per epoch, the final model, its
verification against outputs recorded here, and generation through the server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from app.client import Checkpoint, Client, GenerationParameters, RegistryError
from app.demo import report
from app.demo.corpus import generate_corpus, train_tokenizer
from app.demo.training import (
    EpochResult,
    Trainer,
    TrainingConfig,
    build_model,
    sample_text,
    split_tokens,
)

SAMPLE_PROMPT = "model"
# The same sampling before training (model.generate here) and after (the server's TGI route).
SAMPLING: GenerationParameters = {
    "do_sample": True,
    "temperature": 0.8,
    "top_k": 40,
    "seed": 0,
    "max_new_tokens": 60,
}
REFERENCE_PROMPTS = ["model vega, epoch", "the registry stored", "every tensor of"]
REFERENCE_NEW_TOKENS = 16
SUMMARY_FILE = "demo-summary.json"


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path
    url: str | None = None
    name: str = "demo-gpt2"
    training: TrainingConfig = field(default_factory=TrainingConfig)

    @property
    def train_name(self) -> str:
        return f"{self.name}-train"


def run_demo(options: DemoOptions, console: Console) -> int:
    """0 when every phase worked and the verification passed; 1 otherwise, saying why."""
    started = time.monotonic()
    options.workdir.mkdir(parents=True, exist_ok=True)
    try:
        with Client(options.url) as client:
            console.print(f"registry at {client.url}, files in {options.workdir}")
            client.health()
            summary = Demo(options, client, console).run()
    except RegistryError as exc:
        console.print(f"[red]registry error:[/red] {escape(str(exc))}", highlight=False)
        if exc.code == "unreachable":
            console.print("start the server first (`make serve`) or pass --url")
        return 1
    summary["seconds"] = round(time.monotonic() - started, 1)
    (options.workdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    console.rule(f"done in {summary['seconds']} s")
    return 0 if summary["verification"]["status"] == "passed" else 1


class Demo:
    def __init__(self, options: DemoOptions, client: Client, console: Console) -> None:
        self.options = options
        self.client = client
        self.console = console
        self.summary: dict[str, Any] = {"url": client.url, "workdir": str(options.workdir)}
        self.timings: dict[str, float] = {}

    def run(self) -> dict[str, Any]:
        from transformers.utils import logging as transformers_logging

        # A model this small gains nothing from a second intra-op thread, and on a busy machine
        # (the server's worker verifies each upload meanwhile) spinning threads cost 5x the CPU.
        torch.set_num_threads(1)
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        torch.manual_seed(self.options.training.seed)
        with self._timed("corpus and tokenizer"):
            tokenizer, tokens = self._corpus()
        with self._timed("model and first sample"):
            model = build_model(len(tokenizer), tokenizer.eos_token_id, self.options.training.seed)
            self._show_model(model)
            before = sample_text(model, tokenizer, SAMPLE_PROMPT, **_local_sampling())
        report.show_text(self.console, f"sample before training ({SAMPLE_PROMPT!r} ->):", before)
        with self._timed("training"):
            self._train(Trainer(model, split_tokens(tokens), self.options.training))
        with self._timed("final upload"):
            final = self._upload_final(model, tokenizer)
        with self._timed("verification"):
            self._verify(final)
        with self._timed("generation"):
            after = self._generate(final)
        self.console.rule("before and after training")
        report.show_text(self.console, "before training (local model.generate):", before)
        report.show_text(self.console, f"after training (server, {final.ref}):", after)
        self.summary["samples"] = {
            "prompt": SAMPLE_PROMPT,
            "before": report.visible(before),
            "after": report.visible(after),
        }
        self.console.print(
            "seconds: " + ", ".join(f"{name} {value:.1f}" for name, value in self.timings.items())
        )
        self.summary["timings"] = self.timings
        return self.summary

    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            spent = time.monotonic() - started
            self.timings[phase] = round(spent + self.timings.get(phase, 0.0), 2)

    def _corpus(self) -> tuple[Any, torch.Tensor]:
        self.console.rule("1. corpus and tokenizer")
        text = generate_corpus(seed=self.options.training.seed)
        (self.options.workdir / "corpus.txt").write_text(text)
        tokenizer = train_tokenizer(text)
        tokens = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
        self.console.print(
            f"{len(text):,} characters of generated sentences -> {len(tokens):,} tokens "
            f"with a byte-level BPE of {len(tokenizer)} entries; 90% train, 10% validation"
        )
        report.show_text(self.console, "the corpus starts:", text[:160] + "...")
        return tokenizer, tokens

    def _show_model(self, model: Any) -> None:
        self.console.rule("2. model")
        config = model.config
        count = sum(parameter.numel() for parameter in model.parameters())
        self.console.print(
            f"GPT-2: n_layer {config.n_layer}, n_embd {config.n_embd}, n_head {config.n_head}, "
            f"n_positions {config.n_positions}, vocab {config.vocab_size}: {count:,} parameters"
        )

    def _train(self, trainer: Trainer) -> None:
        config = trainer.config
        self.console.rule(
            f"3. training: {config.epochs} epochs x {config.steps_per_epoch} steps of "
            f"{config.batch_size} x {config.block_size} tokens, AdamW lr {config.learning_rate}"
        )
        self.console.print(f"step 0: val_loss {trainer.validation_loss():.4f}")
        table = report.epoch_table()
        epochs = []
        for epoch in range(1, config.epochs + 1):
            result = trainer.run_epoch(epoch, self._show_eval)
            checkpoint, best = self._upload_epoch(trainer, result)
            report.add_epoch_row(table, checkpoint, best)
            epochs.append(
                {"ref": checkpoint.ref, "val_loss": result.val_loss, "best_after": best.ref}
            )
        self.console.print(table)
        self.summary["epochs"] = epochs

    def _show_eval(self, step: int, train_loss: float, val_loss: float) -> None:
        self.console.print(f"step {step}: train loss {train_loss:.4f}, val_loss {val_loss:.4f}")

    def _upload_epoch(self, trainer: Trainer, result: EpochResult) -> tuple[Checkpoint, Checkpoint]:
        path = trainer.save_checkpoint(result, self.options.workdir / f"epoch-{result.epoch}.pt")
        # The config is sent because a state_dict alone only lets the registry guess n_head.
        with self._timed("epoch uploads (in training)"):
            checkpoint = self.client.upload(
                path, name=self.options.train_name, config=trainer.model.config.to_diff_dict()
            )
            best = self.client.get(f"{self.options.train_name}:best")
        best_loss = (best.training or {}).get("val_loss")
        self.console.print(
            f"epoch {result.epoch}: torch.save -> {path.name} uploaded as {checkpoint.ref}; "
            f"alias best -> {best.ref} (val_loss {best_loss:.4f})",
            highlight=False,
            soft_wrap=True,
        )
        return checkpoint, best

    def _upload_final(self, model: Any, tokenizer: Any) -> Checkpoint:
        self.console.rule("4. final model: save_pretrained, zipped, uploaded")
        folder = self.options.workdir / "final"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        final = self.client.upload(folder, name=self.options.name, deflate=True)
        self.console.print(report.checkpoint_summary(final), highlight=False)
        self.summary["final"] = final.ref
        return final

    def _verify(self, final: Checkpoint) -> None:
        from app.verify.reference_outputs import record_reference_outputs

        self.console.rule("5. verification against outputs recorded here")
        document = record_reference_outputs(
            self.options.workdir / "final",
            prompts=REFERENCE_PROMPTS,
            max_new_tokens=REFERENCE_NEW_TOKENS,
            weights_digest=final.weights_digest,
        )
        (self.options.workdir / "reference-outputs.json").write_text(json.dumps(document))
        self.console.print(
            f"recorded logits and {REFERENCE_NEW_TOKENS} greedy tokens for "
            f"{len(REFERENCE_PROMPTS)} prompts; asking the server to verify {final.ref}"
        )
        queued = self.client.verify(final.ref, reference=document)
        result = self.client.wait(queued.id, timeout=300, poll_seconds=0.2)
        self.console.print(report.verification_table(result))
        html = f"{self.client.url}/v1/verifications/{result.id}?format=html"
        self.console.print(f"the report for people: {html}", soft_wrap=True)
        self.summary["verification"] = {
            "id": result.id,
            "status": result.status,
            "checks": {str(check["name"]): check["status"] for check in result.checks},
        }

    def _generate(self, final: Checkpoint) -> str:
        self.console.rule(f"6. generation through the server (POST /models/{final.ref}/generate)")
        generation = self.client.generate(final.ref, SAMPLE_PROMPT, **SAMPLING)
        return generation.generated_text


def _local_sampling() -> dict[str, Any]:
    return {key: value for key, value in SAMPLING.items() if key != "do_sample"}
