"""/v1/checkpoints: upload, list, inspect, download, alias, delete."""

from __future__ import annotations

import asyncio
import re
import uuid
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import PurePosixPath
from typing import Any

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from app.api.blob_response import blob_response
from app.api.deps import CheckpointsDep, DiffsDep, SettingsDep, StoreDep
from app.api.errors import error_responses
from app.api.upload_body import BodyPace, ReceivedUpload, receive_upload
from app.auth.deps import UploadQuotaDep, require_scope
from app.db.refs import check_name
from app.errors import InvalidInput, PayloadTooLarge
from app.ingest.inspect import parse_config_text
from app.ingest.jsonutil import strict_json
from app.ingest.spool import UploadSpool
from app.services.checkpoints import CheckpointService, UploadRequest
from app.services.diffs import CheckpointDiff
from app.services.views import CheckpointPage, CheckpointView, TensorList

router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"])

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "name": {"type": "string"},
                        "config": {"type": "string", "description": "config.json as text"},
                        "metadata": {"type": "string", "description": "JSON object"},
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=CheckpointView,
    openapi_extra=_UPLOAD_BODY,
    responses={
        200: {"model": CheckpointView, "description": "identical upload already stored"},
        **error_responses(400, 408, 413, 415, 422, 503, 507),
    },
)
async def upload_checkpoint(
    request: Request,
    checkpoints: CheckpointsDep,
    settings: SettingsDep,
    store: StoreDep,
    quota: UploadQuotaDep,
    name: str | None = Query(None, description="checkpoint name (raw body uploads)"),
    filename: str | None = Query(None, description="original file name (raw body uploads)"),
    config: str | None = Query(None, description="config.json as JSON text"),
    metadata: str | None = Query(None, description="user metadata as a JSON object"),
) -> Response:
    """Upload a zip of a model folder, a .safetensors file or a torch.save file.

    Send `multipart/form-data` (part `file`, optional `name`, `config`, `metadata`) or the raw
    bytes as `application/octet-stream` with the same fields as query parameters.
    """
    _check_announced_size(request, settings.max_upload_bytes)
    _check_query(name=name, filename=filename, config=config, metadata=metadata)

    def make_spool(expected_size: int | None) -> UploadSpool:
        quota.check_announced(expected_size)
        path = store.tmp_dir / f"upload-{uuid.uuid4().hex}"
        max_bytes = quota.spool_limit(settings.max_upload_bytes)
        limits = settings.ingest_limits
        return UploadSpool(path, max_bytes=max_bytes, limits=limits, expected_size=expected_size)

    pace = BodyPace(settings.body_timeout_seconds, settings.min_body_bytes_per_second)
    received = await quota.receiving(
        receive_upload(request, make_spool, pace), settings.max_upload_bytes
    )
    try:
        upload = _upload_request(
            received, name=name, filename=filename, config=config, metadata=metadata
        )
        upload = replace(upload, uploaded_by=quota.key_id, quota_bytes=quota.limit)
        view, created = await _on_ingest_pool(request, checkpoints, upload)
    finally:  # stored or refused, the spooled body goes (ingest removes it too)
        received.spooled.path.unlink(missing_ok=True)
    return JSONResponse(
        view.model_dump(mode="json"),
        status_code=201 if created else 200,
        headers={"Location": f"/v1/checkpoints/{view.id}"},
    )


async def _on_ingest_pool(
    request: Request, checkpoints: CheckpointService, upload: UploadRequest
) -> tuple[CheckpointView, bool]:
    """Ingest on the ingest executor, so uploads never take the default thread pool's threads
    from sync routes and key checks. Shielded: the spooled body is removed only once ingest is
    done with it, even when the request is cancelled."""
    executor: Executor = request.app.state.ingest_executor
    loop = asyncio.get_running_loop()
    with anyio.CancelScope(shield=True):
        stored = await loop.run_in_executor(executor, checkpoints.ingest, upload)
    return stored


def _check_announced_size(request: Request, limit: int) -> None:
    announced = request.headers.get("content-length")
    if announced and announced.isdigit() and int(announced) > limit:
        raise PayloadTooLarge(
            f"Content-Length {announced} exceeds the upload limit of {limit} bytes",
            code="upload_too_large",
        )


def _check_query(
    *, name: str | None, filename: str | None, config: str | None, metadata: str | None
) -> None:
    """Query parameters are known before the body: a bad one is refused before it is read
    (empty ones are ignored, as _upload_request ignores them)."""
    if name:
        check_name(name)
    if filename:
        _stored_filename(filename)
    if config:
        parse_config_text(config)
    if metadata:
        _parse_metadata(metadata)


def _upload_request(
    received: ReceivedUpload,
    *,
    name: str | None,
    filename: str | None,
    config: str | None,
    metadata: str | None,
) -> UploadRequest:
    fields = received.fields
    filename = fields.get("filename") or received.filename or filename
    config_text = fields.get("config") or config
    metadata_text = fields.get("metadata") or metadata
    return UploadRequest(
        spooled=received.spooled,
        name=fields.get("name") or name or _name_from_filename(filename),
        filename=_stored_filename(filename) if filename else None,
        config=parse_config_text(config_text) if config_text else None,
        metadata=_parse_metadata(metadata_text) if metadata_text else {},
    )


def _stored_filename(filename: str) -> str:
    if any(ord(char) < 32 or ord(char) == 127 for char in filename):
        raise InvalidInput("the file name contains control characters", code="invalid_filename")
    return PurePosixPath(filename.replace("\\", "/")).name[:255]


def _name_from_filename(filename: str | None) -> str:
    if not filename:
        raise InvalidInput(
            "give the checkpoint a name (field or query parameter 'name')", code="missing_name"
        )
    stem = PurePosixPath(filename.replace("\\", "/")).name.split(".")[0]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:128]
    if not cleaned:
        raise InvalidInput(
            "give the checkpoint a name (field or query parameter 'name')", code="missing_name"
        )
    return cleaned


def _parse_metadata(text: str) -> dict[str, Any]:
    try:
        value = strict_json(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"metadata is not valid JSON: {exc}", code="invalid_metadata") from exc
    if not isinstance(value, dict):
        raise InvalidInput("metadata must be a JSON object", code="invalid_metadata")
    return value


@router.get("", response_model=CheckpointPage)
def list_checkpoints(
    checkpoints: CheckpointsDep,
    name: str | None = None,
    alias: str | None = None,
    cursor: str | None = None,
    limit: int = Query(50, ge=1, le=200),
) -> CheckpointPage:
    """Checkpoints, newest first; pass `next_cursor` back as `cursor` for the next page."""
    return checkpoints.list(name=name, alias=alias, cursor=cursor, limit=limit)


@router.get("/{ref}", response_model=CheckpointView, responses=error_responses(400, 404))
def get_checkpoint(ref: str, checkpoints: CheckpointsDep) -> CheckpointView:
    """`ref` is an id, a name (its latest), `name:alias` or `name@version`."""
    return checkpoints.get(ref)


@router.get("/{ref}/tensors", response_model=TensorList, responses=error_responses(400, 404))
def list_tensors(ref: str, checkpoints: CheckpointsDep) -> TensorList:
    return checkpoints.tensors(ref)


@router.get("/{ref}/download", responses=error_responses(400, 404, 416, 503))
def download_checkpoint(
    ref: str, request: Request, checkpoints: CheckpointsDep, store: StoreDep
) -> Response:
    """The upload exactly as received; supports Range requests."""
    return blob_response(checkpoints.upload_blob(ref), store, request)


@router.get("/{ref}/files/{path:path}", responses=error_responses(400, 404, 416, 503))
def download_file(
    ref: str, path: str, request: Request, checkpoints: CheckpointsDep, store: StoreDep
) -> Response:
    return blob_response(checkpoints.file_blob(ref, path), store, request)


@router.get(
    "/{ref_a}/diff/{ref_b}",
    response_model=CheckpointDiff,
    responses=error_responses(400, 404, 502, 503),
)
def diff_checkpoints(ref_a: str, ref_b: str, diffs: DiffsDep) -> CheckpointDiff:
    """Tensor by tensor: only in a / only in b, shape or dtype changes, identical (by hash) or
    changed with ‖ΔW‖_F, max |Δ| and relative change."""
    return diffs.diff(ref_a, ref_b)


@router.put(
    "/{ref}/aliases/{alias}",
    response_model=CheckpointView,
    responses=error_responses(400, 404, 409),
)
def put_alias(ref: str, alias: str, checkpoints: CheckpointsDep) -> CheckpointView:
    """Point `alias` (per name) at this checkpoint, moving it from another version if needed."""
    return checkpoints.set_alias(ref, alias)


@router.delete(
    "/{ref}/aliases/{alias}",
    response_model=CheckpointView,
    responses=error_responses(400, 404, 409),
)
def delete_alias(ref: str, alias: str, checkpoints: CheckpointsDep) -> CheckpointView:
    return checkpoints.remove_alias(ref, alias)


@router.delete(
    "/{ref}",
    status_code=204,
    dependencies=[require_scope("admin")],
    responses=error_responses(400, 404),
)
def delete_checkpoint(ref: str, checkpoints: CheckpointsDep) -> Response:
    """Delete the checkpoint; its blobs go once no other checkpoint references them."""
    checkpoints.delete(ref)
    return Response(status_code=204)
