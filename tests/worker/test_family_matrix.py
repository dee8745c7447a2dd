"""Every check for every family in the matrix: one real server and worker for the module, tiny
models of each family uploaded as zips over HTTP (tests/families.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.api.test_upload import upload_raw
from tests.families import FAMILIES, build_family, build_family_model, save_tokenizer
from tests.live_server import LiveServer
from tests.models import zip_folder
from tests.worker.test_verification import failures, verify
from tests.worker_process import WorkerProcess, checks_by_name, wait_for_report

MODEL_CHECKS = ("integrity", "round_trip", "load", "stability", "weights")
HALF_PRECISION_SOURCE = "default for bfloat16 vs float32 on same device"


class Uploads:
    """Each (family, variant) built, zipped and uploaded once for the module."""

    def __init__(self, client: httpx.Client, root: Path) -> None:
        self.client = client
        self.root = root
        self._uploaded: dict[tuple[str, str], dict[str, Any]] = {}
        self.folders: dict[tuple[str, str], Path] = {}

    def get(self, family: str, variant: str = "float32") -> dict[str, Any]:
        key = (family, variant)
        if key not in self._uploaded:
            folder = self.root / f"{family}-{variant}"
            _BUILDERS[variant](family, folder)
            self.folders[key] = folder
            archive = zip_folder(folder, self.root / f"{family}-{variant}.zip")
            response = upload_raw(self.client, archive, f"{family}-{variant}")
            assert response.status_code == 201, response.text
            self._uploaded[key] = response.json()
        return self._uploaded[key]


def _overwritten_embedding(family: str, folder: Path) -> None:
    """The float32 model with its token embedding replaced by other random values."""
    model = build_family_model(family)
    embedding = model.get_input_embeddings().weight
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        embedding.copy_(torch.randn(embedding.shape, generator=generator) * embedding.std())
    model.save_pretrained(folder)
    save_tokenizer(folder, "tokenizer.json")


def _bfloat16_config_says_float32(family: str, folder: Path) -> None:
    build_family(family, folder, dtype="bfloat16")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dtype": "float32"}))


_BUILDERS = {
    "float32": lambda family, folder: build_family(family, folder),
    "bfloat16": lambda family, folder: build_family(family, folder, dtype="bfloat16"),
    "mixed": lambda family, folder: build_family(family, folder, dtype="mixed"),
    "overwritten": _overwritten_embedding,
    "config-says-float32": _bfloat16_config_says_float32,
}


@pytest.fixture(scope="module")
def worker(server: LiveServer) -> Iterator[WorkerProcess]:
    with WorkerProcess(server.data_dir) as process:
        yield process


@pytest.fixture(scope="module")
def uploads(
    client: httpx.Client, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Uploads:
    return Uploads(client, tmp_path_factory.mktemp("families"))


def automatic_report(client: httpx.Client, checkpoint: dict[str, Any]) -> dict[str, Any]:
    return wait_for_report(client, checkpoint["verification"]["id"])


@pytest.mark.parametrize("family", FAMILIES)
def test_every_check_runs_and_passes(client: httpx.Client, uploads: Uploads, family: str) -> None:
    report = automatic_report(client, uploads.get(family))
    assert report["status"] == "passed", failures(report)
    checks = checks_by_name(report)
    for name in MODEL_CHECKS:
        assert checks[name]["status"] == "passed", (name, checks[name]["detail"])
    assert checks["equivalence"]["detail"] == "no reference given"
    assert checks["resumability"]["detail"] == "This is not a training checkpoint."
    assert checks["round_trip"]["metrics"]["loader"] == "from_pretrained"
    assert checks["round_trip"]["metrics"]["total_epsilon"] == 0.0
    assert checks["load"]["metrics"]["dtype"] == "float32"
    model = build_family_model(family)
    assert checks["load"]["metrics"]["model_class"] == type(model).__name__
    embeddings = checks["weights"]["metrics"]["embeddings"]
    names = {id(p): name for name, p in model.named_parameters()}
    assert embeddings["token"]["name"] == names[id(model.get_input_embeddings().weight)]
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert ("tied_to" in embeddings["output"]) is tied
    assert embeddings["token"]["std"] > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_an_overwritten_embedding_fails_equivalence(
    client: httpx.Client, uploads: Uploads, family: str
) -> None:
    original = uploads.get(family)
    changed = uploads.get(family, "overwritten")
    report = verify(client, changed["id"], {"reference": {"checkpoint": original["id"]}})
    checks = checks_by_name(report)
    equivalence = checks["equivalence"]
    assert equivalence["status"] == "failed", equivalence["detail"]
    assert equivalence["metrics"]["architecture_differences"] == []
    assert equivalence["metrics"]["max_abs_logit_diff"] > 1e-3
    assert equivalence["thresholds"]["max_abs_logit"] == 1e-5
    assert checks["weights"]["status"] == "failed"
    token = checks["weights"]["metrics"]["embeddings"]["token"]["name"]
    changed_names = [
        t["name"] for t in checks["weights"]["metrics"]["comparison"]["changed_tensors"]
    ]
    assert changed_names == [token]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_bfloat16_copy_measures_its_drift_under_the_named_tolerance(
    client: httpx.Client, uploads: Uploads, family: str
) -> None:
    original = uploads.get(family)
    half = uploads.get(family, "bfloat16")
    own = automatic_report(client, half)
    assert own["status"] == "passed", failures(own)
    assert checks_by_name(own)["load"]["metrics"]["dtype"] == "bfloat16"
    assert checks_by_name(own)["round_trip"]["metrics"]["hash_mismatched"] == []
    report = verify(client, half["id"], {"reference": {"checkpoint": original["id"]}})
    assert report["status"] == "passed", failures(report)
    checks = checks_by_name(report)
    equivalence = checks["equivalence"]
    assert 0 < equivalence["metrics"]["max_abs_logit_diff"] <= 0.5
    assert equivalence["thresholds"]["max_abs_logit"] == 0.5
    assert equivalence["thresholds"]["near_tie_margin"] == 1.0
    assert set(equivalence["thresholds"]["sources"].values()) == {HALF_PRECISION_SOURCE}
    assert f"tolerance: {HALF_PRECISION_SOURCE}" in equivalence["detail"]
    near_ties = equivalence["metrics"]["greedy_near_tie_prompts"]
    divergent = equivalence["metrics"]["divergent_prompts"]
    assert near_ties == divergent  # every flip visible, each one at a near tie
    for entry in equivalence["metrics"]["per_prompt"]:
        if entry["first_divergent_step"] is not None:
            assert 0 <= entry["greedy_divergence_lead"] <= 1.0
    weights = checks["weights"]
    assert weights["status"] == "passed", weights["detail"]
    assert "only by rounding" in weights["detail"]


@pytest.mark.parametrize(
    ("subject", "reference", "differences"),
    [
        ("qwen2", "llama", ["model_type qwen2 vs llama"]),
        # GPT-2's MLP is 4 x n_embd wide; the OPT config's ffn_dim is 128.
        ("gpt2", "opt", ["model_type gpt2 vs opt", "intermediate_size 256 vs 128"]),
    ],
)
def test_another_family_fails_equivalence_naming_the_difference(
    client: httpx.Client, uploads: Uploads, subject: str, reference: str, differences: list[str]
) -> None:
    mine, theirs = uploads.get(subject), uploads.get(reference)
    body = {"reference": {"checkpoint": theirs["id"]}, "checks": ["equivalence"]}
    equivalence = checks_by_name(verify(client, mine["id"], body))["equivalence"]
    assert equivalence["status"] == "failed"
    assert equivalence["metrics"]["architecture_differences"] == differences
    assert equivalence["detail"].startswith(f"The architectures differ ({', '.join(differences)}).")


def test_a_llama_training_checkpoint_is_resumable(
    client: httpx.Client, worker: WorkerProcess, tmp_path: Path
) -> None:
    model = build_family_model("llama")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    path = tmp_path / "llama-train.pt"
    state = {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()}
    torch.save({"epoch": 1, "step": 10, **state}, path)
    response = upload_raw(client, path, "llama-trained", config=model.config.to_json_string())
    assert response.status_code == 201, response.text
    report = automatic_report(client, response.json())
    checks = checks_by_name(report)
    resumability = checks["resumability"]
    assert resumability["status"] == "passed", resumability["detail"]
    assert resumability["metrics"]["parameter_order"] == "model.named_parameters()"
    assert resumability["metrics"]["parameters"] == len(list(model.parameters()))
    assert resumability["metrics"]["step_ok"] is True
    assert checks["load"]["status"] == "passed", checks["load"]["detail"]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_mixed_precision_checkpoint_keeps_each_tensors_dtype(
    client: httpx.Client, uploads: Uploads, family: str
) -> None:
    checkpoint = uploads.get(family, "mixed")
    assert set(checkpoint["parameters_by_dtype"]) == {"bfloat16", "float32"}
    report = automatic_report(client, checkpoint)
    assert report["status"] == "passed", failures(report)
    load = checks_by_name(report)["load"]["metrics"]
    assert load["parameters_by_dtype"] == checkpoint["parameters_by_dtype"]
    round_trip = checks_by_name(report)["round_trip"]["metrics"]
    assert round_trip["loader"] == "from_pretrained"
    assert (round_trip["hash_mismatched"], round_trip["reshaped_tensors"]) == ([], {})
    assert round_trip["missing_tensors"] == []


def test_the_stored_dtype_wins_over_the_configs(client: httpx.Client, uploads: Uploads) -> None:
    """from_pretrained's dtype="auto" would take config.json's float32 and widen every tensor."""
    report = automatic_report(client, uploads.get("qwen2", "config-says-float32"))
    assert report["status"] == "passed", failures(report)
    checks = checks_by_name(report)
    assert checks["load"]["metrics"]["dtype"] == "bfloat16"
    assert checks["round_trip"]["metrics"]["reshaped_tensors"] == {}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_reference_outputs_document_of_any_family_verifies(
    client: httpx.Client, uploads: Uploads, family: str
) -> None:
    from app.verify.reference_outputs import record_reference_outputs

    checkpoint = uploads.get(family)
    document = record_reference_outputs(uploads.folders[(family, "float32")], max_new_tokens=4)
    body = {"reference": {"outputs": document}, "checks": ["equivalence"]}
    equivalence = checks_by_name(verify(client, checkpoint["id"], body))["equivalence"]
    assert equivalence["status"] == "passed", equivalence["detail"]
    assert equivalence["metrics"]["max_abs_logit_diff"] == 0.0
    assert equivalence["metrics"]["architecture_differences"] == []
