"""The `verify` job: load the checkpoint (and reference), run the checks, store the report."""

from __future__ import annotations

import contextlib
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session

from app import __version__
from app.db.engine import Database
from app.db.models import Checkpoint, Verification, utcnow
from app.db.repositories import CheckpointRepository
from app.ingest.types import IngestLimits
from app.jobs.queue import ClaimedJob, JobQueue
from app.records import CheckpointRecord
from app.runtime.casting import CastCheckpoint
from app.runtime.folders import DEFAULT_MAX_ENTRIES
from app.runtime.loading import CheckpointFileMissing, StoredCheckpoint, materialize
from app.services.checkpoints import VERIFIED
from app.storage.base import BlobStorage
from app.verify.base import CHECK_NAMES, TOLERANCE_FIELDS, CheckContext, CheckResult, VerifyOptions
from app.verify.reference_outputs import parse_reference_outputs
from app.verify.runner import check_inputs_fit, choose_inputs, overall_verdict, run_checks
from app.verify.verdicts import report_verdict
from app.worker.device import describe_device, resolve_device


@dataclass
class VerifyJobRunner:
    db: Database
    store: BlobStorage
    queue: JobQueue
    device: torch.device
    cache_dir: Path
    limits: IngestLimits = field(default_factory=IngestLimits)
    max_folders: int = DEFAULT_MAX_ENTRIES

    def run(self, job: ClaimedJob) -> None:
        started = utcnow()
        plan = self._load_plan(job.subject_id)
        if plan is None:
            with self.db.transaction() as session:
                self.queue.finish(session, job, error="the verification no longer exists")
            return
        self._mark_running(job.subject_id)
        with contextlib.ExitStack() as held_for_the_job:
            report = self._report(plan, started, held_for_the_job)
        with self.db.transaction() as session:
            self.queue.finish(session, job)
            _save_report(session, job.subject_id, report)

    def fail(self, session: Session, verification_id: str, error: str) -> None:
        """Record an error report for a job that could not run (or ran out of attempts)."""
        report = {**_environment(self.device), "status": "error", "error": error, "checks": []}
        _save_report(session, verification_id, report)

    def _load_plan(self, verification_id: str) -> _Plan | None:
        with self.db.reading() as session:
            verification = session.get(Verification, verification_id)
            if verification is None:
                return None
            repo = CheckpointRepository(session)
            subject = _snapshot(repo, verification.checkpoint_id)
            spec = verification.request.get("reference") or {}
            reference = _snapshot(repo, spec["checkpoint"]) if spec.get("checkpoint") else None
            return _Plan(
                verification.request,
                subject,
                reference,
                verification.reference_outputs,
                spec.get("dtype"),
            )

    def _mark_running(self, verification_id: str) -> None:
        with self.db.transaction() as session:
            verification = session.get(Verification, verification_id)
            if verification is not None:
                verification.status = "running"

    def _report(self, plan: _Plan, started: Any, held: contextlib.ExitStack) -> dict[str, Any]:
        clock = time.perf_counter()
        device = self._device_for(plan.request.get("device", "auto"))
        try:
            subject = self._loaded(plan.subject, device, held)
        except CheckpointFileMissing as missing:
            return _incomplete_report(plan, device, missing.message, started, clock)
        reference = self._reference(plan, subject, device, held)
        options = _options(plan.request)
        if plan.outputs is not None:
            # The document fixes the inputs and continuation length its outputs were made with.
            document = parse_reference_outputs(plan.outputs)
            inputs, texts = [list(ids) for ids in document.inputs], None
            options = replace(options, max_new_tokens=document.max_new_tokens)
        else:
            inputs, texts = choose_inputs(
                subject, prompts=options.prompts, token_ids=options.token_ids
            )
        check_inputs_fit(inputs, subject.view.architecture)
        ctx = CheckContext(
            subject=subject,
            options=options,
            device=device,
            inputs=inputs,
            reference=reference,
            reference_outputs=plan.outputs,
            blob_path=self.store.local_path,
            limits=self.limits,
        )
        results = run_checks(ctx)
        requested = plan.request.get("checks")
        verdict = overall_verdict(results, ctx, requested=tuple(requested) if requested else None)
        return {
            **_environment(device),
            "status": verdict.status,
            "summary": verdict.summary,
            "started_at": started.isoformat(),
            "inputs": {"token_ids": inputs, "prompts": texts},
            "timings": {r.name: round(r.seconds, 6) for r in results}
            | {"total": round(time.perf_counter() - clock, 6)},
            "checks": [r.as_dict() for r in results],
            "error": None,
        }

    def _reference(
        self,
        plan: _Plan,
        subject: StoredCheckpoint,
        device: torch.device,
        held: contextlib.ExitStack,
    ) -> StoredCheckpoint | None:
        if plan.reference_dtype is not None:
            return CastCheckpoint(plan.subject, subject.folder, device, plan.reference_dtype)
        return self._loaded(plan.reference, device, held) if plan.reference else None

    def _device_for(self, requested: str) -> torch.device:
        return self.device if requested == "auto" else resolve_device(requested)

    def _loaded(
        self, snapshot: CheckpointRecord, device: torch.device, held: contextlib.ExitStack
    ) -> StoredCheckpoint:
        """The checkpoint's folder, its files pinned (kept from eviction) until `held` closes."""
        folder = held.enter_context(
            materialize(snapshot, self.store, self.cache_dir, max_folders=self.max_folders)
        )
        return StoredCheckpoint(snapshot, folder.path, device)


@dataclass(frozen=True)
class _Plan:
    request: dict[str, Any]
    subject: CheckpointRecord
    reference: CheckpointRecord | None
    outputs: dict[str, Any] | None
    reference_dtype: str | None = None  # the subject's own weights, cast to this dtype


def _incomplete_report(
    plan: _Plan, device: torch.device, missing: str, started: Any, clock: float
) -> dict[str, Any]:
    """A stored file that cannot be read is integrity's finding, not a job error: the report
    fails it, naming the file, and says that nothing else could run."""
    requested = plan.request.get("checks")
    names = tuple(requested) if requested else CHECK_NAMES
    results = [
        CheckResult("integrity", "failed", detail=missing)
        if name == "integrity"
        else CheckResult(name, "not_applicable", detail=f"not run: {missing}")
        for name in dict.fromkeys(("integrity", *names))
    ]
    has_reference = (
        plan.reference is not None or plan.outputs is not None or (plan.reference_dtype is not None)
    )
    verdict = report_verdict(
        results,
        plan.subject,
        requested=tuple(requested) if requested else None,
        has_reference=has_reference,
    )
    return {
        **_environment(device),
        "status": verdict.status,
        "summary": verdict.summary,
        "started_at": started.isoformat(),
        "inputs": {"token_ids": [], "prompts": None},
        "timings": {"total": round(time.perf_counter() - clock, 6)},
        "checks": [r.as_dict() for r in results],
        "error": None,
    }


def _snapshot(repo: CheckpointRepository, checkpoint_id: str) -> CheckpointRecord:
    row = repo.require(checkpoint_id)
    return CheckpointRecord.of(row, repo.tensors(row.id))


def _options(request: dict[str, Any]) -> VerifyOptions:
    tolerance = request.get("tolerance")
    prompts = request.get("prompts")
    token_ids = request.get("token_ids")
    return VerifyOptions(
        checks=tuple(request.get("checks") or CHECK_NAMES),
        prompts=tuple(prompts) if prompts else None,
        token_ids=tuple(tuple(ids) for ids in token_ids) if token_ids else None,
        tolerance=_tolerance(tolerance) if tolerance else None,
        repeats=int(request.get("repeats", 3)),
        max_new_tokens=int(request.get("max_new_tokens", 32)),
    )


def _tolerance(spec: dict[str, Any]) -> dict[str, float]:
    """The thresholds the request names; the checks fill the others with their defaults."""
    return {name: float(spec[name]) for name in TOLERANCE_FIELDS if spec.get(name) is not None}


def _environment(device: torch.device) -> dict[str, Any]:
    import safetensors
    import transformers

    return {
        "device": describe_device(device),
        "library_versions": {
            "checkpoint_registry": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
        },
    }


def _save_report(session: Session, verification_id: str, report: dict[str, Any]) -> None:
    verification = session.get(Verification, verification_id)
    if verification is None:
        return
    verification.status = report["status"]
    verification.report = report
    verification.finished_at = utcnow()
    checkpoint = session.get(Checkpoint, verification.checkpoint_id)
    if checkpoint is not None:
        complete = bool((report.get("summary") or {}).get("complete"))
        _promote(CheckpointRepository(session), checkpoint, report["status"], complete=complete)


def _promote(
    repo: CheckpointRepository, checkpoint: Checkpoint, status: str, *, complete: bool
) -> None:
    """`verified` marks the name's version whose latest full report passed.

    Only a `passed` report that ran every check applying to the checkpoint sets it; a passed
    subset (`checks: ["integrity"]`) leaves it where it is. Any other outcome (failed, error,
    inconclusive) takes it off this version and never touches it on another version.
    """
    if status == "passed":
        if complete:
            repo.set_alias(checkpoint.name, VERIFIED, checkpoint.id)
    elif VERIFIED in {a.alias for a in checkpoint.aliases}:
        repo.remove_alias(checkpoint.name, VERIFIED)
