"""Chart geometry for server-rendered inline SVG: plain numbers, drawn by templates/_charts.html.

The templates autoescape every label, so values and names taken from reports stay text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

BAR_HEIGHT = 16
BAR_GAP = 4
LABEL_WIDTH = 300
PLOT_WIDTH = 420
VALUE_WIDTH = 200
MAX_LABEL_CHARS = 44
LINE_WIDTH, LINE_HEIGHT = 1000, 360
TICK_CHAR_WIDTH = 7  # px per character of an 11px tick label, generously
MAX_X_TICKS = 12
_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class Bar:
    label: str
    title: str
    value: float | None
    text: str
    y: float
    length: float


@dataclass(frozen=True)
class BarChart:
    bars: list[Bar]
    width: int
    height: int
    label_width: int
    bar_height: int


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    px: float
    py: float
    label: str


@dataclass(frozen=True)
class Series:
    name: str
    css_class: str
    points: list[Point]
    path: str


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class LineChart:
    """Drawn in a viewBox of width × height that the page stretches to its full width."""

    width: int
    height: int
    left: float  # the plot's edges: room for the tick labels outside them
    right: float
    top: float
    bottom: float
    series: list[Series]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    marker: Point | None
    marker_label: str
    marker_anchor: str  # "start", or "end" where the label would run past the right edge


def natural_key(text: str) -> list[int | str]:
    """Sort key that puts h.2 before h.10, so tensors come out layer by layer."""
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(text)]


def short_number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def horizontal_bars(rows: Sequence[tuple[str, float | None, str]]) -> BarChart:
    """One bar per (label, value, annotation); None (not finite) draws no bar."""
    finite = [value for _, value, _ in rows if value is not None and math.isfinite(value)]
    top = max(finite, default=0.0)
    bars = [
        Bar(
            label=_shorten(label),
            title=label,
            value=value,
            text=text,
            y=index * (BAR_HEIGHT + BAR_GAP),
            length=_scaled(value, top, PLOT_WIDTH),
        )
        for index, (label, value, text) in enumerate(rows)
    ]
    return BarChart(
        bars=bars,
        width=LABEL_WIDTH + PLOT_WIDTH + VALUE_WIDTH,
        height=max(len(bars) * (BAR_HEIGHT + BAR_GAP), BAR_HEIGHT),
        label_width=LABEL_WIDTH,
        bar_height=BAR_HEIGHT,
    )


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    *,
    marked: tuple[float, float] | None = None,
    marker_label: str = "",
) -> LineChart:
    """Lines over a shared x axis (e.g. epochs); `marked` gets a ring and a label.

    Both axes run between round tick values ("nice numbers"), so every point lies inside them.
    """
    points = [point for values in series.values() for point in values]
    if marked is not None:
        points.append(marked)
    xs, ys = [x for x, _ in points] or [0.0], [y for _, y in points] or [0.0]
    x_values = _x_ticks(xs)
    y_values = nice_ticks(min(ys), max(ys))
    left = 24 + TICK_CHAR_WIDTH * max(len(label) for label in tick_labels(y_values))
    scale = _Scale(
        (left, LINE_WIDTH - 24, 28, LINE_HEIGHT - 44),
        (x_values[0], x_values[-1], y_values[0], y_values[-1]),
    )
    drawn = [
        _series(name, f"series-{index}", values, scale)
        for index, (name, values) in enumerate(series.items())
        if values
    ]
    marker = scale.point(*marked) if marked is not None else None
    label_end = (marker.px if marker else 0) + 12 + TICK_CHAR_WIDTH * len(marker_label)
    return LineChart(
        width=LINE_WIDTH,
        height=LINE_HEIGHT,
        left=scale.left,
        right=scale.right,
        top=scale.top,
        bottom=scale.bottom,
        series=drawn,
        x_ticks=_ticks(scale.px, x_values),
        y_ticks=_ticks(scale.py, y_values),
        marker=marker,
        marker_label=marker_label,
        marker_anchor="end" if label_end > LINE_WIDTH else "start",
    )


def _ticks(position: Callable[[float], float], values: list[float]) -> list[Tick]:
    return [Tick(position(v), label) for v, label in zip(values, tick_labels(values), strict=True)]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round values covering [low, high], about `count` of them, 1, 2, 2.5 or 5 × 10^k apart."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high == low:
        low, high = (low - 1, high + 1) if low == 0 else (low - abs(low) / 2, high + abs(high) / 2)
    step = _nice_step((high - low) / max(count - 1, 1))
    first, last = math.floor(low / step), math.ceil(high / step)
    return [_round(index * step, step) for index in range(first, last + 1)]


def tick_labels(values: list[float]) -> list[str]:
    """Every label with the decimals the step between ticks needs, no more."""
    decimals = next(
        (
            d
            for d in range(10)
            if all(abs(round(v, d) - v) <= 1e-9 * max(1, abs(v)) for v in values)
        ),
        10,
    )
    return [f"{value:,.{decimals}f}" for value in values]


def _exact(value: float, decimals: int) -> bool:
    return abs(round(value, decimals) - value) <= 1e-9 * max(1.0, abs(value))


def _x_ticks(xs: list[float]) -> list[float]:
    """Each whole x (epoch) while there are few of them, else nice ticks over the range."""
    low, high = min(xs), max(xs)
    if all(float(x).is_integer() for x in xs) and high - low + 1 <= MAX_X_TICKS and high > low:
        return [float(x) for x in range(int(low), int(high) + 1)]
    return nice_ticks(low, high, count=8)


def _nice_step(raw: float) -> float:
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if raw <= m * magnitude * (1 + 1e-9))


def _round(value: float, step: float) -> float:
    """Cancel float noise (0.30000000000000004) at a precision finer than the step."""
    return round(value, max(0, 2 - math.floor(math.log10(step))))


class _Scale:
    def __init__(
        self, box: tuple[float, float, float, float], domain: tuple[float, float, float, float]
    ) -> None:
        self.left, self.right, self.top, self.bottom = box
        x_min, x_max, y_min, y_max = domain
        self.x_min, self.x_span = x_min, (x_max - x_min) or 1.0
        self.y_min, self.y_span = y_min, (y_max - y_min) or 1.0

    def px(self, x: float) -> float:
        return round(self.left + (x - self.x_min) / self.x_span * (self.right - self.left), 2)

    def py(self, y: float) -> float:
        return round(self.bottom - (y - self.y_min) / self.y_span * (self.bottom - self.top), 2)

    def point(self, x: float, y: float) -> Point:
        return Point(x, y, self.px(x), self.py(y), f"{x:g}: {short_number(y)}")


def _series(name: str, css_class: str, values: list[tuple[float, float]], scale: _Scale) -> Series:
    points = [scale.point(x, y) for x, y in sorted(values)]
    path = " ".join(
        f"{'M' if index == 0 else 'L'}{point.px},{point.py}" for index, point in enumerate(points)
    )
    return Series(name=name, css_class=css_class, points=points, path=path)


def _scaled(value: float | None, top: float, width: int) -> float:
    if value is None or not math.isfinite(value) or top <= 0:
        return 0.0
    return round(max(value, 0.0) / top * width, 2)


def _shorten(label: str) -> str:
    return label if len(label) <= MAX_LABEL_CHARS else "…" + label[-(MAX_LABEL_CHARS - 1) :]
