"""The one set of formatting functions the CLI and the web UI share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from app.display import binary_size, duration, key_figure, shape, timestamp
from app.ui.charts import nice_ticks, tick_labels
from app.ui.templating import status_class


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (196_608, "192 KiB"), (1_786_449, "1.7 MiB"),
     (1_934_941, "1.85 MiB"), (3 * 1024**3, "3 GiB"), (None, "—"), (-1, "—")],
)  # fmt: skip
def test_sizes_are_binary_with_three_significant_digits(size: int | None, text: str) -> None:
    assert binary_size(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(6e-06, "6 µs"), (0.002181, "2.18 ms"), (0.068095, "68.1 ms"), (0.102929, "103 ms"),
     (0.9996, "1000 ms"), (1.2345, "1.23 s"), (754.2, "754 s"), (0, "0 s"), (None, "—")],
)  # fmt: skip
def test_durations_read_in_microseconds_milliseconds_or_seconds(
    seconds: float | None, text: str
) -> None:
    assert duration(seconds) == text


def test_shapes_and_timestamps() -> None:
    assert shape([3, 512]) == "[3, 512]" and shape([]) == "scalar"
    naive = datetime(2026, 12, 2, 17, 40, 5, 123456)
    assert timestamp(naive) == "2026-12-02 17:40 UTC"
    assert timestamp("2026-12-02T17:40:05.123456Z") == "2026-12-02 17:40 UTC"
    elsewhere = naive.replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=-5)))
    assert timestamp(elsewhere) == "2026-12-02 17:40 UTC"
    assert timestamp(naive, zone=False) == "2026-12-02 17:40"


def test_key_figures_of_known_and_unknown_checks() -> None:
    equivalence = {
        "name": "equivalence",
        "metrics": {"max_abs_logit_diff": 1.378138},
        "thresholds": {"max_abs_logit": 1e-5, "sources": {"max_abs_logit": "requested"}},
    }
    figure = key_figure(equivalence)
    assert (figure.figure, figure.threshold, figure.source) == (
        "max |Δlogit| 1.378", "≤ 1e-05", "requested"
    )  # fmt: skip
    novel = {
        "name": "perplexity",
        "metrics": {"perplexity": 12.3},
        "thresholds": {"max_perplexity": 20},
    }
    assert key_figure(novel).figure == "perplexity 12.3" and key_figure(novel).threshold == "≤ 20"
    skipped = key_figure({"name": "load", "status": "not_applicable"})
    assert (skipped.figure, skipped.threshold) == ("—", "—")


def test_every_status_gets_its_own_class() -> None:
    assert status_class("inconclusive") == "status-inconclusive"
    assert status_class("some new state") == "status-some-new-state"
    assert status_class('"><script>') == "status--script-"


@pytest.mark.parametrize(
    ("low", "high", "labels"),
    [(2.1, 5.1, ["2", "3", "4", "5", "6"]), (1.52, 2.13, ["1.4", "1.6", "1.8", "2.0", "2.2"]),
     (0.91, 0.93, ["0.910", "0.915", "0.920", "0.925", "0.930"]),
     (100, 12345, ["0", "5,000", "10,000", "15,000"]), (3, 3, ["1", "2", "3", "4", "5"])],
)  # fmt: skip
def test_chart_ticks_are_nice_numbers_covering_the_data(
    low: float, high: float, labels: list[str]
) -> None:
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high
    assert tick_labels(ticks) == labels
