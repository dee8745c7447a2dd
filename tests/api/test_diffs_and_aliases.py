"""Diffs between stored checkpoints, and the registry-managed `best` alias."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import save_file

from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel


def weights(tiny: TinyModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tiny.model.state_dict().items() if k != "lm_head.weight"}


def test_diff_of_identical_weights_in_two_formats(client: httpx.Client, tiny: TinyModel) -> None:
    a = upload_raw(client, tiny.zip_stored, "a").json()
    b = upload_raw(client, tiny.state_dict_pt, "b").json()
    diff = client.get(f"/v1/checkpoints/{a['id']}/diff/{b['id']}").json()
    assert diff["identical_weights"] is True
    assert diff["summary"] == {"identical": a["tensor_count"]}


def test_diff_reports_changes_shapes_and_missing_tensors(
    client: httpx.Client, tiny: TinyModel, tmp_path: Path
) -> None:
    base = weights(tiny)
    changed = weights(tiny)
    changed["transformer.h.0.mlp.c_fc.weight"] += 0.5
    changed["transformer.ln_f.weight"] = torch.ones(7)
    del changed["transformer.h.1.mlp.c_proj.bias"]
    changed["extra.weight"] = torch.zeros(2)
    for name, tensors in (("base", base), ("changed", changed)):
        save_file(tensors, tmp_path / f"{name}.safetensors")
        assert upload_raw(client, tmp_path / f"{name}.safetensors", f"d-{name}").status_code == 201
    diff = client.get("/v1/checkpoints/d-base/diff/d-changed").json()
    by_name = {row["name"]: row for row in diff["tensors"]}
    bias = by_name["transformer.h.0.mlp.c_fc.weight"]
    assert bias["status"] == "changed"
    expected = torch.full_like(base["transformer.h.0.mlp.c_fc.weight"], 0.5)
    assert bias["frobenius_delta"] == pytest.approx(float(expected.norm()), rel=1e-5)
    assert bias["max_abs_diff"] == pytest.approx(0.5, rel=1e-5)
    assert bias["relative_change"] == pytest.approx(
        float(expected.norm() / base["transformer.h.0.mlp.c_fc.weight"].norm()), rel=1e-4
    )
    assert by_name["transformer.ln_f.weight"]["status"] == "shape_changed"
    assert by_name["transformer.h.1.mlp.c_proj.bias"]["status"] == "only_in_a"
    assert by_name["extra.weight"]["status"] == "only_in_b"
    assert diff["identical_weights"] is False
    assert diff["summary"]["changed"] == 1
    assert diff["summary"]["identical"] == len(base) - 3


def training_checkpoint(tiny: TinyModel, path: Path, val_loss: float, epoch: int) -> Path:
    model = tiny.model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.save(
        {
            "epoch": epoch,
            "model_state_dict": {k: v + epoch for k, v in model.state_dict().items()},
            "optimizer_state_dict": optimizer.state_dict(),
            "val_loss": val_loss,
        },
        path,
    )
    return path


def test_best_alias_follows_lowest_val_loss(
    client: httpx.Client, tiny: TinyModel, tmp_path: Path
) -> None:
    losses = [3.0, 2.0, 2.5]
    ids: list[dict[str, Any]] = []
    for epoch, loss in enumerate(losses, start=1):
        path = training_checkpoint(tiny, tmp_path / f"e{epoch}.pt", loss, epoch)
        response = upload_raw(client, path, "run")
        assert response.status_code == 201, response.text
        ids.append(response.json())
    assert client.get("/v1/checkpoints/run:best").json()["id"] == ids[1]["id"]
    assert client.put("/v1/checkpoints/run@1/aliases/best").status_code == 409
    assert client.delete(f"/v1/checkpoints/{ids[1]['id']}").status_code == 204
    assert client.get("/v1/checkpoints/run:best").json()["id"] == ids[2]["id"]
