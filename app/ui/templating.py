"""The Jinja environment of the web UI: autoescape always on, a few formatting filters."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader

from app.display import (
    binary_size,
    compact,
    duration,
    is_compact,
    iso_utc,
    number,
    shape,
    timestamp,
)
from app.ui.report import (
    ACTIVE_STATUSES,
    check_panels,
    report_title,
    summary_line,
    summary_rows,
)

UI_DIR = Path(__file__).resolve().parent
TEMPLATE_DIR = UI_DIR / "templates"
STATIC_DIR = UI_DIR / "static"
MAX_VALUE_CHARS = 2000
_CSS_SAFE = re.compile(r"[^a-z0-9_-]+")


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        number=number,
        size=binary_size,
        duration=duration,
        shape=shape,
        when=timestamp,
        iso=iso_utc,
        fits_on_a_line=is_compact,
        value=format_value,
        status_class=status_class,
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
        "summary_rows": summary_rows(report),
        "summary_line": summary_line(report),
        "active": report.get("status") in ACTIVE_STATUSES,
    }


def format_value(value: Any) -> str:
    """A metric for a table cell: one line where it fits (`[3, 512]`), else indented JSON."""
    if isinstance(value, str) or is_compact(value):
        text = compact(value)
    else:
        text = json.dumps(value, indent=1, default=str, ensure_ascii=False)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + " …"


def status_class(status: Any) -> str:
    """`status-<name>` for any status, so a new one gets its own class without a change here."""
    return "status-" + (_CSS_SAFE.sub("-", str(status).lower()) or "unknown")
