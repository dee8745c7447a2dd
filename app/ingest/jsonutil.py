"""Strict JSON for untrusted files: UTF-8 only, duplicate keys rejected."""

from __future__ import annotations

import json
from typing import Any

from app.errors import RejectedCheckpoint


class DuplicateKeyError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(key)
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    # NaN and Infinity are not JSON (PostgreSQL's json type refuses them too).
    raise ValueError(f"{name} is not a JSON value")


def strict_json(text: str) -> Any:
    """json.loads without duplicate keys or NaN/Infinity; raises ValueError."""
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def loads_strict(data: bytes | str, *, what: str, code: str) -> Any:
    """Parse JSON, raising RejectedCheckpoint(code) with a message that names `what` was wrong."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return strict_json(text)
    except UnicodeDecodeError as exc:
        raise RejectedCheckpoint(f"{what} is not valid UTF-8: {exc}", code=code) from exc
    except DuplicateKeyError as exc:
        raise RejectedCheckpoint(f"{what} has the key {exc} more than once", code=code) from exc
    except (ValueError, RecursionError) as exc:
        raise RejectedCheckpoint(f"{what} is not valid JSON: {exc}", code=code) from exc
