"""Verification requests: validated here, queued as jobs, reported back by the worker."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.engine import Database
from app.db.models import Checkpoint, Verification
from app.db.repositories import CheckpointRepository
from app.errors import InvalidInput, NotFound, UnprocessableRequest
from app.jobs.queue import enqueue
from app.services.verification_views import (
    VerificationList,
    VerificationRequest,
    VerificationView,
)
from app.verify.reference_outputs import parse_reference_outputs
from app.verify.runner import check_inputs_fit
from app.worker.device import check_device_setting

VERIFY_JOB = "verify"


def schedule_verification(
    session: Session,
    checkpoint_id: str,
    request: dict[str, Any],
    *,
    max_attempts: int,
    reference_outputs: dict[str, Any] | None = None,
) -> Verification:
    """Insert a queued verification and its job in the caller's transaction."""
    verification = Verification(
        checkpoint_id=checkpoint_id,
        status="queued",
        request=request,
        reference_outputs=reference_outputs,
    )
    session.add(verification)
    session.flush()
    enqueue(session, VERIFY_JOB, verification.id, max_attempts=max_attempts)
    return verification


def default_request() -> dict[str, Any]:
    return VerificationRequest().model_dump(mode="json", exclude_none=True)


class VerificationService:
    def __init__(self, db: Database, max_attempts: int) -> None:
        self.db = db
        self.max_attempts = max_attempts

    def request(self, ref: str, body: VerificationRequest) -> VerificationView:
        """Everything the worker would refuse is refused here, before anything is queued."""
        _check_device(body.device)
        outputs = None
        document_inputs = None
        if body.reference is not None and body.reference.outputs is not None:
            # reject a malformed document now
            document_inputs = parse_reference_outputs(body.reference.outputs).inputs
            outputs = body.reference.outputs
        inputs = document_inputs or [list(ids) for ids in body.token_ids or []]
        with self.db.transaction() as session:
            repo = CheckpointRepository(session)
            checkpoint = repo.require(ref)
            _check_inputs(inputs, checkpoint)
            stored = body.model_dump(mode="json", exclude_none=True)
            if body.reference is not None and body.reference.checkpoint is not None:
                reference = repo.require(body.reference.checkpoint)
                _check_inputs(inputs, reference)
                stored["reference"] = {"checkpoint": reference.id}
            elif outputs is not None:
                stored["reference"] = {"outputs": "uploaded reference outputs document"}
            row = schedule_verification(
                session,
                checkpoint.id,
                stored,
                max_attempts=self.max_attempts,
                reference_outputs=outputs,
            )
            return VerificationView.of(row, checkpoint)

    def get(self, verification_id: str) -> VerificationView:
        with self.db.reading() as session:
            row = session.get(Verification, verification_id)
            if row is None:
                raise NotFound(
                    f"no verification {verification_id!r}", code="verification_not_found"
                )
            checkpoint = session.get(Checkpoint, row.checkpoint_id)
            assert checkpoint is not None  # foreign key
            return VerificationView.of(row, checkpoint)

    def list_for(self, ref: str) -> VerificationList:
        with self.db.reading() as session:
            checkpoint = CheckpointRepository(session).require(ref)
            rows = session.scalars(
                select(Verification)
                .where(Verification.checkpoint_id == checkpoint.id)
                .order_by(Verification.created_at.desc(), Verification.id)
            ).all()
            return VerificationList(items=[VerificationView.of(r, checkpoint) for r in rows])


def _check_device(device: str) -> None:
    try:
        check_device_setting(device)
    except InvalidInput as exc:
        raise UnprocessableRequest(exc.message, code="invalid_device") from exc


def _check_inputs(inputs: list[list[int]], checkpoint: Checkpoint) -> None:
    """Token ids the checkpoint's model cannot take (out of its vocabulary, past its context)."""
    try:
        check_inputs_fit(inputs, checkpoint.architecture)
    except ValueError as exc:
        raise UnprocessableRequest(
            f"token_ids do not fit {checkpoint.name}@{checkpoint.version}: {exc}",
            code="invalid_token_ids",
        ) from exc
