"""Rich tables for people (the --json output is the client's models as they are)."""

from __future__ import annotations

from typing import Any

from rich.filesize import decimal
from rich.markup import escape
from rich.table import Table

from app.client import Checkpoint, CheckpointDiff, TensorList, Verification

_STATUS_STYLE = {
    "passed": "green",
    "ready": "green",
    "failed": "red",
    "error": "red",
    "not_applicable": "dim",
    "queued": "yellow",
    "running": "yellow",
    "pending": "yellow",
}


def status_text(status: str) -> str:
    style = _STATUS_STYLE.get(status, "")
    return f"[{style}]{status}[/{style}]" if style else status


def checkpoint_table(cp: Checkpoint) -> Table:
    table = Table(title=f"{cp.ref}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for field, value in _checkpoint_rows(cp):
        table.add_row(field, value)
    return table


def _checkpoint_rows(cp: Checkpoint) -> list[tuple[str, str]]:
    rows = [
        ("id", cp.id),
        ("status", status_text(cp.status) + (f" ({escape(cp.error)})" if cp.error else "")),
        ("aliases", ", ".join(cp.aliases) or "—"),
        ("format", cp.format + (f" ({escape(cp.filename)})" if cp.filename else "")),
        ("size", f"{decimal(cp.size_bytes)} ({cp.size_bytes:,} bytes)"),
        ("uncompressed", f"{decimal(cp.uncompressed_bytes)}, ratio {cp.compression_ratio:.3f}"),
        ("parameters", f"{cp.parameter_count:,} in {cp.tensor_count} tensors"),
        ("by dtype", _pairs(cp.parameters_by_dtype)),
        ("sha256", cp.sha256),
        ("weights digest", cp.weights_digest),
        ("files", escape(", ".join(f.path for f in cp.files))),
        ("created", cp.created_at.isoformat(timespec="seconds")),
    ]
    if cp.architecture:
        rows.append(("architecture", _pairs(cp.architecture)))
    if cp.training:
        rows.append(("training", _pairs(cp.training)))
    rows.append(("tokenizer", _pairs(cp.tokenizer) or "—"))
    if cp.metadata:
        rows.append(("metadata", _pairs(cp.metadata)))
    if cp.verification:
        verification = cp.verification
        rows.append(("verification", f"{status_text(verification['status'])} {verification['id']}"))
    return rows


def _pairs(values: dict[str, Any]) -> str:
    return escape(", ".join(f"{key}={_scalar(value)}" for key, value in values.items()))


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def checkpoints_table(items: list[Checkpoint]) -> Table:
    table = Table("ref", "aliases", "format", "status", "size", "parameters", "created", "verified")
    for column in table.columns:
        column.no_wrap = column.header in ("ref", "size", "parameters", "created")
    for cp in items:
        table.add_row(
            cp.ref,
            ", ".join(cp.aliases),
            cp.format,
            status_text(cp.status),
            decimal(cp.size_bytes),
            f"{cp.parameter_count:,}",
            cp.created_at.strftime("%m-%d %H:%M"),
            status_text(cp.verification["status"]) if cp.verification else "—",
        )
    return table


def tensors_table(listing: TensorList) -> Table:
    table = Table("name", "dtype", "shape", "numel", "bytes", "sha256", "file")
    for tensor in listing.tensors:
        table.add_row(
            escape(tensor.name),
            tensor.dtype,
            "×".join(map(str, tensor.shape)) or "scalar",
            f"{tensor.numel:,}",
            f"{tensor.nbytes:,}",
            tensor.sha256[:16],
            tensor.file,
        )
    return table


def diff_table(diff: CheckpointDiff) -> Table:
    summary = ", ".join(f"{count} {status}" for status, count in sorted(diff.summary.items()))
    table = Table("tensor", "status", "‖ΔW‖_F", "max |Δ|", "relative", "a", "b", title=summary)
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
    return "—" if value is None else f"{value:.4g}"


def _side(dtype: str | None, shape: list[int] | None) -> str:
    if dtype is None:
        return "—"
    return f"{dtype} {list(shape or [])}"


def report_table(report: Verification) -> Table:
    title = (
        f"verification {report.id} of {report.checkpoint.name}@{report.checkpoint.version}: "
        f"{status_text(report.status)}"
    )
    if report.device:
        title += f" on {report.device}"
    table = Table("check", "status", "s", "detail and metrics", title=title, title_justify="left")
    for check in report.checks:
        detail = escape(str(check.get("detail") or ""))
        metrics = _metrics(check.get("metrics") or {})
        table.add_row(
            str(check.get("name")),
            status_text(str(check.get("status"))),
            f"{check.get('seconds', 0):.2f}",
            detail + (f"\n[dim]{escape(metrics)}[/dim]" if metrics else ""),
        )
    return table


def _metrics(metrics: dict[str, Any], limit: int = 4) -> str:
    scalars = [(k, v) for k, v in metrics.items() if isinstance(v, int | float | str | bool)]
    return ", ".join(f"{key}={_scalar(value)}" for key, value in scalars[:limit])
