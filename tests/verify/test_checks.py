"""The verification checks, run directly on in-memory tiny GPT-2 checkpoints (no runner, no DB).

Each check gets a CheckContext built here around InMemoryCheckpoint, a LoadedCheckpoint that wraps
a model object; the training checkpoints go through the real ingestion conversion once per module.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.errors import InvalidInput
from app.ingest.torch_pickle import OPTIMIZER_FILE, convert_torch_checkpoint
from app.ingest.types import IngestLimits
from app.records import CheckpointRecord
from app.ui.templating import render_report_html
from app.verify import equivalence, resumability, stability, weights
from app.verify.base import CheckContext, CheckResult, LoadedCheckpoint, Tolerance, VerifyOptions
from app.verify.reference_outputs import (
    default_prompts,
    default_token_ids,
    parse_reference_outputs,
    record_reference_outputs,
)
from tests.models import build_gpt2, build_tokenizer
from tests.records import record

CPU = torch.device("cpu")
MAX_NEW_TOKENS = 8
TIED = "lm_head.weight"


class InMemoryCheckpoint(LoadedCheckpoint):
    """A LoadedCheckpoint over a live model: the stored tensors are its state_dict minus the tie."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any | None,
        folder: Path,
        *,
        training: dict[str, Any] | None = None,
        unavailable: str | None = None,
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._unavailable = unavailable
        self.folder = folder
        self.view = _view(self.state_dict(), training)
        self.tensors = []

    @property
    def model_unavailable_reason(self) -> str | None:
        return self._unavailable

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            name: tensor.detach()
            for name, tensor in self._model.state_dict().items()
            if name != TIED
        }

    def model(self) -> Any:
        if self._unavailable is not None:
            raise AssertionError("a model-level check used an unavailable model")
        return self._model

    def tokenizer(self) -> Any | None:
        return self._tokenizer


def _view(state_dict: dict[str, torch.Tensor], training: dict[str, Any] | None) -> CheckpointRecord:
    count = sum(tensor.numel() for tensor in state_dict.values())
    return record(
        id="ckpt-test",
        format="torch" if training else "safetensors",
        size_bytes=4 * count,
        parameter_count=count,
        parameters_by_dtype={"float32": count},
        architecture={"model_type": "gpt2", "inferred": False},
        training=training,
        tokenizer={"present": True, "kind": None, "vocab_size": None},
    )


def context(
    subject: LoadedCheckpoint,
    *,
    inputs: list[list[int]],
    reference: LoadedCheckpoint | None = None,
    reference_outputs: dict[str, Any] | None = None,
    repeats: int = 3,
    tolerance: dict[str, float] | None = None,
) -> CheckContext:
    options = VerifyOptions(
        checks=("equivalence", "stability", "weights", "resumability"),
        max_new_tokens=MAX_NEW_TOKENS,
        repeats=repeats,
        tolerance=tolerance,
    )
    return CheckContext(
        subject=subject,
        options=options,
        device=CPU,
        inputs=inputs,
        reference=reference,
        reference_outputs=reference_outputs,
    )


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models: thread start-up and contention cost far more than the matmuls (~50x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Models:
    tokenizer: Any
    inputs: list[list[int]]
    base: InMemoryCheckpoint
    twin: InMemoryCheckpoint  # an independent copy of base
    ones: InMemoryCheckpoint  # base with its token embedding overwritten with ones
    folder: Path  # base saved with save_pretrained + its tokenizer


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("verify")
    tokenizer = build_tokenizer()
    model = build_gpt2(len(tokenizer), seed=3)
    ones_model = copy.deepcopy(model)
    with torch.no_grad():
        torch.nn.init.ones_(ones_model.transformer.wte.weight)
    folder = root / "saved"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    inputs = [tokenizer(text)["input_ids"] for text in default_prompts()]
    return Models(
        tokenizer=tokenizer,
        inputs=inputs,
        base=InMemoryCheckpoint(model, tokenizer, root),
        twin=InMemoryCheckpoint(copy.deepcopy(model), tokenizer, root),
        ones=InMemoryCheckpoint(ones_model, tokenizer, root),
        folder=folder,
    )


@pytest.fixture(scope="module")
def document(models: Models) -> dict[str, Any]:
    recorded = record_reference_outputs(models.folder, None, None, max_new_tokens=MAX_NEW_TOKENS)
    text = json.dumps(recorded)  # must be plain JSON, as sent in a request body
    parsed: dict[str, Any] = json.loads(text)
    return parsed


@dataclass
class TrainingCheckpoint:
    model: Any
    folder: Path
    training: dict[str, Any]

    def loaded(self, **kwargs: Any) -> InMemoryCheckpoint:
        return InMemoryCheckpoint(self.model, None, self.folder, training=self.training, **kwargs)


def _train_and_convert(
    root: Path, name: str, make_optimizer: Callable[[Any], torch.optim.Optimizer]
) -> TrainingCheckpoint:
    model = build_gpt2(100, seed=1)
    optimizer = make_optimizer(model.parameters())
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    checkpoint = {
        "epoch": 2,
        "step": 40,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
    }
    source = root / f"{name}.pt"
    torch.save(checkpoint, source)
    result = convert_torch_checkpoint(source, root / name, IngestLimits())
    assert result.kind == "training" and result.training is not None
    return TrainingCheckpoint(model.eval(), root / name, result.training)


@pytest.fixture(scope="module")
def training(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainingCheckpoint]:
    """AdamW and SGD training checkpoints through the real (subprocess) conversion, in parallel."""
    root = tmp_path_factory.mktemp("training")
    makers: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
        "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01),
        "sgd": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    }
    with ThreadPoolExecutor(max_workers=len(makers)) as pool:
        futures = {
            name: pool.submit(_train_and_convert, root, name, make) for name, make in makers.items()
        }
        return {name: future.result() for name, future in futures.items()}


# --- equivalence + weights: a model against itself and against a broken copy ------------------


def test_model_against_itself_is_exactly_equivalent(models: Models) -> None:
    ctx = context(models.base, inputs=models.inputs, reference=models.twin)
    result = equivalence.run(ctx)
    assert result.status == "passed", result.detail
    metrics = result.metrics
    assert metrics["max_abs_logit_diff"] == 0.0
    assert metrics["mean_abs_logit_diff"] == 0.0
    assert metrics["kl_divergence"] == 0.0
    assert metrics["top1_agreement"] == 1.0
    assert metrics["greedy_match"] is True
    assert metrics["first_divergent_step"] is None
    assert len(metrics["per_prompt"]) == len(models.inputs)
    first = metrics["per_prompt"][0]
    assert len(first["subject_continuation"]) == MAX_NEW_TOKENS
    assert first["subject_continuation"] == first["reference_continuation"]
    assert first["subject_text"] == models.tokenizer.decode(first["subject_continuation"])
    assert first["prompt_text"] == default_prompts()[0]
    assert (
        result.thresholds["max_abs_logit"]
        == Tolerance.defaults(same_device=True, dtype="float32").max_abs_logit
    )
    assert "match" in result.detail
    json.dumps(result.as_dict(), allow_nan=False)

    weights_result = weights.run(ctx)
    assert weights_result.status == "passed", weights_result.detail
    comparison = weights_result.metrics["comparison"]
    assert comparison["identical_tensors"] == len(models.base.state_dict())
    assert comparison["changed_tensors"] == []
    assert weights_result.metrics["constant_embedding"] is False
    json.dumps(weights_result.as_dict(), allow_nan=False)


def test_ones_embedding_breaks_equivalence(models: Models) -> None:
    ctx = context(models.ones, inputs=models.inputs, reference=models.base)
    result = equivalence.run(ctx)
    assert result.status == "failed"
    assert result.metrics["max_abs_logit_diff"] > 0
    assert result.metrics["top1_agreement"] < 1.0
    assert result.metrics["greedy_match"] is False
    for prompt, tokens in zip(result.metrics["per_prompt"], models.inputs, strict=True):
        per_position = prompt["max_abs_logit_diff_by_position"]
        assert len(per_position) == len(tokens)
        assert max(per_position) == prompt["max_abs_logit_diff"] > 0
    step = result.metrics["first_divergent_step"]
    assert isinstance(step, int) and 0 <= step < MAX_NEW_TOKENS
    assert f"diverges at step {step}" in result.detail
    json.dumps(result.as_dict(), allow_nan=False)


def test_greedy_divergence_alone_fails(models: Models) -> None:
    lenient = {"max_abs_logit": 1e9, "min_top1_agreement": 0.0, "max_kl": 1e9, "max_variance": 0.0}
    ctx = context(models.ones, inputs=models.inputs, reference=models.base, tolerance=lenient)
    result = equivalence.run(ctx)
    assert result.status == "failed"
    assert result.thresholds["max_abs_logit"] == 1e9
    assert result.metrics["greedy_match"] is False


def test_weights_flags_the_ones_embedding(models: Models) -> None:
    ctx = context(models.ones, inputs=models.inputs, reference=models.base)
    result = weights.run(ctx)
    assert result.status == "failed"
    token = result.metrics["embeddings"]["token"]
    assert token["name"] == "transformer.wte.weight"
    assert (token["mean"], token["std"], token["min"], token["max"]) == (1.0, 0.0, 1.0, 1.0)
    assert token["constant_embedding"] is True
    assert result.metrics["embeddings"]["position"]["constant_embedding"] is False
    assert result.metrics["constant_embedding"] is True
    comparison = result.metrics["comparison"]
    assert [entry["name"] for entry in comparison["changed_tensors"]] == ["transformer.wte.weight"]
    assert comparison["changed_tensors"][0]["relative_change"] > 0
    assert comparison["identical_tensors"] == len(models.base.state_dict()) - 1
    assert "constant" in result.detail


def test_weights_without_reference_and_non_finite_values(models: Models) -> None:
    clean = weights.run(context(models.base, inputs=models.inputs))
    assert clean.status == "passed"
    assert "comparison" not in clean.metrics
    broken_model = copy.deepcopy(models.base.model())
    with torch.no_grad():
        broken_model.transformer.h[0].mlp.c_fc.bias[3] = float("nan")
    broken = InMemoryCheckpoint(broken_model, None, models.base.folder)
    result = weights.run(context(broken, inputs=models.inputs, reference=models.base))
    assert result.status == "failed"
    assert result.metrics["non_finite_tensors"] == ["transformer.h.0.mlp.c_fc.bias"]
    json.dumps(result.as_dict(), allow_nan=False)


def test_unknown_architecture_skips_model_checks(models: Models) -> None:
    blind = InMemoryCheckpoint(
        models.base.model(), None, models.base.folder, unavailable="no config"
    )
    ctx = context(blind, inputs=models.inputs, reference=models.twin)
    assert equivalence.run(ctx).status == "not_applicable"
    assert stability.run(ctx).status == "not_applicable"
    assert weights.run(ctx).status == "passed"


def test_equivalence_without_reference_does_not_apply(models: Models) -> None:
    result = equivalence.run(context(models.base, inputs=models.inputs))
    assert result.status == "not_applicable"
    assert result.detail == "no reference given"


def test_vocabulary_mismatch_fails_clearly(models: Models) -> None:
    other = build_gpt2(len(models.tokenizer) + 5, seed=3)
    bigger = InMemoryCheckpoint(other, models.tokenizer, models.base.folder)
    result = equivalence.run(context(models.base, inputs=models.inputs, reference=bigger))
    assert result.status == "failed"
    assert "vocabulary sizes differ" in result.detail


# --- reference outputs document --------------------------------------------------------------


def test_document_is_compact_json(document: dict[str, Any], models: Models) -> None:
    assert document["format"] == "ckpt-reference-outputs/1"
    assert document["dtype"] == "float32"
    assert set(document["library_versions"]) == {"torch", "transformers"}
    assert [prompt["text"] for prompt in document["prompts"]] == default_prompts()
    assert [prompt["token_ids"] for prompt in document["prompts"]] == models.inputs
    assert len(json.dumps(document)) < 200_000


def test_document_verifies_the_same_model(document: dict[str, Any], models: Models) -> None:
    parsed = parse_reference_outputs(document)
    ctx = context(models.base, inputs=parsed.inputs, reference_outputs=document)
    result = equivalence.run(ctx)
    assert result.status == "passed", result.detail
    assert result.metrics["reference"] == "outputs document"
    assert result.metrics["max_abs_logit_diff"] == 0.0
    assert result.metrics["kl_divergence"] == 0.0
    assert result.metrics["greedy_match"] is True
    expected = [prompt["greedy"] for prompt in document["prompts"]]
    assert [entry["subject_continuation"] for entry in result.metrics["per_prompt"]] == expected


def _nudged(models: Models) -> InMemoryCheckpoint:
    """base with every weight moved by 1e-4: logits move by more than 1e-5, far less than 1e-2."""
    model = copy.deepcopy(models.base.model())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1e-4)
    return InMemoryCheckpoint(model, models.tokenizer, models.base.folder)


@pytest.mark.parametrize(
    ("recorded_on", "status", "max_abs_logit", "default"),
    [
        ("cuda:0", "passed", 1e-2, "default for float32 on other device"),
        ("cpu", "failed", 1e-5, "default for float32 on same device"),
    ],
)
def test_partial_tolerance_takes_the_defaults_of_its_device_pair(
    document: dict[str, Any],
    models: Models,
    recorded_on: str,
    status: str,
    max_abs_logit: float,
    default: str,
) -> None:
    cross = {**document, "device": recorded_on}
    parsed = parse_reference_outputs(cross)
    ctx = context(
        _nudged(models), inputs=parsed.inputs, reference_outputs=cross, tolerance={"max_kl": 1e-3}
    )
    result = equivalence.run(ctx)
    assert result.status == status, result.detail
    assert 1e-5 < result.metrics["max_abs_logit_diff"] < 1e-2
    assert result.thresholds["max_abs_logit"] == max_abs_logit
    assert result.thresholds["max_kl"] == 1e-3
    assert result.thresholds["sources"] == {
        "max_abs_logit": default,
        "min_top1_agreement": default,
        "max_kl": "requested",
    }


def test_stability_compares_this_device_with_itself(
    document: dict[str, Any], models: Models
) -> None:
    cross = {**document, "device": "cuda:0"}
    ctx = context(models.base, inputs=models.inputs, reference_outputs=cross)
    result = stability.run(ctx)
    assert result.thresholds["max_variance"] == 0.0
    assert result.thresholds["sources"] == {"max_variance": "default for float32 on same device"}


def test_document_rejects_the_ones_embedding_model(
    document: dict[str, Any], models: Models
) -> None:
    parsed = parse_reference_outputs(document)
    result = equivalence.run(context(models.ones, inputs=parsed.inputs, reference_outputs=document))
    assert result.status == "failed"
    assert result.metrics["max_abs_logit_diff"] > 0
    assert result.metrics["first_divergent_step"] is not None


def test_document_for_a_model_without_tokenizer(models: Models, tmp_path: Path) -> None:
    models.base.model().save_pretrained(tmp_path)
    recorded = record_reference_outputs(tmp_path, None, None, max_new_tokens=2)
    vocab_size = len(models.tokenizer)
    assert [prompt["token_ids"] for prompt in recorded["prompts"]] == default_token_ids(vocab_size)
    assert all(prompt["text"] is None for prompt in recorded["prompts"])
    assert all(len(prompt["greedy"]) == 2 for prompt in recorded["prompts"])


def _mutated(document: dict[str, Any], edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    copied = copy.deepcopy(document)
    edit(copied)
    return copied


def _first(doc: dict[str, Any]) -> dict[str, Any]:
    prompt: dict[str, Any] = doc["prompts"][0]
    return prompt


MALFORMED: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "format": (lambda d: d.update(format="ckpt-reference-outputs/2"), "format must be"),
    "no prompts": (lambda d: d.update(prompts=[]), "prompts must be a non-empty list"),
    "float id": (lambda d: _first(d)["token_ids"].__setitem__(0, 1.5), "token_ids[0]"),
    "bool id": (lambda d: _first(d)["greedy"].append(True), "prompts[0].greedy"),
    "string id": (lambda d: _first(d)["token_ids"].__setitem__(1, "7"), "token_ids[1]"),
    "shape vs data": (
        lambda d: _first(d)["logits"]["shape"].__setitem__(1, 7),
        "base64 characters",
    ),
    "positions vs ids": (lambda d: _first(d)["token_ids"].append(1), "positions"),
    "bad base64": (
        lambda d: _first(d)["logits"].update(data="!" * len(_first(d)["logits"]["data"])),
        "not valid base64",
    ),
    "dtype": (lambda d: _first(d)["logits"].update(dtype="float16"), "dtype must be"),
    "too large": (
        lambda d: _first(d)["logits"].update(shape=[1 << 20, 1 << 10]),
        "more than 67108864 floats",
    ),
    "max_new_tokens": (lambda d: d.update(max_new_tokens="8"), "max_new_tokens"),
    "greedy too long": (lambda d: d.update(max_new_tokens=1), "more than max_new_tokens"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_documents_are_rejected(document: dict[str, Any], case: str) -> None:
    edit, message = MALFORMED[case]
    with pytest.raises(InvalidInput) as caught:
        parse_reference_outputs(_mutated(document, edit))
    assert caught.value.code == "invalid_reference_outputs"
    assert caught.value.status == 400
    assert message in caught.value.message


def test_non_object_document_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="must be a JSON object"):
        parse_reference_outputs(["not", "a", "document"])


# --- stability -------------------------------------------------------------------------------


def test_stability_passes_in_eval_mode(models: Models) -> None:
    result = stability.run(context(models.base, inputs=models.inputs))
    assert result.status == "passed", result.detail
    assert result.metrics["max_variance"] == 0.0
    assert result.metrics["max_abs_diff_between_runs"] == 0.0
    assert result.metrics["model_training_mode"] is False
    assert result.metrics["dropout_probabilities"]["resid_pdrop"] == pytest.approx(0.1)


def test_stability_catches_dropout_left_on(models: Models) -> None:
    training_mode = copy.deepcopy(models.base.model()).train()
    subject = InMemoryCheckpoint(training_mode, None, models.base.folder)
    result = stability.run(context(subject, inputs=models.inputs, repeats=2))
    assert result.status == "failed"
    assert result.metrics["max_variance"] > 0
    assert result.metrics["model_training_mode"] is True
    assert result.metrics["active_dropout_modules"] > 0
    assert "training mode" in result.detail
    assert training_mode.training  # the check must not have switched the mode


# --- resumability ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_training_checkpoints_resume(training: dict[str, TrainingCheckpoint], name: str) -> None:
    checkpoint = training[name]
    subject = checkpoint.loaded()
    before = {key: value.clone() for key, value in subject.state_dict().items()}
    result = resumability.run(context(subject, inputs=[[1, 2, 3, 4, 5, 6]]))
    assert result.status == "passed", result.detail
    metrics = result.metrics
    assert metrics["optimizer_type"] == {"adamw": "AdamW", "sgd": "SGD"}[name]
    assert (metrics["epoch"], metrics["step"]) == (2, 40)
    assert metrics["parameters"] == metrics["parameters_with_state"] == 28  # tied weight once
    assert metrics["step_ok"] is True and metrics["loss_finite"] is True
    assert metrics["parameter_change_norm"] > 0
    # the step ran on a copy: the model other checks share is unchanged
    assert all(torch.equal(before[key], value) for key, value in subject.state_dict().items())
    json.dumps(result.as_dict(), allow_nan=False)


def test_wrong_optimizer_state_shape_fails(
    training: dict[str, TrainingCheckpoint], tmp_path: Path
) -> None:
    checkpoint = training["adamw"]
    folder = tmp_path / "broken"
    shutil.copytree(checkpoint.folder, folder)
    state = load_file(folder / OPTIMIZER_FILE)
    state["state.0.exp_avg"] = state["state.0.exp_avg"].t().contiguous()
    save_file(state, str(folder / OPTIMIZER_FILE))
    subject = InMemoryCheckpoint(checkpoint.model, None, folder, training=checkpoint.training)
    result = resumability.run(context(subject, inputs=[]))
    assert result.status == "failed"
    assert "state.0.exp_avg has shape [128, 100]" in result.detail
    assert "transformer.wte.weight" in result.detail
    assert result.metrics["step_possible"] is False


def test_resumability_without_a_model_checks_structure_only(
    training: dict[str, TrainingCheckpoint],
) -> None:
    subject = training["adamw"].loaded(unavailable="unknown architecture")
    result = resumability.run(context(subject, inputs=[]))
    assert result.status == "passed", result.detail
    assert result.metrics["step_possible"] is False
    assert "unknown architecture" in result.metrics["step_reason"]


def test_resumability_does_not_apply_without_training_state(models: Models) -> None:
    assert resumability.run(context(models.base, inputs=models.inputs)).status == "not_applicable"


# --- html ------------------------------------------------------------------------------------


def test_html_report(models: Models) -> None:
    ctx = context(models.ones, inputs=models.inputs, reference=models.base)
    results = [equivalence.run(ctx), stability.run(ctx), weights.run(ctx)]
    results.append(
        CheckResult("resumability", "not_applicable", detail="<script>alert(1)</script>")
    )
    report = {
        "id": "rep-1",
        "checkpoint": {"id": "ckpt-test", "name": "tiny <b>", "version": 1},
        "status": "failed",
        "device": "cpu",
        "library_versions": {"torch": torch.__version__},
        "created_at": "2024-01-01T00:00:00Z",
        "finished_at": "2024-01-01T00:00:05Z",
        "timings": {"load": 0.5},
        "checks": [result.as_dict() for result in results],
        "error": None,
    }
    page = render_report_html(report)
    assert page.startswith("<!DOCTYPE html>")
    for name in ("equivalence", "stability", "weights", "resumability"):
        assert f'id="check-{name}"' in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "tiny &lt;b&gt;" in page
    assert 'class="token diverged"' in page
    assert "Greedy continuations" in page
    assert "http" not in page  # self-contained


def test_html_for_a_queued_report() -> None:
    page = render_report_html(
        {"id": "rep-2", "checkpoint": {"id": "c"}, "status": "queued", "checks": []}
    )
    assert "queued" in page and "No check results yet." in page
