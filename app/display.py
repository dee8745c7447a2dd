"""How values read for people: one place for the CLI (app/commands) and the web UI (app/ui).

Sizes in binary units (KiB, MiB, GiB), durations in µs/ms/s with three significant digits,
shapes as `[3, 512]`, timestamps as `2026-12-02 17:40 UTC`, and each verification check's key
figure beside the threshold it was held to.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

NONE = "—"
_BINARY_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")
_COMPACT_CHARS = 100


def binary_size(value: Any) -> str:
    """`1.7 MiB`, `192 KiB`, `512 B`: powers of 1024, three significant digits at most."""
    if not _is_number(value) or value < 0:
        return NONE
    if value < 1024:
        return f"{value:.0f} B"
    size = float(value)
    for unit in _BINARY_UNITS:
        size /= 1024
        if size < 1024 or unit == _BINARY_UNITS[-1]:
            break
    return f"{_significant(size)} {unit}"


def duration(seconds: Any) -> str:
    """`6 µs`, `2.18 ms`, `68.1 ms`, `1.23 s`, `754 s`."""
    if not _is_number(seconds) or not math.isfinite(seconds) or seconds < 0:
        return NONE
    if seconds == 0:
        return "0 s"
    for scale, unit in ((1e-6, "µs"), (1e-3, "ms")):
        if seconds < scale * 1000:
            return f"{_significant(seconds / scale)} {unit}"
    return f"{_significant(seconds)} s"


def shape(dims: Any) -> str:
    """`[3, 512]`; a scalar's empty shape reads `scalar`."""
    if not isinstance(dims, list | tuple):
        return NONE
    return "[" + ", ".join(str(d) for d in dims) + "]" if dims else "scalar"


def timestamp(value: Any, *, zone: bool = True) -> str:
    """`2026-12-02 17:40 UTC` from a datetime or an ISO 8601 string (naive means UTC)."""
    moment = as_utc(value)
    if moment is None:
        return NONE if value is None else str(value)
    text = moment.strftime("%Y-%m-%d %H:%M")
    return f"{text} UTC" if zone else text


def iso_utc(value: Any) -> str:
    """`2026-12-02T17:40:05Z`: the machine-readable twin of timestamp(), to the second."""
    moment = as_utc(value)
    if moment is None:
        return ""
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def as_utc(value: Any) -> datetime | None:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def number(value: Any) -> str:
    """Integers with thousands separators, floats with six significant digits."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def compact(value: Any) -> str:
    """A value on one line: numbers as number(), short lists and objects as inline JSON."""
    if isinstance(value, int | float | bool) or value is None:
        return number(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str, ensure_ascii=False)


def is_compact(value: Any) -> bool:
    return len(compact(value)) <= _COMPACT_CHARS


_TRAINING_PROGRESS = ("epoch", "step", "loss", "val_loss")
_TRAINING_SHOWN = {*_TRAINING_PROGRESS, "optimizer", "resumable", "model_key", "optimizer_key"}


def training_rows(training: dict[str, Any]) -> list[tuple[str, str]]:
    """A training state as (field, value) rows: progress, optimizer, one per hyper-parameter."""
    progress = [
        f"{key} {number(training[key])}"
        for key in _TRAINING_PROGRESS
        if training.get(key) is not None
    ]
    rows = [("progress", ", ".join(progress) or NONE)]
    optimizer = training.get("optimizer")
    if isinstance(optimizer, dict):
        rows.append(("optimizer", str(optimizer.get("type") or "unknown")))
        hyperparameters = optimizer.get("hyperparameters")
        if isinstance(hyperparameters, dict):
            rows += [(f"  {key}", _listed(value)) for key, value in hyperparameters.items()]
    resumable = training.get("resumable")
    if isinstance(resumable, dict):
        reasons = [str(reason) for reason in resumable.get("reasons") or []]
        rows.append(("resumable", "; ".join(["yes" if resumable.get("ok") else "no", *reasons])))
    rows += [
        (key, compact(value))
        for key, value in training.items()
        if key not in _TRAINING_SHOWN and value not in (None, {}, [])
    ]
    return rows


def _listed(value: Any) -> str:
    if isinstance(value, list | tuple) and all(_is_number(v) for v in value):
        return ", ".join(number(v) for v in value)
    return compact(value)


@dataclass(frozen=True)
class KeyFigure:
    """What one check measured (`max |Δlogit| 1.38`) and what it had to be (`≤ 1e-05`)."""

    figure: str
    threshold: str
    source: str | None = None


@dataclass(frozen=True)
class _Spec:
    metric: str  # a metrics key; dots reach into nested objects
    threshold: str  # a thresholds key
    label: str
    relation: str = "≤"
    bound: str = ""  # what the threshold bounds, where that is not the figure itself


# The figure each known check is judged on first; other checks fall back to _generic_figure.
_KEY_FIGURES: dict[str, tuple[_Spec, ...]] = {
    "integrity": (_Spec("mismatched", "mismatched", "mismatched blobs"),),
    "round_trip": (_Spec("total_epsilon", "total_epsilon", "ε"),),
    "load": (_Spec("parameters", "parameters", "parameters", "="),),
    "equivalence": (_Spec("max_abs_logit_diff", "max_abs_logit", "max |Δlogit|"),),
    "stability": (_Spec("max_variance", "max_variance", "max variance"),),
    "weights": (
        _Spec(
            "comparison.changed_beyond_tolerance",
            "max_relative_change",
            "changed tensors",
            bound="relative Δ",
        ),
        _Spec("non_finite_tensors", "non_finite_tensors", "non-finite tensors"),
    ),
    "resumability": (_Spec("step_ok", "step_ok", "optimizer step ok", "="),),
}


def key_figure(check: dict[str, Any]) -> KeyFigure:
    """The check's headline number and its threshold (`—` for a check that did not run)."""
    metrics, thresholds = check.get("metrics") or {}, check.get("thresholds") or {}
    if not isinstance(metrics, dict) or not isinstance(thresholds, dict):
        return KeyFigure(NONE, NONE)
    for spec in _KEY_FIGURES.get(str(check.get("name")), ()):
        value = _lookup(metrics, spec.metric)
        if value is not None:
            return _figure(spec, value, thresholds)
    return _generic_figure(metrics, thresholds)


def _figure(spec: _Spec, value: Any, thresholds: dict[str, Any]) -> KeyFigure:
    limit = thresholds.get(spec.threshold)
    bound = NONE if limit is None else f"{spec.relation} {_short(limit)}"
    if spec.bound and limit is not None:
        bound = f"{spec.bound} {bound}"
    return KeyFigure(f"{spec.label} {_short(value)}", bound, _source(thresholds, spec.threshold))


def _generic_figure(metrics: dict[str, Any], thresholds: dict[str, Any]) -> KeyFigure:
    """The first threshold with a metric of the same name (or without its max_/min_ prefix)."""
    for name, limit in thresholds.items():
        if name == "sources":
            continue
        bare = name.removeprefix("max_").removeprefix("min_")
        value = next((metrics[key] for key in (name, bare) if key in metrics), None)
        if value is not None:
            relation = "≥" if name.startswith("min_") else "≤" if name.startswith("max_") else "="
            figure = f"{bare.replace('_', ' ')} {_short(value)}"
            return KeyFigure(figure, f"{relation} {_short(limit)}", _source(thresholds, name))
    return KeyFigure(NONE, NONE)


def _source(thresholds: dict[str, Any], name: str) -> str | None:
    sources = thresholds.get("sources")
    source = sources.get(name) if isinstance(sources, dict) else None
    return str(source) if source else None


def _lookup(metrics: dict[str, Any], path: str) -> Any:
    value: Any = metrics
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _short(value: Any) -> str:
    """A figure for a summary line: four significant digits, lists by their length."""
    if isinstance(value, list):
        return str(len(value))
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:.4g}"
    return compact(value)


def _significant(value: float) -> str:
    text = f"{value:.3g}"
    return f"{value:.0f}" if "e" in text else text


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
