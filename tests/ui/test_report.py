"""The report view and the chart geometry the templates draw, on hand-made report documents."""

from __future__ import annotations

import re
from typing import Any

import pytest

from app.ui.charts import PLOT_WIDTH, horizontal_bars, line_chart
from app.ui.report import check_panels, frobenius_chart, layer_chart
from app.ui.templating import render_report_html

HOSTILE = "<img src=x onerror=alert(1)>"


def report(status: str, checks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": "r1", "status": status, "checkpoint": {"id": "c1"}, "checks": checks}


def test_bars_are_proportional_and_unknown_values_draw_nothing() -> None:
    chart = horizontal_bars([("a", 2.0, "2"), ("b", 1.0, "1"), ("c", None, "—")])
    assert [bar.length for bar in chart.bars] == [PLOT_WIDTH, PLOT_WIDTH / 2, 0.0]
    assert chart.bars[1].y > chart.bars[0].y
    long_name = "transformer." + "x" * 80 + ".weight"
    bar = horizontal_bars([(long_name, 1.0, "1")]).bars[0]
    assert bar.title == long_name and bar.label.endswith(".weight") and len(bar.label) < 50


def test_weight_deltas_are_drawn_layer_by_layer() -> None:
    rows = [("h.10.w", 1.0), ("h.2.w", 3.0), ("h.1.w", 2.0)]
    assert [bar.title for bar in frobenius_chart(rows).bars] == ["h.1.w", "h.2.w", "h.10.w"]


def test_layer_norms_combine_their_tensors() -> None:
    rows = [("m.h.1.a.weight", 3.0), ("m.h.1.b.weight", 4.0), ("m.h.0.a.weight", 1.0)]
    rows.append(("m.wte.weight", None))
    chart = layer_chart(rows)
    assert [(bar.title, bar.value) for bar in chart.bars] == [
        ("m.h.0", 1.0),
        ("m.h.1", 5.0),  # sqrt(3² + 4²)
        ("m.wte", None),
    ]


def test_line_chart_marks_the_best_point() -> None:
    chart = line_chart({"val_loss": [(2, 1.5), (1, 3.0)]}, marked=(2, 1.5), marker_label="best")
    first, second = chart.series[0].points
    assert (first.x, second.x) == (1, 2)  # sorted by epoch
    assert second.py > first.py  # the lower loss lies lower on the page
    assert chart.marker == second
    assert chart.series[0].path == f"M{first.px},{first.py} L{second.px},{second.py}"


def test_logit_differences_per_position_when_the_report_has_them() -> None:
    entry = {
        "index": 0,
        "max_abs_logit_diff": 0.5,
        "max_abs_logit_diff_by_position": [0.0, 0.5],
        "first_divergent_step": 2,
        "subject_continuation": [5, 6],
        "reference_continuation": [5, 6, 7],
        "subject_pieces": ["a", HOSTILE],
        "reference_pieces": ["a", HOSTILE, "c"],
    }
    check = {"name": "equivalence", "status": "failed", "metrics": {"per_prompt": [entry]}}
    (panel,) = check_panels(report("failed", [check]))
    ((_title, chart),) = panel.charts
    assert [bar.title for bar in chart.bars] == ["prompt 0 · position 0", "prompt 0 · position 1"]
    assert [bar.length for bar in chart.bars] == [0.0, PLOT_WIDTH]
    (row,) = panel.continuations
    assert [token.css for token in row.subject] == ["token", "token", "token diverged"]
    assert row.subject[-1].text == "∅"  # the subject stopped where the reference went on
    assert [token.css for token in row.reference] == ["token", "token", "token diverged"]
    assert "per_prompt" not in panel.metrics


@pytest.mark.parametrize(("status", "refreshes"), [("queued", True), ("passed", False)])
def test_standalone_report_escapes_and_refreshes_only_while_pending(
    status: str, refreshes: bool
) -> None:
    check = {
        "name": "weights",
        "status": "failed",
        "detail": HOSTILE,
        "metrics": {
            "comparison": {
                "identical_tensors": 3,
                "changed_tensors": [{"name": HOSTILE, "frobenius_diff": 1.0}],
            }
        },
    }
    page = render_report_html(report(status, [check]))
    assert "<img" not in page and "<script" not in page
    # the detail, then a label and a tooltip in the per-layer and the per-tensor chart
    assert page.count("&lt;img src=x onerror=alert(1)&gt;") == 5
    assert "(3 identical tensors not drawn)" in page
    assert bool(re.search(r'<meta http-equiv="refresh"', page)) is refreshes
