"""What a deleted checkpoint leaves behind outside the database: its model loaded in the
generation cache and its materialised folder (`<data>/cache/checkpoints/<id>/`).

A folder in use is left in place when its checkpoint is deleted, so nothing is broken mid-load:
one a running job loads from (the job's checkpoint, or its verification's reference, as the
database says) or one pinned by any process sharing the data dir (app.runtime.folders). The
worker's periodic sweep removes it once neither holds. Any other folder goes at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.engine import Database
from app.db.models import Checkpoint, Job, Verification
from app.jobs.queue import RUNNING
from app.runtime.folders import remove_folder

log = logging.getLogger(__name__)


class DiscardingCache(Protocol):
    def discard(self, checkpoint_id: str) -> bool: ...


@dataclass(frozen=True)
class DeletedCheckpoint:
    id: str
    in_use: bool  # a running job loads its files (checked in the deleting transaction)


def checkpoints_in_use(session: Session) -> set[str]:
    """Ids of the checkpoints running jobs load: each one's subject and its reference."""
    rows = session.execute(
        select(Verification.checkpoint_id, Verification.request)
        .join(Job, Job.subject_id == Verification.id)
        .where(Job.state == RUNNING)
    )
    used = set()
    for checkpoint_id, request in rows:
        used.add(checkpoint_id)
        reference = (request.get("reference") or {}).get("checkpoint")
        if isinstance(reference, str):
            used.add(reference)
    return used


class DeletionEviction:
    """Called after a checkpoint's deletion commits: this process's copies of it go."""

    def __init__(self, cache: DiscardingCache, folders: Path) -> None:
        self.cache = cache
        self.folders = folders

    def __call__(self, deleted: DeletedCheckpoint) -> None:
        self.cache.discard(deleted.id)
        if not deleted.in_use:
            remove_folder(self.folders, deleted.id)


def sweep_deleted_folders(db: Database, root: Path) -> int:
    """Remove the folders of checkpoints that no longer exist and no running job uses."""
    names = [p.name for p in root.iterdir() if p.is_dir() and _is_checkpoint_id(p.name)]
    if not names:
        return 0
    with db.reading() as session:
        existing = set(session.scalars(select(Checkpoint.id).where(Checkpoint.id.in_(names))))
        keep = existing | checkpoints_in_use(session)
    removed = sum(remove_folder(root, name) for name in names if name not in keep)
    if removed:
        log.info("removed %d materialised folders of deleted checkpoints", removed)
    return removed


def _is_checkpoint_id(name: str) -> bool:  # anything else in the folder is not ours to sweep
    return len(name) == 32 and all(c in "0123456789abcdef" for c in name)
