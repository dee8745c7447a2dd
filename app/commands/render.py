"""Rich tables for people (the --json output is the client's models as they are).

Values are formatted by app.display, the same functions the web UI uses: binary sizes, short
durations, `[3, 512]` shapes and `2026-12-02 17:40 UTC` timestamps in both places.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from app.client import Checkpoint, CheckpointDiff, TensorList, Verification
from app.display import (
    NONE,
    binary_size,
    compact,
    duration,
    key_figure,
    shape,
    timestamp,
    training_rows,
)

_STATUS_STYLE = {
    "passed": "green",
    "ready": "green",
    "failed": "red",
    "error": "red",
    "inconclusive": "magenta",
    "not_applicable": "dim",
    "queued": "yellow",
    "running": "yellow",
    "pending": "yellow",
}
# Below this console width `ckpt list` leaves out its least essential columns.
_WIDE_LIST = 110


def status_text(status: str) -> str:
    style = _STATUS_STYLE.get(status, "")
    text = escape(status.replace("_", " "))
    return f"[{style}]{text}[/{style}]" if style else text


def checkpoint_table(cp: Checkpoint) -> Table:
    table = Table(title=f"{cp.ref}", show_header=False, title_justify="left")
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for field, value in _checkpoint_rows(cp):
        table.add_row(field, value)
    return table


def _checkpoint_rows(cp: Checkpoint) -> list[tuple[str, str]]:
    rows = [
        ("id", cp.id),
        ("status", status_text(cp.status)),
        ("aliases", escape(", ".join(cp.aliases)) or NONE),
        ("format", cp.format + (f" ({escape(cp.filename)})" if cp.filename else "")),
        ("size", f"{binary_size(cp.size_bytes)} ({cp.size_bytes:,} bytes)"),
        (
            "uncompressed",
            f"{binary_size(cp.uncompressed_bytes)}, ratio {cp.compression_ratio:.3f}",
        ),
        ("parameters", f"{cp.parameter_count:,} in {cp.tensor_count} tensors"),
        ("by dtype", _pairs(cp.parameters_by_dtype)),
        ("sha256", cp.sha256),
        ("weights digest", cp.weights_digest),
        ("files", escape(", ".join(f.path for f in cp.files))),
        ("created", timestamp(cp.created_at)),
    ]
    if cp.architecture:
        rows += _architecture_rows(cp.architecture)
    if cp.training:
        rows += _training_rows(cp.training)
    rows.append(("tokenizer", _pairs(cp.tokenizer) or NONE))
    if cp.metadata:
        rows.append(("metadata", _pairs(cp.metadata)))
    if cp.verification:
        verification = cp.verification
        rows.append(("verification", f"{status_text(verification['status'])} {verification['id']}"))
    return rows


def _training_rows(training: dict[str, Any]) -> list[tuple[str, str]]:
    rows = training_rows(training)
    return [("training" if field == "progress" else escape(field), escape(v)) for field, v in rows]


# The family-neutral summary, as `ckpt show` prints it (GPT-2's alias fields and the nested
# records are shown on rows of their own or left to --json).
_ARCHITECTURE_SHOWN = (
    "model_type",
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "context_length",
    "tie_word_embeddings",
    "dtype",
)


def _architecture_rows(architecture: dict[str, Any]) -> list[tuple[str, str]]:
    shown = {key: architecture[key] for key in _ARCHITECTURE_SHOWN if key in architecture}
    if not shown:  # a summary written before the family-neutral fields: show what it has
        shown = {k: v for k, v in architecture.items() if not isinstance(v, dict | list)}
    rows = [("architecture", _pairs(shown))]
    positional = architecture.get("positional")
    if isinstance(positional, dict):
        scalars = {k: v for k, v in positional.items() if not isinstance(v, dict | list)}
        rows.append(("positions", _pairs(scalars)))
    layout = architecture.get("layout")
    if isinstance(layout, dict):
        added = len(layout.get("added_parameters") or [])
        rows.append(("layout", escape(f"{layout.get('name')} (mapped to GPT-2; {added} added)")))
    generation = architecture.get("generation")
    if isinstance(generation, dict):
        ids = {k: v for k, v in generation.items() if k.endswith("_token_id") and v is not None}
        rows.append(("generation", _pairs(ids) or NONE))
    source = str(architecture.get("config_source", ""))
    assumptions = architecture.get("assumptions") or []
    if assumptions:
        source += "; assumed: " + "; ".join(str(item) for item in assumptions)
    rows.append(("config", escape(source) or NONE))
    return rows


def _pairs(values: dict[str, Any]) -> str:
    return escape(", ".join(f"{key}={compact(value)}" for key, value in values.items()))


def checkpoints_table(items: list[Checkpoint], width: int = 80) -> Table:
    """`ckpt list`: format and parameter count only where the console is wide enough."""
    wide = width >= _WIDE_LIST
    table = _table()
    table.add_column("ref", no_wrap=True)
    table.add_column("aliases", overflow="fold")
    if wide:
        table.add_column("format", no_wrap=True)
    table.add_column("size", no_wrap=True, justify="right")
    if wide:
        table.add_column("parameters", no_wrap=True, justify="right")
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("verification", no_wrap=True)
    for cp in items:
        cells = [
            escape(cp.ref),
            escape(", ".join(cp.aliases)),
            *([cp.format] if wide else []),
            binary_size(cp.size_bytes),
            *([f"{cp.parameter_count:,}"] if wide else []),
            timestamp(cp.created_at, zone=False),
            status_text(cp.verification["status"]) if cp.verification else NONE,
        ]
        table.add_row(*cells)
    return table


def _table() -> Table:
    """A borderless table: the columns, not the frame, get the console's width."""
    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)


def tensors_table(listing: TensorList, width: int = 80) -> Table:
    """`ckpt tensors`: sha256 prefixes on wide consoles, files when there is more than one."""
    files = {tensor.file for tensor in listing.tensors}
    hashes = width >= _WIDE_LIST
    table = _table()
    table.add_column("name", overflow="fold")
    for header in ("dtype", "shape", "numel", "size", *(["sha256"] if hashes else [])):
        numeric = header in ("numel", "size")
        table.add_column(header, no_wrap=True, justify="right" if numeric else "left")
    if len(files) > 1:
        table.add_column("file", overflow="fold")
    for tensor in listing.tensors:
        cells = [
            escape(tensor.name),
            tensor.dtype,
            shape(tensor.shape),
            f"{tensor.numel:,}",
            binary_size(tensor.nbytes),
            *([tensor.sha256[:16]] if hashes else []),
        ]
        table.add_row(*cells, *([escape(tensor.file)] if len(files) > 1 else []))
    return table


def diff_table(diff: CheckpointDiff) -> Table:
    summary = ", ".join(f"{count} {status}" for status, count in sorted(diff.summary.items()))
    table = Table("tensor", "status", "‖ΔW‖_F", "max |Δ|", "relative", "a", "b", title=summary)
    table.columns[0].overflow = "fold"
    for row in diff.tensors:
        if row.status == "identical":
            continue
        table.add_row(
            escape(row.name),
            row.status,
            _number(row.frobenius_delta),
            _number(row.max_abs_diff),
            _number(row.relative_change),
            _side(row.dtype_a, row.shape_a),
            _side(row.dtype_b, row.shape_b),
        )
    return table


def _number(value: float | None) -> str:
    return NONE if value is None else f"{value:.4g}"


def _side(dtype: str | None, dims: list[int] | None) -> str:
    if dtype is None:
        return NONE
    return f"{dtype} {shape(list(dims or []))}"


def report_view(report: Verification) -> RenderableType:
    """`ckpt report`: the verdict line, one summary row per check, then each check's detail."""
    title = (
        f"verification {report.id} of {report.checkpoint.name}@{report.checkpoint.version}: "
        f"{status_text(report.status)}"
    )
    if report.device:
        title += f" on {escape(report.device)}"
    line = _summary_line(report)
    head = [Text.from_markup(title), *([Text(line)] if line else [])]
    return Group(_wrapped(head), report_table(report), _wrapped(_check_details(report)))


def _wrapped(lines: list[Text]) -> Table:
    """Lines in a grid, which (unlike bare text on the soft-wrapping console) fits the width."""
    grid = Table.grid()
    grid.add_column(overflow="fold")
    for line in lines:
        grid.add_row(line)
    return grid


def report_table(report: Verification) -> Table:
    table = _table()
    table.add_column("check", no_wrap=True)
    table.add_column("status", overflow="fold")
    table.add_column("key figure", overflow="fold")
    table.add_column("threshold", overflow="fold")
    table.add_column("time", no_wrap=True, justify="right")
    for check in report.checks:
        figure = key_figure(check)
        table.add_row(
            escape(str(check.get("name"))),
            status_text(str(check.get("status"))),
            escape(figure.figure),
            escape(figure.threshold),
            duration(check.get("seconds")),
        )
    return table


def _summary_line(report: Verification) -> str | None:
    summary = getattr(report, "summary", None)
    if isinstance(summary, dict):
        line = summary.get("line") or summary.get("reason")
        return str(line) if line else None
    return str(summary) if summary else None


def _check_details(report: Verification) -> list[Text]:
    details: list[Text] = []
    for check in report.checks:
        name = escape(str(check.get("name")))
        detail = escape(str(check.get("detail") or ""))
        metrics = _metrics(check.get("metrics") or {})
        if detail or metrics:
            line = f"[bold]{name}[/bold]: {detail}" + (
                f"\n  [dim]{escape(metrics)}[/dim]" if metrics else ""
            )
            details.append(Text.from_markup(line))
    return details


def _metrics(metrics: dict[str, Any], limit: int = 4) -> str:
    scalars = [(k, v) for k, v in metrics.items() if isinstance(v, int | float | str | bool)]
    return ", ".join(f"{key}={compact(value)}" for key, value in scalars[:limit])
