"""A verification report as one self-contained HTML page (inline CSS, no scripts, no assets).

Every value that comes from the report is passed through html.escape: details, tensor names and
decoded continuations are user-influenced text.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

_STATUS_COLOURS = {
    "passed": "#1a7f37",
    "failed": "#cf222e",
    "error": "#9a6700",
    "not_applicable": "#6e7781",
    "queued": "#6e7781",
    "running": "#0969da",
}
_MAX_VALUE_CHARS = 2000
_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1f2328; }
header { border-bottom: 1px solid #d0d7de; margin-bottom: 1.5rem; }
h1 { font-size: 1.6rem; margin: 0 0 .5rem; }
h2 { font-size: 1.25rem; margin: 0; display: inline; }
h3 { font-size: 1rem; margin: 1rem 0 .3rem; }
section { border: 1px solid #d0d7de; border-radius: 8px; padding: 1rem 1.25rem;
          margin-bottom: 1.25rem; }
.badge { display: inline-block; color: #fff; border-radius: 1em; padding: .05em .7em;
         font-size: .85rem; font-weight: 600; vertical-align: middle; margin-left: .5em; }
.verdict { font-size: 1.1rem; padding: .2em .9em; }
.detail { margin: .6rem 0; }
.error { color: #cf222e; white-space: pre-wrap; }
table { border-collapse: collapse; margin: .3rem 0 .8rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.value { font-family: ui-monospace, monospace; font-size: .85rem; white-space: pre-wrap;
           word-break: break-word; max-width: 50rem; }
.tokens { font-family: ui-monospace, monospace; font-size: .85rem; white-space: pre-wrap; }
.token { border-right: 1px dotted #d0d7de; }
.diverged { background: #ffebe9; outline: 2px solid #cf222e; font-weight: 700; }
.after { color: #6e7781; }
.muted { color: #6e7781; }
"""


def render_report_html(report: dict[str, Any]) -> str:
    checkpoint = report.get("checkpoint") or {}
    title = f"Verification of {_checkpoint_label(checkpoint)}"
    checks = report.get("checks") or []
    body = [
        _header(report, title),
        *(_check_section(check) for check in checks if isinstance(check, dict)),
    ]
    if not checks:
        body.append('<p class="muted">No check results yet.</p>')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _checkpoint_label(checkpoint: dict[str, Any]) -> str:
    name, version = checkpoint.get("name"), checkpoint.get("version")
    if name is None:
        return str(checkpoint.get("id") or "a checkpoint")
    return f"{name}@{version}" if version is not None else str(name)


def _header(report: dict[str, Any], title: str) -> str:
    status = str(report.get("status") or "unknown")
    facts = {
        "Report": report.get("id"),
        "Checkpoint id": (report.get("checkpoint") or {}).get("id"),
        "Device": report.get("device"),
        "Created": report.get("created_at"),
        "Finished": report.get("finished_at"),
    }
    rows = [(key, value) for key, value in facts.items() if value is not None]
    parts = [
        "<header>",
        f"<h1>{escape(title)}{_badge(status, 'verdict')}</h1>",
        _table(("", ""), rows, header=False),
    ]
    if report.get("error"):
        parts.append(f'<p class="error">{escape(str(report["error"]))}</p>')
    versions = report.get("library_versions") or {}
    if versions:
        parts.append("<h3>Library versions</h3>" + _table(("Library", "Version"), versions.items()))
    timings = report.get("timings") or {}
    if timings:
        parts.append("<h3>Timings</h3>" + _table(("Phase", "Seconds"), timings.items()))
    parts.append("</header>")
    return "\n".join(parts)


def _check_section(check: dict[str, Any]) -> str:
    name = str(check.get("name") or "check")
    status = str(check.get("status") or "unknown")
    metrics = check.get("metrics") or {}
    thresholds = check.get("thresholds") or {}
    parts = [
        f'<section id="check-{escape(name)}">',
        f"<h2>{escape(name)}</h2>{_badge(status)}",
        f'<span class="muted"> {_seconds(check.get("seconds"))}</span>',
    ]
    if check.get("detail"):
        parts.append(f'<p class="detail">{escape(str(check["detail"]))}</p>')
    if name == "equivalence" and isinstance(metrics.get("per_prompt"), list):
        parts.append(_continuations(metrics["per_prompt"]))
        metrics = {key: value for key, value in metrics.items() if key != "per_prompt"}
    if metrics:
        parts.append("<h3>Metrics</h3>" + _table(("Metric", "Value"), metrics.items()))
    if thresholds:
        parts.append("<h3>Thresholds</h3>" + _table(("Threshold", "Value"), thresholds.items()))
    parts.append("</section>")
    return "\n".join(parts)


def _continuations(per_prompt: list[Any]) -> str:
    rows = []
    for entry in per_prompt:
        if not isinstance(entry, dict):
            continue
        step = entry.get("first_divergent_step")
        prompt = entry.get("prompt_text")
        label = f"#{entry.get('index')}" + (f": {prompt}" if prompt else "")
        rows.append(
            "<tr>"
            f"<td>{escape(label)}</td>"
            f"<td>{_number_cell(entry.get('max_abs_logit_diff'))}</td>"
            f"<td>{_number_cell(entry.get('top1_agreement'))}</td>"
            f"<td>{escape('—' if step is None else str(step))}</td>"
            f'<td class="tokens">{_tokens(entry, "subject", step)}</td>'
            f'<td class="tokens">{_tokens(entry, "reference", step)}</td>'
            "</tr>"
        )
    head = "".join(
        f"<th>{escape(title)}</th>"
        for title in (
            "Prompt",
            "max |Δlogit|",
            "top-1",
            "First divergent step",
            "Subject continuation",
            "Reference continuation",
        )
    )
    return f"<h3>Greedy continuations</h3><table><tr>{head}</tr>{''.join(rows)}</table>"


def _tokens(entry: dict[str, Any], side: str, step: Any) -> str:
    """The continuation token by token; the first divergent token highlighted, the rest dimmed."""
    pieces = entry.get(f"{side}_pieces")
    ids = entry.get(f"{side}_continuation") or []
    if not isinstance(pieces, list) or len(pieces) != len(ids):
        pieces = [f"[{token}]" for token in ids]
    spans = []
    for position, (piece, token) in enumerate(zip(pieces, ids, strict=True)):
        css = "token"
        if isinstance(step, int) and position == step:
            css += " diverged"
        elif isinstance(step, int) and position > step:
            css += " after"
        spans.append(
            f'<span class="{css}" title="id {escape(str(token))}">{escape(str(piece))}</span>'
        )
    if isinstance(step, int) and step >= len(ids):
        spans.append('<span class="token diverged" title="ends here">∅</span>')
    return "".join(spans) or '<span class="muted">(empty)</span>'


def _table(headings: tuple[str, str], rows: Any, *, header: bool = True) -> str:
    head = "".join(f"<th>{escape(text)}</th>" for text in headings) if header else ""
    body = "".join(
        f'<tr><th>{escape(str(key))}</th><td class="value">{_value(value)}</td></tr>'
        for key, value in rows
    )
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return escape(f"{value:.6g}")
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, bool | int):
        text = json.dumps(value)
    else:
        text = json.dumps(value, indent=1, default=str, ensure_ascii=False)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[:_MAX_VALUE_CHARS] + " …"
    return escape(text)


def _number_cell(value: Any) -> str:
    return _value(value) if isinstance(value, int | float) else "—"


def _badge(status: str, extra_class: str = "") -> str:
    colour = _STATUS_COLOURS.get(status, "#6e7781")
    label = status.replace("_", " ")
    return f'<span class="badge {extra_class}" style="background:{colour}">{escape(label)}</span>'


def _seconds(value: Any) -> str:
    return escape(f"({value:.3f} s)") if isinstance(value, int | float) else ""
