"""How the demo shows what happens: rich tables and plain, unwrapped text for samples."""

from __future__ import annotations

import unicodedata
from typing import Any

from rich.console import Console
from rich.table import Table

from app.client import Checkpoint, Verification

VERDICT_STYLES = {"passed": "green", "failed": "red", "error": "red", "not_applicable": "dim"}


def visible(text: str) -> str:
    """Control characters (an untrained model emits some) as U+FFFD, so terminals show them."""
    return "".join(
        char if char == "\n" or not unicodedata.category(char).startswith("C") else "\ufffd"
        for char in text
    )


def show_text(console: Console, label: str, text: str) -> None:
    """A sample as generated: no markup, emoji codes or wrapping, so it can be read back."""
    console.print(f"[bold]{label}[/bold]")
    console.print(visible(text), markup=False, emoji=False, highlight=False, soft_wrap=True)


def epoch_table() -> Table:
    table = Table(title="training checkpoints", title_justify="left")
    for column in ("epoch", "step", "loss", "val_loss", "uploaded as", "best"):
        table.add_column(column)
    return table


def add_epoch_row(table: Table, checkpoint: Checkpoint, best: Checkpoint) -> None:
    training = checkpoint.training or {}
    moved = "[green]-> this one[/green]" if best.id == checkpoint.id else f"stays {best.ref}"
    table.add_row(
        str(training.get("epoch")),
        str(training.get("step")),
        _loss(training.get("loss")),
        _loss(training.get("val_loss")),
        checkpoint.ref + ("" if checkpoint.created else " (already stored)"),
        moved,
    )


def checkpoint_summary(checkpoint: Checkpoint) -> str:
    architecture = checkpoint.architecture or {}
    shape = ", ".join(
        f"{key} {architecture[key]}"
        for key in ("n_layer", "n_embd", "n_head", "vocab_size")
        if key in architecture
    )
    return (
        f"{checkpoint.ref}: {checkpoint.format}, {checkpoint.size_bytes:,} bytes "
        f"(compression {checkpoint.compression_ratio:.2f}), "
        f"{checkpoint.parameter_count:,} parameters, {shape}; "
        f"weights digest {checkpoint.weights_digest[:16]}..."
    )


def verification_table(report: Verification) -> Table:
    table = Table(title=f"verification {report.id}: {report.status}", title_justify="left")
    for column in ("check", "verdict", "seconds", "detail"):
        table.add_column(column)
    for check in report.checks:
        status = str(check.get("status"))
        style = VERDICT_STYLES.get(status, "")
        table.add_row(
            str(check.get("name")),
            f"[{style}]{status}[/{style}]" if style else status,
            f"{float(check.get('seconds') or 0):.2f}",
            _short(str(check.get("detail") or "")),
        )
    return table


def _loss(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _short(text: str, limit: int = 70) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
