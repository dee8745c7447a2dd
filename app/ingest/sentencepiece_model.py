"""tokenizer.model: a SentencePiece protobuf, parsed as data with a bounded size.

protobuf's parser reads it first (pure data, no code); only a well-formed model is then loaded
by sentencepiece itself, which is what a tokenizer built from it would do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.errors import RejectedCheckpoint

TOKENIZER_CODE = "tokenizer_invalid"
SENTENCEPIECE_MODEL = "tokenizer.model"
_MAX_MODEL_BYTES = 64 << 20


def describe_sentencepiece(path: Path) -> dict[str, Any]:
    """{vocab_size, special_tokens} of a tokenizer.model, or 422 when it is not one."""
    if path.stat().st_size > _MAX_MODEL_BYTES:
        raise RejectedCheckpoint(
            f"{SENTENCEPIECE_MODEL} is larger than 64 MiB", code=TOKENIZER_CODE
        )
    data = path.read_bytes()
    proto = _parse(data)
    pieces = [piece.piece for piece in proto.pieces]
    if not pieces:
        raise RejectedCheckpoint(
            f"{SENTENCEPIECE_MODEL} is not a SentencePiece model (no pieces)", code=TOKENIZER_CODE
        )
    _load(data)
    spec = proto.trainer_spec
    roles = {"bos": spec.bos_id, "eos": spec.eos_id, "pad": spec.pad_id, "unk": spec.unk_id}
    return {
        "vocab_size": len(pieces),
        "special_tokens": {
            role: pieces[index] if 0 <= index < len(pieces) else None
            for role, index in roles.items()
        },
    }


def _parse(data: bytes) -> Any:
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    try:
        return sentencepiece_model_pb2.ModelProto.FromString(data)  # type: ignore[attr-defined]
    except (DecodeError, ValueError) as exc:
        raise RejectedCheckpoint(
            f"{SENTENCEPIECE_MODEL} is not a SentencePiece model: {exc}", code=TOKENIZER_CODE
        ) from exc


def _load(data: bytes) -> None:
    import sentencepiece

    try:
        sentencepiece.SentencePieceProcessor(model_proto=data)
    except (RuntimeError, OSError, ValueError) as exc:
        raise RejectedCheckpoint(
            f"sentencepiece cannot load {SENTENCEPIECE_MODEL}: {str(exc)[:200]}",
            code=TOKENIZER_CODE,
        ) from exc
