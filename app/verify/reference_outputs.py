"""The reference outputs document: what a model produced on the machine it was trained on.

A user records it (`record_reference_outputs`) before the model leaves that machine and sends it
with a verification request; the equivalence check then proves that the stored checkpoint, reloaded
here, still produces those outputs. Recording uses app.verify.forward's prompt_logits and
greedy_continuation, the very functions the checks use, so both sides compute identically.

Layout (JSON):

    {"format": "ckpt-reference-outputs/1", "created_at", "device", "dtype",
     "library_versions": {"torch", "transformers"}, "weights_digest": str | null,
     "max_new_tokens": int,
     "prompts": [{"text": str | null, "token_ids": [int],
                  "logits": {"dtype": "float32", "shape": [T, V], "data": base64},
                  "greedy": [int]}]}

`data` is the little-endian float32 bytes of the [T, V] logits, base64-encoded. Full logits are
what lets the check measure max |Δlogit| and KL; they cost T * V * 4 bytes (about 5.4 bytes once
base64-encoded) per prompt, so the default prompts are few and short.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.errors import AppError, InvalidInput
from app.ingest.model_config import architecture_from_config
from app.verify.forward import greedy_continuation, prompt_logits

FORMAT = "ckpt-reference-outputs/1"
ERROR_CODE = "invalid_reference_outputs"
MAX_TOTAL_LOGITS = 64 * 1024 * 1024  # floats over all prompts (256 MiB of float32)
MAX_PROMPTS = 256
MAX_NEW_TOKENS = 4096
LOGITS_DTYPE = "float32"
_LITTLE_ENDIAN_FLOAT32 = np.dtype("<f4")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")

_DEFAULT_PROMPTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, the model says hello back.",
    "A checkpoint registry keeps trained models safe.",
)
# Fixed, model-independent id patterns; default_token_ids folds them into the vocabulary.
_DEFAULT_ID_SEEDS = ((1, 2, 3, 4, 5, 6, 7, 8), (17, 42, 7, 99, 3, 64, 11), (5, 5, 5, 10, 20, 40))


@dataclass(frozen=True)
class ReferencePrompt:
    text: str | None
    token_ids: list[int]
    logits: torch.Tensor  # float32 [len(token_ids), vocab]
    greedy: list[int]


@dataclass(frozen=True)
class ReferenceOutputs:
    created_at: str | None
    device: str | None
    dtype: str | None
    library_versions: dict[str, str]
    weights_digest: str | None
    max_new_tokens: int
    prompts: list[ReferencePrompt]
    architecture: dict[str, Any] | None = None

    @property
    def inputs(self) -> list[list[int]]:
        return [list(prompt.token_ids) for prompt in self.prompts]

    @property
    def vocab_size(self) -> int:
        return int(self.prompts[0].logits.shape[1])


def default_prompts() -> list[str]:
    return list(_DEFAULT_PROMPTS)


def default_token_ids(vocab_size: int) -> list[list[int]]:
    """Fixed id sequences for a model without a tokenizer, valid for any vocabulary size."""
    if vocab_size < 1:
        raise ValueError("vocab_size must be positive")
    return [[seed % vocab_size for seed in seeds] for seeds in _DEFAULT_ID_SEEDS]


# --- recording -------------------------------------------------------------------------------


def record_reference_outputs(
    model_dir: Path | torch.nn.Module,
    prompts: list[str] | None = None,
    token_ids: list[list[int]] | None = None,
    max_new_tokens: int = 32,
    device: str = "cpu",
    *,
    weights_digest: str | None = None,
    context_length: int | None = None,
) -> dict[str, Any]:
    """Load a save_pretrained folder, run it on the prompts and return the JSON document.

    Give `prompts` (needs a tokenizer in the folder) or `token_ids`, not both; with neither, the
    default prompts are used (or default_token_ids when the folder has no tokenizer). Instead of a
    folder, `model_dir` may be any torch.nn.Module mapping token ids [1, T] to logits [1, T, V]
    (a from-scratch GPT): then give `token_ids`, and `context_length` if the module has one.
    """
    from transformers import AutoModelForCausalLM

    if prompts is not None and token_ids is not None:
        raise ValueError("give prompts or token_ids, not both")
    if not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens must be between 0 and {MAX_NEW_TOKENS}")
    torch_device = torch.device(device)
    if isinstance(model_dir, torch.nn.Module):
        document = _record_module(
            model_dir, token_ids, max_new_tokens, torch_device, context_length
        )
        return {**document, "weights_digest": weights_digest}
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    model = model.to(torch_device).eval()
    tokenizer = _load_tokenizer(model_dir)
    texts, inputs = _prompt_inputs(tokenizer, prompts, token_ids, int(model.config.vocab_size))
    _check_inputs_fit(inputs, model)
    logits = prompt_logits(model, inputs, torch_device)
    greedy = [greedy_continuation(model, ids, max_new_tokens, torch_device) for ids in inputs]
    document = _document(model, torch_device, max_new_tokens, texts, inputs, logits, greedy)
    # What the recording model was, so equivalence can name an architecture difference.
    document["architecture"] = _recorded_architecture(model.config.to_dict())
    return {**document, "weights_digest": weights_digest}


def _document(
    model: torch.nn.Module,
    device: torch.device,
    max_new_tokens: int,
    texts: list[str | None],
    inputs: list[list[int]],
    logits: list[torch.Tensor],
    greedy: list[list[int]],
) -> dict[str, Any]:
    import transformers

    return {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(),
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "library_versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "weights_digest": None,
        "architecture": None,
        "max_new_tokens": max_new_tokens,
        "prompts": [
            {"text": text, "token_ids": ids, "logits": encode_logits(out), "greedy": continuation}
            for text, ids, out, continuation in zip(texts, inputs, logits, greedy, strict=True)
        ],
    }


def _record_module(
    module: torch.nn.Module,
    token_ids: list[list[int]] | None,
    max_new_tokens: int,
    device: torch.device,
    context_length: int | None,
) -> dict[str, Any]:
    """The document from the user's own module: logits of each prompt, then greedy tokens by
    argmax over full forwards, as many as the registry's check will ask for (capped by context)."""
    if not token_ids or not all(token_ids):
        raise ValueError("a torch.nn.Module has no tokenizer here: give token_ids")
    inputs = [[int(token) for token in ids] for ids in token_ids]
    module = module.to(device).eval()
    logits = [_module_logits(module, ids, device) for ids in inputs]
    greedy = []
    for ids in inputs:
        steps = max_new_tokens if context_length is None else context_length - len(ids)
        sequence = list(ids)
        for _ in range(max(0, min(max_new_tokens, steps))):
            sequence.append(int(_module_logits(module, sequence, device)[-1].argmax()))
        greedy.append(sequence[len(ids) :])
    texts: list[str | None] = [None] * len(inputs)
    return _document(module, device, max_new_tokens, texts, inputs, logits, greedy)


@torch.inference_mode()
def _module_logits(module: torch.nn.Module, ids: list[int], device: torch.device) -> torch.Tensor:
    output = module(torch.tensor([ids], dtype=torch.long, device=device))
    if isinstance(output, tuple):  # nanoGPT's forward returns (logits, loss)
        output = output[0]
    logits = output if isinstance(output, torch.Tensor) else output.logits
    if logits.dim() != 3 or tuple(logits.shape[:2]) != (1, len(ids)):
        raise ValueError(
            f"the module returned logits of shape {list(logits.shape)}; expected [1, {len(ids)}, "
            "vocab]: logits for every position (nanoGPT gives them when called with targets)"
        )
    return logits[0].float().cpu()


def _recorded_architecture(config: dict[str, Any]) -> dict[str, Any] | None:
    """The summary's flat fields: what a document may hold (see _optional_architecture)."""
    try:
        summary = architecture_from_config(config, source="config.json")
    except AppError:  # a config the registry would refuse: record the outputs all the same
        return None
    return {key: value for key, value in summary.items() if _short_scalar(value)}


def _short_scalar(value: Any) -> bool:
    scalar = value is None or isinstance(value, bool | int | float | str)
    listed = isinstance(value, list) and all(isinstance(item, str) for item in value)
    return (scalar or listed) and len(str(value)) <= 256


def _load_tokenizer(model_dir: Path) -> Any | None:
    if not any((model_dir / name).is_file() for name in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _prompt_inputs(
    tokenizer: Any | None,
    prompts: list[str] | None,
    token_ids: list[list[int]] | None,
    vocab_size: int,
) -> tuple[list[str | None], list[list[int]]]:
    if token_ids is not None:
        inputs = [[int(token) for token in ids] for ids in token_ids]
        texts: list[str | None] = [None] * len(inputs)
        return texts, inputs
    if tokenizer is None:
        if prompts is not None:
            raise ValueError("prompts need a tokenizer, but the folder has none; give token_ids")
        inputs = default_token_ids(vocab_size)
        return [None] * len(inputs), inputs
    chosen = prompts if prompts is not None else default_prompts()
    inputs = [[int(token) for token in tokenizer(text)["input_ids"]] for text in chosen]
    return list(chosen), inputs


def _check_inputs_fit(inputs: list[list[int]], model: Any) -> None:
    vocab_size = int(model.config.vocab_size)
    context = int(
        getattr(model.config, "n_positions", 0)
        or getattr(model.config, "max_position_embeddings", 0)
        or 0
    )
    if not inputs:
        raise ValueError("no prompts to record")
    for index, ids in enumerate(inputs):
        if not ids:
            raise ValueError(f"prompt {index} has no tokens")
        if any(not 0 <= token < vocab_size for token in ids):
            raise ValueError(
                f"prompt {index} has token ids outside the vocabulary (0..{vocab_size - 1})"
            )
        if context and len(ids) > context:
            raise ValueError(
                f"prompt {index} has {len(ids)} tokens; the model's context is {context}"
            )


def encode_logits(logits: torch.Tensor) -> dict[str, Any]:
    array = logits.detach().cpu().float().numpy().astype(_LITTLE_ENDIAN_FLOAT32, copy=False)
    return {
        "dtype": LOGITS_DTYPE,
        "shape": [int(size) for size in logits.shape],
        "data": base64.b64encode(array.tobytes()).decode("ascii"),
    }


# --- parsing ---------------------------------------------------------------------------------


def parse_reference_outputs(doc: Any) -> ReferenceOutputs:
    """Validate a document; raises InvalidInput(code="invalid_reference_outputs") with the flaw."""
    document = _require_mapping(doc, "the reference outputs document")
    if document.get("format") != FORMAT:
        raise _invalid(f"format must be {FORMAT!r}, got {_short(document.get('format'))}")
    max_new_tokens = _require_int(document.get("max_new_tokens"), "max_new_tokens")
    if not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise _invalid(f"max_new_tokens must be between 0 and {MAX_NEW_TOKENS}")
    raw_prompts = document.get("prompts")
    if not isinstance(raw_prompts, list) or not raw_prompts:
        raise _invalid("prompts must be a non-empty list")
    if len(raw_prompts) > MAX_PROMPTS:
        raise _invalid(f"prompts has {len(raw_prompts)} entries; the limit is {MAX_PROMPTS}")
    _check_total_size(raw_prompts)
    prompts = [_parse_prompt(raw, index, max_new_tokens) for index, raw in enumerate(raw_prompts)]
    vocab_sizes = {int(prompt.logits.shape[1]) for prompt in prompts}
    if len(vocab_sizes) != 1:
        raise _invalid(f"prompts' logits disagree on the vocabulary size: {sorted(vocab_sizes)}")
    return ReferenceOutputs(
        created_at=_optional_str(document.get("created_at"), "created_at"),
        device=_optional_str(document.get("device"), "device"),
        dtype=_optional_str(document.get("dtype"), "dtype"),
        library_versions=_library_versions(document.get("library_versions")),
        weights_digest=_optional_str(document.get("weights_digest"), "weights_digest"),
        max_new_tokens=max_new_tokens,
        prompts=prompts,
        architecture=_optional_architecture(document.get("architecture")),
    )


def _check_total_size(raw_prompts: list[Any]) -> None:
    """Refuse an oversized document from its declared shapes, before decoding any data."""
    total = 0
    for index, raw in enumerate(raw_prompts):
        where = f"prompts[{index}].logits"
        logits = _require_mapping(_require_mapping(raw, f"prompts[{index}]").get("logits"), where)
        total += math.prod(_parse_shape(logits.get("shape"), f"{where}.shape"))
        if total > MAX_TOTAL_LOGITS:
            raise _invalid(
                f"the logits add up to more than {MAX_TOTAL_LOGITS} floats; use fewer or shorter "
                "prompts"
            )


def _parse_prompt(raw: Any, index: int, max_new_tokens: int) -> ReferencePrompt:
    where = f"prompts[{index}]"
    prompt = _require_mapping(raw, where)
    token_ids = _require_ids(prompt.get("token_ids"), f"{where}.token_ids")
    if not token_ids:
        raise _invalid(f"{where}.token_ids must not be empty")
    greedy = _require_ids(prompt.get("greedy"), f"{where}.greedy")
    if len(greedy) > max_new_tokens:
        raise _invalid(
            f"{where}.greedy has {len(greedy)} tokens, more than max_new_tokens={max_new_tokens}"
        )
    logits = _decode_logits(prompt.get("logits"), f"{where}.logits")
    if logits.shape[0] != len(token_ids):
        raise _invalid(
            f"{where}.logits has {logits.shape[0]} positions but token_ids has {len(token_ids)}"
        )
    vocab_size = int(logits.shape[1])
    out_of_range = [token for token in token_ids + greedy if token >= vocab_size]
    if out_of_range:
        raise _invalid(
            f"{where} has token id {out_of_range[0]} outside the logits' vocabulary of {vocab_size}"
        )
    return ReferencePrompt(
        text=_optional_str(prompt.get("text"), f"{where}.text"),
        token_ids=token_ids,
        logits=logits,
        greedy=greedy,
    )


def _decode_logits(raw: Any, where: str) -> torch.Tensor:
    logits = _require_mapping(raw, where)
    if logits.get("dtype") != LOGITS_DTYPE:
        raise _invalid(f"{where}.dtype must be {LOGITS_DTYPE!r}, got {_short(logits.get('dtype'))}")
    shape = _parse_shape(logits.get("shape"), f"{where}.shape")
    data = logits.get("data")
    if not isinstance(data, str):
        raise _invalid(f"{where}.data must be a base64 string")
    expected_bytes = math.prod(shape) * _LITTLE_ENDIAN_FLOAT32.itemsize
    if len(data) != 4 * math.ceil(expected_bytes / 3):
        raise _invalid(
            f"{where}.data has {len(data)} base64 characters; shape {shape} needs "
            f"{expected_bytes} bytes ({4 * math.ceil(expected_bytes / 3)} characters)"
        )
    try:
        raw_bytes = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"{where}.data is not valid base64") from None
    if len(raw_bytes) != expected_bytes:
        raise _invalid(f"{where}.data decodes to {len(raw_bytes)} bytes, not {expected_bytes}")
    array = np.frombuffer(raw_bytes, dtype=_LITTLE_ENDIAN_FLOAT32).astype(np.float32)
    tensor = torch.from_numpy(array).reshape(shape)
    if not bool(torch.isfinite(tensor).all()):
        raise _invalid(f"{where} contains NaN or infinite values")
    return tensor


def _parse_shape(raw: Any, where: str) -> list[int]:
    if not isinstance(raw, list) or len(raw) != 2:
        raise _invalid(f"{where} must be [positions, vocab_size]")
    shape = [_require_int(size, where) for size in raw]
    if any(size < 1 for size in shape):
        raise _invalid(f"{where} must be positive, got {shape}")
    return shape


def _require_mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _invalid(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _require_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{where} must be an integer, got {_short(value)}")
    return value


def _require_ids(value: Any, where: str) -> list[int]:
    if not isinstance(value, list):
        raise _invalid(f"{where} must be a list of token ids")
    for position, token in enumerate(value):
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise _invalid(
                f"{where}[{position}] must be a non-negative integer token id, got {_short(token)}"
            )
    return list(value)


def _optional_architecture(value: Any) -> dict[str, Any] | None:
    """An architecture summary: flat, with scalar values (it is only compared and shown)."""
    if value is None:
        return None
    architecture = _require_mapping(value, "architecture")
    if len(architecture) > 64:
        raise _invalid("architecture has more than 64 fields")
    for key, item in architecture.items():
        if not _short_scalar(item):
            raise _invalid(f"architecture.{_short(key)} must be a short scalar")
    return dict(architecture)


def _optional_str(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _invalid(f"{where} must be a string or null")


def _library_versions(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    versions = _require_mapping(value, "library_versions")
    if not all(isinstance(version, str) for version in versions.values()):
        raise _invalid("library_versions must map library names to version strings")
    return dict(versions)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(f"Invalid reference outputs: {message}.", code=ERROR_CODE)
