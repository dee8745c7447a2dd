"""A config carried inside a torch.save checkpoint: read safely by the child, mapped and checked
by the parent (no server: the child's code path runs in this process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from app.errors import RejectedCheckpoint
from app.ingest import torch_child, torch_pickle
from app.ingest.model_config import (
    architecture_from_config,
    config_from_checkpoint,
    infer_gpt2_config,
)
from app.ingest.types import IngestLimits

SHAPES: dict[str, tuple[int, ...]] = {
    "transformer.wte.weight": (300, 64),
    "transformer.wpe.weight": (64, 64),
    "transformer.h.0.attn.c_attn.weight": (64, 192),
    "transformer.h.0.attn.c_attn.bias": (192,),
    "transformer.h.1.attn.c_attn.weight": (64, 192),
}
NANO = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "bias": True, "vocab_size": 300}


def carried(tmp_path: Path, checkpoint: dict[str, Any]) -> Any:
    src = tmp_path / "ckpt.pt"
    torch.save(checkpoint, src)
    out = tmp_path / "out"
    out.mkdir()
    options = torch_pickle.child_options_for(src.stat().st_size, IngestLimits())
    return torch_child.run(src, out, options)["configs"]


def test_child_keeps_only_json_safe_config_values(tmp_path: Path) -> None:
    config = {
        "n_head": 2,
        "dropout": torch.tensor(0.1),  # a one-element tensor becomes its number
        "betas": (0.9, 0.95),
        "rope_scaling": {"type": "linear", "factor": 2.0, "deeper": {"x": 1}},
        "name": "x" * 500,  # too long: dropped
        "weights": torch.zeros(3),  # not a scalar: dropped
        7: "non-string key",  # dropped
    }
    configs = carried(tmp_path, {"model": {"w": torch.zeros(2)}, "model_args": config})
    assert configs == {
        "model_args": {
            "n_head": 2,
            "dropout": pytest.approx(0.1),
            "betas": [0.9, 0.95],
            "rope_scaling": {"type": "linear", "factor": 2.0},
        }
    }


def test_a_plain_state_dict_may_carry_a_config_beside_its_tensors(tmp_path: Path) -> None:
    configs = carried(tmp_path, {"w": torch.zeros(2), "config": {"n_layer": 1}})
    assert configs == {"config": {"n_layer": 1}}


def test_nanogpt_names_map_onto_gpt2() -> None:
    source, config = config_from_checkpoint({"model_args": NANO | {"dropout": 0.1}}, SHAPES)
    assert source == "checkpoint:model_args"
    assert (config["n_head"], config["n_positions"], config["n_embd"]) == (2, 64, 64)
    assert (config["resid_pdrop"], config["embd_pdrop"], config["attn_pdrop"]) == (0.1,) * 3
    architecture = architecture_from_config(config, source=source)
    assert architecture["inferred"] is False and "assumptions" not in architecture


def test_model_args_wins_over_the_training_config() -> None:
    found = config_from_checkpoint(
        {"config": NANO | {"n_head": 4}, "model_args": NANO, "args": {"lr": 1}}, SHAPES
    )
    assert found is not None and found[0] == "checkpoint:model_args"
    assert found[1]["n_head"] == 2


def test_a_config_without_a_head_count_keeps_the_assumption() -> None:
    source, config = config_from_checkpoint({"cfg": {"n_layer": 2}}, SHAPES) or ("", {})
    architecture = architecture_from_config(config, source=source)
    assert (architecture["inferred"], architecture["n_head"]) == (True, 1)
    assert architecture["config_source"] == "checkpoint:cfg"


def test_configs_that_do_not_describe_the_model_are_ignored() -> None:
    assert config_from_checkpoint({"args": {"learning_rate": 3e-4}}, SHAPES) is None
    assert config_from_checkpoint({"model_args": NANO}, {"fc.weight": (2, 2)}) is None


def test_a_hugging_face_config_is_taken_as_it_is() -> None:
    hf = {"model_type": "llama", "num_attention_heads": 4, "hidden_size": 32}
    assert config_from_checkpoint({"config": hf}, {}) == ("checkpoint:config", hf)


def test_a_hostile_assumptions_list_is_refused() -> None:
    with pytest.raises(RejectedCheckpoint, match="_inferred_assumptions"):
        architecture_from_config({"_inferred_assumptions": 5}, source="upload")
    inferred = infer_gpt2_config(SHAPES)
    assert inferred is not None and inferred["n_head"] == 1
