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


def loads_strict(data: bytes | str, *, what: str, code: str) -> Any:
    """Parse JSON, raising RejectedCheckpoint(code) with a message that names `what` was wrong."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as exc:
        raise RejectedCheckpoint(f"{what} is not valid UTF-8: {exc}", code=code) from exc
    except DuplicateKeyError as exc:
        raise RejectedCheckpoint(f"{what} has the key {exc} more than once", code=code) from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise RejectedCheckpoint(f"{what} is not valid JSON: {exc}", code=code) from exc
