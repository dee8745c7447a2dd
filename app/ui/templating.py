"""The Jinja environment of the web UI: autoescape always on, a few formatting filters."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader

from app.ui.report import ACTIVE_STATUSES, check_panels, report_title

UI_DIR = Path(__file__).resolve().parent
TEMPLATE_DIR = UI_DIR / "templates"
STATIC_DIR = UI_DIR / "static"
MAX_VALUE_CHARS = 2000
STATUS_CLASSES = {"passed", "failed", "error", "not_applicable", "queued", "running", "ready"}


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        number=format_number, size=format_size, value=format_value, status_class=status_class
    )
    env.globals["inline_css"] = inline_css
    return env


@cache
def inline_css() -> str:
    return (STATIC_DIR / "ui.css").read_text(encoding="utf-8")


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def render_report_html(report: dict[str, Any]) -> str:
    """The report as one self-contained page (inline CSS, no scripts, no links to assets)."""
    return render("report.html", **report_context(report), standalone=True)


def report_context(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "report": report,
        "title": report_title(report),
        "panels": check_panels(report),
        "active": report.get("status") in ACTIVE_STATUSES,
    }


def format_number(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_size(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_value(value: Any) -> str:
    """A metric for a table cell: numbers compact, structures as indented JSON, capped."""
    if isinstance(value, int | float | bool) or value is None:
        return format_number(value)
    text = value if isinstance(value, str) else json.dumps(value, indent=1, default=str)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + " …"


def status_class(status: Any) -> str:
    return f"status-{status}" if status in STATUS_CLASSES else "status-other"
