"""Chart geometry for server-rendered inline SVG: plain numbers, drawn by templates/_charts.html.

The templates autoescape every label, so values and names taken from reports stay text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

BAR_HEIGHT = 16
BAR_GAP = 4
LABEL_WIDTH = 300
PLOT_WIDTH = 420
VALUE_WIDTH = 200
MAX_LABEL_CHARS = 44
LINE_WIDTH, LINE_HEIGHT, LINE_MARGIN = 640, 300, 48
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
    width: int
    height: int
    margin: int
    series: list[Series]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    marker: Point | None
    marker_label: str


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
    """Lines over a shared x axis (e.g. epochs); `marked` gets a ring and a label."""
    points = [point for values in series.values() for point in values]
    if marked is not None:
        points.append(marked)
    xs, ys = [x for x, _ in points] or [0.0], [y for _, y in points] or [0.0]
    scale = _Scale(min(xs), max(xs), min(ys), max(ys))
    drawn = [
        _series(name, f"series-{index}", values, scale)
        for index, (name, values) in enumerate(series.items())
        if values
    ]
    return LineChart(
        width=LINE_WIDTH,
        height=LINE_HEIGHT,
        margin=LINE_MARGIN,
        series=drawn,
        x_ticks=[Tick(scale.px(x), f"{x:g}") for x in sorted(set(xs))][:20],
        y_ticks=[Tick(scale.py(y), short_number(y)) for y in scale.y_ticks()],
        marker=scale.point(*marked) if marked is not None else None,
        marker_label=marker_label,
    )


class _Scale:
    def __init__(self, x_min: float, x_max: float, y_min: float, y_max: float) -> None:
        self.x_min, self.x_span = x_min, (x_max - x_min) or 1.0
        self.y_min, self.y_span = y_min, (y_max - y_min) or 1.0

    def px(self, x: float) -> float:
        inner = LINE_WIDTH - 2 * LINE_MARGIN
        return round(LINE_MARGIN + (x - self.x_min) / self.x_span * inner, 2)

    def py(self, y: float) -> float:
        inner = LINE_HEIGHT - 2 * LINE_MARGIN
        return round(LINE_HEIGHT - LINE_MARGIN - (y - self.y_min) / self.y_span * inner, 2)

    def point(self, x: float, y: float) -> Point:
        return Point(x, y, self.px(x), self.py(y), f"{x:g}: {short_number(y)}")

    def y_ticks(self, count: int = 5) -> list[float]:
        return [self.y_min + self.y_span * step / (count - 1) for step in range(count)]


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
