"""The registry's use cases: ingest an upload, look checkpoints up, alias and delete them."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from app import faults
from app.auth.quota import enforce_quota
from app.db.engine import Database
from app.db.models import Checkpoint, CheckpointFile, TensorRow
from app.db.refs import LATEST, check_alias, check_name
from app.db.repositories import CheckpointRepository
from app.errors import Conflict, InvalidInput, NotFound
from app.ingest.inspect import Inspection, inspect_upload
from app.ingest.layouts import added_parameter_count
from app.ingest.spool import SpooledUpload
from app.ingest.summary import parameter_stats, weights_digest
from app.ingest.types import IngestLimits, TensorRecord
from app.services.eviction import DeletedCheckpoint, checkpoints_in_use
from app.services.verifications import default_request, schedule_verification
from app.services.views import CheckpointPage, CheckpointView, TensorList, TensorView
from app.storage.base import BlobStorage
from app.storage.leases import BlobLeases

log = logging.getLogger(__name__)

VERIFIED, BEST = "verified", "best"
RESERVED_ALIASES = {LATEST, VERIFIED, BEST}
LARGEST_TENSORS = 5
MAX_PAGE = 200


@dataclass(frozen=True)
class UploadRequest:
    spooled: SpooledUpload
    name: str
    filename: str | None
    config: dict[str, Any] | None
    metadata: dict[str, Any]
    uploaded_by: str | None = None  # the API key's id
    quota_bytes: int | None = None  # that key's storage quota (None: unlimited)


@dataclass(frozen=True)
class StoredBlob:
    """A blob to stream back to a client."""

    path: Path | None  # a local file to send as is, else the bytes stream from the store
    size: int
    sha256: str
    filename: str


class CheckpointService:
    def __init__(
        self, db: Database, store: BlobStorage, limits: IngestLimits, *, job_max_attempts: int
    ) -> None:
        self.db = db
        self.store = store
        self.limits = limits
        self.job_max_attempts = job_max_attempts
        self.leases = BlobLeases(db, store)
        # Called after a deletion commits (the generation cache evicts the model, its folder goes)
        self.on_deleted: list[Callable[[DeletedCheckpoint], None]] = []

    # -- ingest ---------------------------------------------------------------------------------

    def ingest(self, request: UploadRequest) -> tuple[CheckpointView, bool]:
        """Store an upload; returns (checkpoint, created). Always consumes the spooled file,
        whatever refuses the upload (its name included)."""
        try:
            check_name(request.name)
            existing = self._same_upload(request.name, request.spooled.sha256, request.config)
            if existing is not None:
                return existing, False
            with self.store.workdir() as workdir:
                inspection = inspect_upload(
                    request.spooled, workdir, config=request.config, limits=self.limits
                )
                return self._store(request, inspection)
        finally:
            request.spooled.path.unlink(missing_ok=True)

    def _same_upload(
        self, name: str, sha256: str, config: dict[str, Any] | None = None
    ) -> CheckpointView | None:
        """The version already holding these bytes under this name; refused when the upload's
        config contradicts that version's (the bytes alone are not the model)."""
        with self.db.reading() as session:
            repo = CheckpointRepository(session)
            row = repo.find_same_upload(name, sha256)
            if row is None:
                return None
            _check_same_config(row, config)
            return _views(repo, [row])[0]

    def _store(self, request: UploadRequest, inspection: Inspection) -> tuple[CheckpointView, bool]:
        sources = _blob_sources(request.spooled, inspection)
        try:
            with self.leases.holding(sources.keys()):
                return self._put_and_insert(request, inspection, sources)
        finally:
            # Whatever failed, none of these is left unreferenced: not the blobs this upload
            # stored, nor one it found stored that a concurrent delete spared for its lease.
            self._drop_unreferenced(set(sources))

    def _put_and_insert(
        self, request: UploadRequest, inspection: Inspection, sources: dict[str, Path]
    ) -> tuple[CheckpointView, bool]:
        try:
            for sha, path in sources.items():
                self.store.put(path, sha)
            faults.stop_here("after_blobs", self.store.root)
            view = self._insert(request, inspection)
            faults.stop_here("after_commit", self.store.root)
            return view, True
        except IntegrityError:
            # A concurrent upload of the same bytes under the same name won the race.
            existing = self._same_upload(request.name, request.spooled.sha256)
            if existing is None:
                raise
            return existing, False

    def _insert(self, request: UploadRequest, inspection: Inspection) -> CheckpointView:
        with self.db.transaction() as session:
            enforce_quota(session, request.uploaded_by, request.quota_bytes, request.spooled.size)
            repo = CheckpointRepository(session)
            row = _checkpoint_row(request, inspection, version=repo.next_version(request.name))
            session.add(row)
            session.flush()
            session.add_all(_tensor_rows(row.id, inspection.tensors))
            repo.set_alias(row.name, LATEST, row.id)
            schedule_verification(
                session, row.id, default_request(), max_attempts=self.job_max_attempts
            )
            session.flush()
            update_best_alias(repo, row.name)
            session.flush()
            session.refresh(row)
            return _views(repo, [row])[0]

    def _drop_unreferenced(self, digests: set[str]) -> None:
        """Collect those of `digests` that nothing references any more (the collector checks
        again, with the blob locked, before it deletes one)."""
        if not digests:
            return
        with self.db.reading() as session:
            keep = CheckpointRepository(session).digests_still_referenced(digests)
        self.leases.collect(digests - keep)

    # -- reading --------------------------------------------------------------------------------

    def get(self, ref: str) -> CheckpointView:
        with self.db.reading() as session:
            repo = CheckpointRepository(session)
            return _views(repo, [repo.require(ref)])[0]

    def list(
        self, *, name: str | None, alias: str | None, cursor: str | None, limit: int
    ) -> CheckpointPage:
        limit = max(1, min(limit, MAX_PAGE))
        with self.db.reading() as session:
            repo = CheckpointRepository(session)
            rows = repo.page(name=name, alias=alias, after=_decode_cursor(cursor), limit=limit + 1)
            items = _views(repo, list(rows[:limit]))
        more = len(rows) > limit
        next_cursor = _encode_cursor(items[-1].created_at, items[-1].id) if more else None
        return CheckpointPage(items=items, next_cursor=next_cursor)

    def tensors(self, ref: str) -> TensorList:
        with self.db.reading() as session:
            repo = CheckpointRepository(session)
            row = repo.require(ref)
            tensors = [TensorView.of(t) for t in repo.tensors(row.id)]
        return TensorList(checkpoint_id=row.id, tensors=tensors)

    def upload_blob(self, ref: str) -> StoredBlob:
        view = self.get(ref)
        filename = view.filename or f"{view.name}-v{view.version}.{_EXTENSIONS[view.format]}"
        return self._blob(view.sha256, filename)

    def file_blob(self, ref: str, path: str) -> StoredBlob:
        view = self.get(ref)
        match = next((f for f in view.files if f.path == path), None)
        if match is None:
            raise NotFound(f"checkpoint {view.ref} has no file {path!r}", code="file_not_found")
        return self._blob(match.sha256, Path(path).name)

    def _blob(self, sha256: str, filename: str) -> StoredBlob:
        size = self.store.size(sha256)
        return StoredBlob(self.store.served_path(sha256), size, sha256, filename)

    # -- aliases and deletion -------------------------------------------------------------------

    def set_alias(self, ref: str, alias: str) -> CheckpointView:
        _check_user_alias(alias)
        with self.db.transaction() as session:
            repo = CheckpointRepository(session)
            row = repo.require(ref)
            repo.set_alias(row.name, alias, row.id)
        return self.get(row.id)

    def remove_alias(self, ref: str, alias: str) -> CheckpointView:
        _check_user_alias(alias)
        with self.db.transaction() as session:
            repo = CheckpointRepository(session)
            row = repo.require(ref)
            if alias not in {a.alias for a in row.aliases}:
                raise NotFound(
                    f"{row.name}@{row.version} has no alias {alias!r}", code="alias_not_found"
                )
            repo.remove_alias(row.name, alias)
        return self.get(row.id)

    def delete(self, ref: str) -> None:
        with self.db.transaction() as session:
            repo = CheckpointRepository(session)
            row = repo.require(ref)
            digests = {row.sha256} | {f.sha256 for f in row.files}
            name, was_latest = row.name, LATEST in {a.alias for a in row.aliases}
            deleted = DeletedCheckpoint(row.id, in_use=row.id in checkpoints_in_use(session))
            session.delete(row)
            session.flush()
            if was_latest and (newest := repo.newest(name)) is not None:
                repo.set_alias(name, LATEST, newest.id)
            update_best_alias(repo, name)
        self._drop_unreferenced(digests)
        for listener in self.on_deleted:
            listener(deleted)

    # -- maintenance ----------------------------------------------------------------------------

    def recover_storage(self) -> dict[str, int]:
        """At startup: remove interrupted uploads' temp files, and blobs no row references and
        no live lease names (older than the grace period, where other processes share them)."""
        self.store.prepare()
        temp = self.store.clear_tmp()
        # Without a grace period this process owns the storage: its leases are a past life's.
        self.leases.prune(every=not self.store.orphan_grace_seconds)
        with self.db.reading() as session:
            referenced = CheckpointRepository(session).referenced_digests()
        orphans = self.leases.collect(self.store.orphan_candidates(referenced))
        if temp or orphans:
            log.info("startup cleanup: %d temp entries, %d orphan blobs", temp, len(orphans))
        return {"temp_entries": temp, "orphan_blobs": len(orphans)}


def _blob_sources(spooled: SpooledUpload, inspection: Inspection) -> dict[str, Path]:
    """sha256 -> the local file holding it, for every blob an upload stores (once each)."""
    sources = {spooled.sha256: spooled.path}
    for record in inspection.files:
        sources.setdefault(record.sha256, inspection.sources[record.path])
    return sources


_EXTENSIONS = {"hf_zip": "zip", "safetensors": "safetensors", "torch": "pt"}


def _views(repo: CheckpointRepository, rows: list[Checkpoint]) -> list[CheckpointView]:
    latest = repo.latest_verifications([row.id for row in rows])
    views = []
    for row in rows:
        view = CheckpointView.of(row)
        if row.id in latest:
            verification_id, status = latest[row.id]
            view.verification = {"id": verification_id, "status": status}
        views.append(view)
    return views


def update_best_alias(repo: CheckpointRepository, name: str) -> None:
    """`best` follows the lowest recorded val_loss (else loss) among the name's versions."""
    scored = [
        (loss, row.version, row.id)
        for row in repo.all_versions(name)
        if (loss := _loss(row)) is not None
    ]
    if scored:
        repo.set_alias(name, BEST, min(scored)[2])
    else:
        repo.remove_alias(name, BEST)


def _loss(row: Checkpoint) -> float | None:
    training = row.training or {}
    for key in ("val_loss", "loss"):
        value = training.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
            return float(value)
    return None


def _check_user_alias(alias: str) -> None:
    check_alias(alias)
    if alias in RESERVED_ALIASES:
        raise Conflict(f"the alias {alias!r} is managed by the registry", code="reserved_alias")


def _checkpoint_row(request: UploadRequest, inspection: Inspection, *, version: int) -> Checkpoint:
    stats = parameter_stats(inspection.tensors)
    stats["parameter_count"] -= added_parameter_count(inspection.architecture)
    return Checkpoint(
        name=request.name,
        version=version,
        status="ready",
        format=inspection.format,
        filename=request.filename,
        size_bytes=request.spooled.size,
        uploaded_by=request.uploaded_by,
        uncompressed_bytes=inspection.uncompressed_bytes,
        sha256=request.spooled.sha256,
        weights_digest=weights_digest(inspection.tensors),
        largest_tensors=_largest(inspection.tensors),
        architecture=inspection.architecture,
        config=inspection.config,
        training=inspection.training,
        tokenizer=inspection.tokenizer,
        user_metadata=request.metadata,
        files=[
            CheckpointFile(path=f.path, size=f.size, sha256=f.sha256, origin=f.origin)
            for f in inspection.files
        ],
        **stats,
    )


def _tensor_rows(checkpoint_id: str, tensors: list[TensorRecord]) -> list[TensorRow]:
    return [
        TensorRow(
            checkpoint_id=checkpoint_id,
            name=t.name,
            dtype=t.dtype,
            shape=list(t.shape),
            numel=t.numel,
            nbytes=t.nbytes,
            sha256=t.sha256,
            file=t.file,
        )
        for t in tensors
    ]


def _largest(tensors: list[TensorRecord]) -> list[dict[str, Any]]:
    ranked = sorted(tensors, key=lambda t: (-t.numel, t.name))[:LARGEST_TENSORS]
    return [{"name": t.name, "shape": list(t.shape), "numel": t.numel} for t in ranked]


def _encode_cursor(created_at: datetime, checkpoint_id: str) -> str:
    raw = f"{created_at.isoformat()}|{checkpoint_id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    if not cursor:
        return None
    try:
        stamp, _, checkpoint_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(stamp), checkpoint_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("invalid cursor", code="invalid_cursor") from exc


def _check_same_config(row: Checkpoint, config: dict[str, Any] | None) -> None:
    stored, given = row.config or {}, config or {}
    # Keys the stored config lacks (an inferred one has only the shape fields) say nothing new.
    differing = sorted(key for key in given.keys() & stored.keys() if stored[key] != given[key])
    if differing:
        shown = ", ".join(f"{key} {stored.get(key)!r} vs {given[key]!r}" for key in differing[:5])
        raise Conflict(
            f"{row.name}@{row.version} already holds these exact bytes with another config "
            f"({shown}); delete that version, or upload under another name, to store them "
            "with this config",
            code="config_differs",
        )
