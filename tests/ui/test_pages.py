"""Every /ui page over real HTTP, against a registry filled by real uploads and a real worker."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import save_file

from tests.api.test_diffs_and_aliases import training_checkpoint, weights
from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.live_server import LiveServer
from tests.worker_process import WorkerProcess, checks_by_name, wait_for_report

HOSTILE = "<script>alert(1)</script>"
CHANGED_TENSORS = ("transformer.wte.weight", "transformer.h.0.mlp.c_fc.weight")


@pytest.fixture(scope="module")
def original(client: httpx.Client, tiny: TinyModel) -> dict[str, Any]:
    response = client.post(
        "/v1/checkpoints",
        files={"file": (f"{HOSTILE}.zip", tiny.zip_stored.read_bytes())},
        data={"name": "tiny", "metadata": json.dumps({"note": HOSTILE})},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="module")
def changed(
    client: httpx.Client, tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The tiny model with its token embedding negated and one MLP weight shifted."""
    tensors = weights(tiny)
    tensors[CHANGED_TENSORS[0]] = -tensors[CHANGED_TENSORS[0]]
    tensors[CHANGED_TENSORS[1]] += 0.5
    path = tmp_path_factory.mktemp("changed") / "model.safetensors"
    save_file(tensors, path)
    response = upload_raw(client, path, "tiny-changed")
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="module")
def hostile(client: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A bare safetensors file whose tensor name is markup."""
    path = tmp_path_factory.mktemp("hostile") / "hostile.safetensors"
    save_file({HOSTILE: torch.ones(3)}, path)
    response = upload_raw(client, path, "hostile")
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="module")
def compared(
    server: LiveServer, client: httpx.Client, original: dict[str, Any], changed: dict[str, Any]
) -> dict[str, Any]:
    """A finished report of the changed model against the original (a real worker runs it)."""
    response = client.post(
        f"/v1/checkpoints/{changed['id']}/verifications",
        json={"reference": {"checkpoint": original["id"]}, "max_new_tokens": 6},
    )
    assert response.status_code == 202, response.text
    with WorkerProcess(server.data_dir):
        report = wait_for_report(client, response.json()["id"])
    assert report["status"] == "failed", report
    return report


def page(
    client: httpx.Client, path: str, status: int = 200, params: dict[str, str] | None = None
) -> str:
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    text = response.text
    assert "<script>alert" not in text
    return text


def texts(html: str, pattern: str) -> list[str]:
    return [unescape(match) for match in re.findall(pattern, html, flags=re.S)]


def test_checkpoints_table_lists_and_filters_by_name(
    client: httpx.Client, original: dict[str, Any], changed: dict[str, Any]
) -> None:
    everything = page(client, "/ui")
    assert f'href="/ui/checkpoints/{original["id"]}">tiny</a>' in everything
    assert f'href="/ui/checkpoints/{changed["id"]}">tiny-changed</a>' in everything
    row = everything.split(f'data-id="{original["id"]}"')[1].split("</tr>")[0]
    assert f'data-value="{original["size_bytes"]}"' in row
    assert f"{original['parameter_count']:,}" in row
    assert "hf_zip" in row and "latest" in row
    assert f"/ui/verifications/{original['verification']['id']}" in row
    filtered = page(client, "/ui", params={"name": "tiny-changed"})
    assert changed["id"] in filtered and original["id"] not in filtered


def test_a_hostile_filter_is_escaped(client: httpx.Client) -> None:
    text = page(client, "/ui", params={"name": HOSTILE})
    assert "No checkpoints named &lt;script&gt;alert(1)&lt;/script&gt; yet." in text


def test_checkpoint_page_escapes_metadata_and_file_names(
    client: httpx.Client, original: dict[str, Any]
) -> None:
    text = page(client, f"/ui/checkpoints/{original['id']}")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # metadata note and file name
    assert f'href="/v1/checkpoints/{original["id"]}/download"' in text
    for stored in original["files"]:
        assert f"/v1/checkpoints/{original['id']}/files/{stored['path']}" in text
    assert client.get(f"/v1/checkpoints/{original['id']}/files/config.json").status_code == 200
    tensor_names = texts(text, r'<table class="sortable" id="tensors">.*?</table>')
    assert tensor_names and "transformer.wte.weight" in tensor_names[0]
    assert f'href="/ui/verifications/{original["verification"]["id"]}"' in text


def test_report_page_draws_weight_deltas_and_continuations(
    client: httpx.Client, compared: dict[str, Any]
) -> None:
    text = page(client, f"/ui/verifications/{compared['id']}")
    checks = checks_by_name(compared)
    bars = texts(text, r'<g class="bar"[^>]*>\s*<title>([^<]*)</title>')
    changed = [
        entry["name"] for entry in checks["weights"]["metrics"]["comparison"]["changed_tensors"]
    ]
    assert sorted(changed) == sorted(CHANGED_TENSORS)
    for name in CHANGED_TENSORS:
        assert any(bar.startswith(f"{name}: ") for bar in bars), bars
    per_prompt = checks["equivalence"]["metrics"]["per_prompt"]
    positions = per_prompt[0]["max_abs_logit_diff_by_position"]
    drawn = [bar for bar in bars if bar.startswith("prompt 0 · position ")]
    assert len(drawn) == len(positions) > 0
    metrics = checks["equivalence"]["metrics"]
    assert metrics["greedy_match"] is False  # a negated token embedding changes continuations
    first = per_prompt[metrics["first_divergent_prompt"]]
    step = first["first_divergent_step"]
    diverged = texts(text, r'<span class="token diverged" title="id ([^"]*)">')
    assert str(first["subject_continuation"][step]) in diverged
    assert str(first["reference_continuation"][step]) in diverged
    assert 'id="check-equivalence"' in text and "Greedy continuations" in text
    assert '<meta http-equiv="refresh"' not in text  # finished: nothing left to wait for


def test_report_as_html_from_the_api_is_the_same_report_self_contained(
    client: httpx.Client, compared: dict[str, Any]
) -> None:
    api = client.get(f"/v1/verifications/{compared['id']}", params={"format": "html"}).text
    assert "/ui/static" not in api and "<script" not in api and "<style>" in api
    ui = page(client, f"/ui/verifications/{compared['id']}")
    section = r'<section class="check" id="check-weights">.*?</section>'
    assert re.findall(section, api, flags=re.S) == re.findall(section, ui, flags=re.S)


def test_diff_page_charts_changed_tensors(
    client: httpx.Client, original: dict[str, Any], changed: dict[str, Any]
) -> None:
    text = page(client, "/ui/diff/tiny@1/tiny-changed@1")
    (tensor_chart,) = texts(text, r'<div class="chart" id="tensor-chart">(.*?)</div>')
    bars = texts(tensor_chart, r'<g class="bar"[^>]*>\s*<title>([^<:]*):')
    assert bars == sorted(CHANGED_TENSORS, key=lambda name: "wte" in name)  # layer order
    (layer_chart,) = texts(text, r'<div class="chart" id="layer-chart">(.*?)</div>')
    layers = texts(layer_chart, r'<g class="bar"[^>]*>\s*<title>([^<:]*):')
    assert layers == ["transformer.h.0", "transformer.wte"]
    diff = client.get(f"/v1/checkpoints/{original['id']}/diff/{changed['id']}").json()
    assert f"changed: {diff['summary']['changed']}" in text
    form = client.get(
        "/ui/diff", params={"a": "tiny@1", "b": "tiny-changed"}, follow_redirects=False
    )
    assert form.status_code == 303
    assert form.headers["location"] == "/ui/diff/tiny@1/tiny-changed"


def test_playground_offers_only_servable_checkpoints(
    client: httpx.Client, original: dict[str, Any], hostile: dict[str, Any]
) -> None:
    text = page(client, "/ui/playground", params={"ref": "tiny@1"})
    options = texts(text, r'<option value="([^"]*)"')
    assert "tiny@1" in options and "hostile@1" not in options
    assert '<option value="tiny@1" selected>' in text


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/ui/checkpoints/%3Cscript%3E", 400, "invalid checkpoint name &#39;&lt;script&gt;&#39;"),
        ("/ui/checkpoints/missing", 404, "missing"),
        ("/ui/verifications/%3Cscript%3E", 404, "no verification &#39;&lt;script&gt;&#39;"),
        ("/ui/diff/tiny/%3Cb%3E", 400, "&lt;b&gt;"),
        ("/ui/static/pages.py", 404, "no static file &#39;pages.py&#39;"),
    ],
)
def test_errors_are_pages_with_the_api_status(
    client: httpx.Client, original: dict[str, Any], path: str, status: int, message: str
) -> None:
    text = page(client, path, status=status)
    assert message in text.split('id="error-message">')[1].split("</p>")[0]


def test_static_assets(client: httpx.Client) -> None:
    script = client.get("/ui/static/ui.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "generate_stream" in script.text and "upload.addEventListener" in script.text
    assert client.get("/ui/static/ui.css").headers["content-type"].startswith("text/css")


def test_hostile_tensor_name_is_escaped(client: httpx.Client, hostile: dict[str, Any]) -> None:
    text = page(client, f"/ui/checkpoints/{hostile['id']}")
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>" in text


def test_training_info_and_curve_with_best_marked(
    client: httpx.Client, tiny: TinyModel, tmp_path: Path
) -> None:
    for epoch, loss in enumerate([2.0, 3.0], start=1):
        path = training_checkpoint(tiny, tmp_path / f"e{epoch}.pt", loss, epoch)
        assert upload_raw(client, path, "run").status_code == 201
    detail = page(client, "/ui/checkpoints/run@1")
    assert 'id="training"' in detail and "SGD" in detail and 'href="/ui/training/run"' in detail
    curve = page(client, "/ui/training/run")
    series = re.search(r'data-series="val_loss">\s*<path d="([^"]+)"', curve)
    assert series is not None
    points = [tuple(map(float, p.split(","))) for p in re.findall(r"[ML]([\d.,]+)", series[1])]
    assert len(points) == 2 and points[0][0] < points[1][0]  # epochs 1, 2 left to right
    assert points[0][1] > points[1][1]  # SVG y grows downwards: loss 2.0 lies below 3.0
    marker = re.search(r'<g class="best-marker">\s*<circle cx="([\d.]+)" cy="([\d.]+)"', curve)
    assert marker is not None and (float(marker[1]), float(marker[2])) == points[0]
    assert "best: run@1" in curve
    assert '<tr class="best">' in curve


def test_training_page_of_an_unknown_name_is_404(client: httpx.Client) -> None:
    text = page(client, "/ui/training/nobody", status=404)
    assert "no checkpoint named &#39;nobody&#39;" in text


MICROSECONDS = re.compile(r"\d\d:\d\d:\d\d\.\d")
READABLE_UTC = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC")


def test_report_page_puts_the_verdict_summary_first(
    client: httpx.Client, compared: dict[str, Any]
) -> None:
    text = page(client, f"/ui/verifications/{compared['id']}")
    summary = text.index('id="verdicts"')
    assert summary < text.index('<section class="check"') < text.index('id="environment"')
    (table,) = texts(text, r'<table class="verdicts" id="verdicts">(.*?)</table>')
    rows = [
        re.sub(r"<[^>]+>", " ", row).split()
        for row in re.findall(r"<tr.*?</tr>", table, flags=re.S)
    ]
    by_check = {cells[0]: " ".join(cells[1:]) for cells in rows[1:]}
    assert list(by_check) == [check["name"] for check in compared["checks"]]
    equivalence = checks_by_name(compared)["equivalence"]
    figure = f"{equivalence['metrics']['max_abs_logit_diff']:.4g}"
    limit = equivalence["thresholds"]["max_abs_logit"]
    source = (equivalence["thresholds"].get("sources") or {}).get("max_abs_logit")
    expected = f"{equivalence['status']} max |Δlogit| {figure} ≤ {limit:.4g}"
    assert by_check["equivalence"] == expected + (f" ({source})" if source else "")
    assert by_check["integrity"] == "passed mismatched blobs 0 ≤ 0"
    # shapes on one line; times in µs/ms/s, never the raw float; no microseconds anywhere
    shapes = checks_by_name(compared)["load"]["metrics"]["logits_shapes"]
    assert f'<td class="value">{json.dumps(shapes)}</td>' in text
    seconds = compared["timings"]["total"]
    assert str(seconds) not in text and re.search(r"took \d[\d.]* (µs|ms|s)\b", text)
    assert not MICROSECONDS.search(text) and READABLE_UTC.search(text)


def test_checkpoint_page_header_sections_and_playground_only_when_servable(
    client: httpx.Client, original: dict[str, Any], hostile: dict[str, Any]
) -> None:
    text = page(client, f"/ui/checkpoints/{original['id']}")
    (essentials,) = texts(text, r'<dl class="essentials" id="essentials">(.*?)</dl>')
    labels = re.findall(r"<dt>([^<]+)</dt>", essentials)
    assert labels == [
        "Name", "Version", "Format", "Size", "Parameters", "Weights digest",
        "Last verification", "Created",
    ]  # fmt: skip
    assert "MiB" in essentials and f"{original['parameter_count']:,}" in essentials
    for anchor in ("verifications", "files", "tensors-section", "details", "raw"):
        assert f'href="#{anchor}"' in text and f'id="{anchor}"' in text
    assert text.index('id="tensors-section"') < text.index('<details class="raw" id="raw">')
    assert '<td data-value="49152">[128, 384]</td>' in text  # c_attn.weight's shape
    shown = text.split('<details class="raw"')[0]  # the raw JSON is the API's, to the µs
    assert not MICROSECONDS.search(shown) and READABLE_UTC.search(shown)
    assert 'id="playground-link"' in text
    unservable = page(client, f"/ui/checkpoints/{hostile['id']}")
    assert "/ui/playground" not in unservable.split("<main>")[1]
    assert 'id="not-servable"' in unservable and "cannot generate text" in unservable


def test_training_chart_ticks_are_round_numbers(
    client: httpx.Client, tiny: TinyModel, tmp_path: Path
) -> None:
    for epoch, loss in enumerate([2.13, 1.71, 1.52], start=1):
        path = training_checkpoint(tiny, tmp_path / f"e{epoch}.pt", loss, epoch)
        assert upload_raw(client, path, "ticks").status_code == 201
    curve = page(client, "/ui/training/ticks")
    ticks = texts(curve, r'<text class="tick"[^>]*text-anchor="end">([^<]*)</text>')
    assert ticks == ["1.4", "1.6", "1.8", "2.0", "2.2"]
    epochs = texts(curve, r'<text class="tick"[^>]*text-anchor="middle">([^<]*)</text>')
    assert epochs == ["1", "2", "3"]
    assert re.search(r'<svg class="line-chart" role="img" viewBox="0 0 \d+ \d+"', curve)
