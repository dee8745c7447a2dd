"""A verification report prepared for templates/report.html: charts, continuations, metrics.

Works on the report's JSON (VerificationView.model_dump(mode="json")), so what the page shows
is exactly what the API returns.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from app.display import key_figure
from app.ui.charts import BarChart, horizontal_bars, natural_key, short_number

ACTIVE_STATUSES = ("queued", "running")
_LAYER = re.compile(r"^.*?\b(?:h|layers?|blocks?)\.\d+(?=\.)")


@dataclass(frozen=True)
class Token:
    text: str
    token_id: Any
    css: str


@dataclass(frozen=True)
class Continuation:
    label: str
    max_abs_logit_diff: Any
    top1_agreement: Any
    first_divergent_step: int | None
    subject: list[Token]
    reference: list[Token]
    as_text: bool  # decoded by the checkpoint's tokenizer; token ids where it has none


@dataclass(frozen=True)
class SummaryRow:
    """One line of the verdict summary: a check, its status, key figure and threshold."""

    name: str
    status: str
    figure: str
    threshold: str
    source: str | None


@dataclass(frozen=True)
class Threshold:
    name: str
    value: Any
    source: str | None


@dataclass
class CheckPanel:
    name: str
    status: str
    detail: str | None
    seconds: Any
    metrics: dict[str, Any]
    thresholds: list[Threshold]
    charts: list[tuple[str, BarChart]] = field(default_factory=list)
    continuations: list[Continuation] = field(default_factory=list)


def check_panels(report: dict[str, Any]) -> list[CheckPanel]:
    return [_panel(check) for check in _checks(report)]


def summary_rows(report: dict[str, Any]) -> list[SummaryRow]:
    rows = []
    for check in _checks(report):
        figure = key_figure(check)
        status = str(check.get("status") or "unknown")
        name = str(check.get("name") or "check")
        rows.append(SummaryRow(name, status, figure.figure, figure.threshold, figure.source))
    return rows


def summary_line(report: dict[str, Any]) -> str | None:
    """The report's verdict in words: its summary's line, or a reason it gives."""
    summary = report.get("summary")
    if isinstance(summary, dict):
        line = summary.get("line") or summary.get("reason")
    else:
        line = summary or report.get("reason")
    return str(line) if line else None


def _checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [check for check in report.get("checks") or [] if isinstance(check, dict)]


def report_title(report: dict[str, Any]) -> str:
    checkpoint = report.get("checkpoint") or {}
    name, version = checkpoint.get("name"), checkpoint.get("version")
    label = checkpoint.get("id") or "a checkpoint" if name is None else f"{name}@{version}"
    return f"Verification of {label}"


def frobenius_chart(rows: list[tuple[str, float | None]]) -> BarChart:
    """‖ΔW‖_F per tensor, in layer order."""
    ordered = sorted(rows, key=lambda row: natural_key(row[0]))
    return horizontal_bars([(name, value, short_number(value)) for name, value in ordered])


def layer_chart(rows: list[tuple[str, float | None]]) -> BarChart:
    """‖ΔW‖_F per layer: the root of the sum of its tensors' squared norms (None if any is)."""
    squares: dict[str, float | None] = {}
    for name, value in rows:
        layer = layer_of(name)
        total = squares.get(layer, 0.0)
        squares[layer] = None if value is None or total is None else total + value * value
    ordered = sorted(squares.items(), key=lambda item: natural_key(item[0]))
    norms = [(layer, None if sq is None else math.sqrt(sq)) for layer, sq in ordered]
    return horizontal_bars([(layer, norm, short_number(norm)) for layer, norm in norms])


def layer_of(tensor_name: str) -> str:
    """`transformer.h.3.mlp.c_fc.weight` → `transformer.h.3`; otherwise the owning module."""
    match = _LAYER.match(tensor_name)
    return match[0] if match else tensor_name.rpartition(".")[0] or tensor_name


def _panel(check: dict[str, Any]) -> CheckPanel:
    metrics = dict(check.get("metrics") or {})
    panel = CheckPanel(
        name=str(check.get("name") or "check"),
        status=str(check.get("status") or "unknown"),
        detail=str(check["detail"]) if check.get("detail") else None,
        seconds=check.get("seconds"),
        metrics=metrics,
        thresholds=_thresholds(check.get("thresholds")),
    )
    if panel.name == "weights":
        _weights_chart(panel)
    elif panel.name == "equivalence" and isinstance(metrics.get("per_prompt"), list):
        _equivalence_views(panel, [e for e in metrics.pop("per_prompt") if isinstance(e, dict)])
    return panel


def _thresholds(thresholds: Any) -> list[Threshold]:
    """Each threshold with where it came from (`sources`, when the report records them)."""
    if not isinstance(thresholds, dict):
        return []
    sources = thresholds.get("sources")
    sources = sources if isinstance(sources, dict) else {}
    return [
        Threshold(name, value, str(sources[name]) if sources.get(name) else None)
        for name, value in thresholds.items()
        if name != "sources"
    ]


def _weights_chart(panel: CheckPanel) -> None:
    comparison = panel.metrics.get("comparison")
    if not isinstance(comparison, dict) or not isinstance(comparison.get("changed_tensors"), list):
        return
    changed = [t for t in comparison["changed_tensors"] if isinstance(t, dict)]
    panel.metrics["comparison"] = {k: v for k, v in comparison.items() if k != "changed_tensors"}
    rows = [(str(t.get("name")), _number(t.get("frobenius_diff"))) for t in changed]
    if rows:
        identical = comparison.get("identical_tensors", 0)
        panel.charts.append(("‖ΔW‖_F per layer (changed tensors)", layer_chart(rows)))
        title = f"‖ΔW‖_F per changed tensor ({identical} identical tensors not drawn)"
        panel.charts.append((title, frobenius_chart(rows)))


def _equivalence_views(panel: CheckPanel, per_prompt: list[dict[str, Any]]) -> None:
    panel.charts.append(("|Δlogit| per position", _logit_chart(per_prompt)))
    panel.continuations = [_continuation(entry) for entry in per_prompt]


def _logit_chart(per_prompt: list[dict[str, Any]]) -> BarChart:
    """Per position where the report has it, else the per-prompt maximum and mean."""
    rows: list[tuple[str, float | None, str]] = []
    for entry in per_prompt:
        index = entry.get("index")
        by_position = entry.get("max_abs_logit_diff_by_position")
        if isinstance(by_position, list):
            rows.extend(
                (f"prompt {index} · position {position}", _number(value), short_number(value))
                for position, value in enumerate(by_position)
            )
            continue
        mean = _number(entry.get("mean_abs_logit_diff"))
        value = _number(entry.get("max_abs_logit_diff"))
        text = f"max {short_number(value)} · mean {short_number(mean)}"
        rows.append((f"prompt {index} (all positions)", value, text))
    return horizontal_bars(rows)


def _continuation(entry: dict[str, Any]) -> Continuation:
    step = entry.get("first_divergent_step")
    step = step if isinstance(step, int) else None
    prompt = entry.get("prompt_text")
    return Continuation(
        label=f"#{entry.get('index')}" + (f": {prompt}" if prompt else ""),
        max_abs_logit_diff=entry.get("max_abs_logit_diff"),
        top1_agreement=entry.get("top1_agreement"),
        first_divergent_step=step,
        subject=_tokens(entry, "subject", step),
        reference=_tokens(entry, "reference", step),
        as_text=_has_pieces(entry, "subject") and _has_pieces(entry, "reference"),
    )


def _has_pieces(entry: dict[str, Any], side: str) -> bool:
    pieces, ids = entry.get(f"{side}_pieces"), entry.get(f"{side}_continuation") or []
    return isinstance(pieces, list) and len(pieces) == len(ids)


def _tokens(entry: dict[str, Any], side: str, step: int | None) -> list[Token]:
    """The continuation token by token; the first divergent token marked, the rest dimmed."""
    ids = entry.get(f"{side}_continuation") or []
    pieces = entry.get(f"{side}_pieces") if _has_pieces(entry, side) else None
    if pieces is None:
        pieces = [str(token) for token in ids]
    tokens = [
        Token(str(piece), token, _token_css(position, step))
        for position, (piece, token) in enumerate(zip(pieces, ids, strict=True))
    ]
    if step is not None and step >= len(ids):
        tokens.append(Token("∅", "ends here", "token diverged"))
    return tokens


def _token_css(position: int, step: int | None) -> str:
    if step is None or position < step:
        return "token"
    return "token diverged" if position == step else "token after"


def _number(value: Any) -> float | None:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if is_number else None
