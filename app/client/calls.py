"""The HTTP request behind each client method, shared by the sync and the async client."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import quote


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def ref_path(ref: str) -> str:
    return quote(ref, safe="@:")


def checkpoint(ref: str, suffix: str = "") -> str:
    return f"/v1/checkpoints/{ref_path(ref)}{suffix}"


def upload_params(
    *, name: str | None, filename: str, metadata: dict[str, Any] | None, config: Any
) -> dict[str, str]:
    params = {"filename": filename}
    if name:
        params["name"] = name
    if metadata:
        params["metadata"] = json.dumps(metadata)
    if config is not None:
        params["config"] = config if isinstance(config, str) else json.dumps(config)
    return params


def list_checkpoints(
    *, name: str | None, alias: str | None, limit: int, cursor: str | None
) -> Call:
    params = {"name": name, "alias": alias, "limit": limit, "cursor": cursor}
    return Call("GET", "/v1/checkpoints", {k: v for k, v in params.items() if v is not None})


def alias(ref: str, name: str, *, remove: bool) -> Call:
    return Call("DELETE" if remove else "PUT", checkpoint(ref, f"/aliases/{quote(name, safe='')}"))


def diff(ref_a: str, ref_b: str) -> Call:
    return Call("GET", checkpoint(ref_a, f"/diff/{ref_path(ref_b)}"))


def file_path(ref: str, path: str | None) -> str:
    if path is None:
        return checkpoint(ref, "/download")
    return checkpoint(ref, f"/files/{quote(path, safe='/')}")


class VerificationOptions(TypedDict, total=False):
    """`reference`: a checkpoint ref, an outputs document, or a Path to one (a JSON file)."""

    reference: str | Path | dict[str, Any]
    prompts: list[str]
    token_ids: list[list[int]]
    checks: list[str]
    tolerance: dict[str, float]
    device: str
    repeats: int
    max_new_tokens: int


def verification_body(options: VerificationOptions) -> dict[str, Any]:
    body: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    reference = body.pop("reference", None)
    if isinstance(reference, Path):
        body["reference"] = {"outputs": json.loads(reference.read_text())}
    elif isinstance(reference, dict):
        body["reference"] = {"outputs": reference}
    elif reference is not None:
        body["reference"] = {"checkpoint": reference}
    return body


def generation_path(ref: str | None, route: str) -> str:
    return f"/{route}" if ref is None else f"/models/{ref_path(ref)}/{route}"


def generation_body(prompt: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """TGI request; unset parameters are left out (so the server's defaults apply)."""
    return {"inputs": prompt, "parameters": {k: v for k, v in parameters.items() if v is not None}}


def completion_body(model: str, prompt: str | list[str], options: dict[str, Any]) -> dict[str, Any]:
    body = {"model": model, "prompt": prompt}
    body.update({k: v for k, v in options.items() if v is not None})
    return body
