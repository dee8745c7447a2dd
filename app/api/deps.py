"""Depends aliases: the services created in the lifespan, reached through app.state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.services.checkpoints import CheckpointService
from app.services.diffs import DiffService
from app.services.text_generation import TextGeneration
from app.services.verifications import VerificationService
from app.storage.base import BlobStorage


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _checkpoints(request: Request) -> CheckpointService:
    service: CheckpointService = request.app.state.checkpoints
    return service


def _diffs(request: Request) -> DiffService:
    service: DiffService = request.app.state.diffs
    return service


def _verifications(request: Request) -> VerificationService:
    service: VerificationService = request.app.state.verifications
    return service


def _generation(request: Request) -> TextGeneration:
    service: TextGeneration = request.app.state.generation
    return service


def _store(request: Request) -> BlobStorage:
    store: BlobStorage = request.app.state.store
    return store


SettingsDep = Annotated[Settings, Depends(_settings)]
CheckpointsDep = Annotated[CheckpointService, Depends(_checkpoints)]
DiffsDep = Annotated[DiffService, Depends(_diffs)]
VerificationsDep = Annotated[VerificationService, Depends(_verifications)]
GenerationDep = Annotated[TextGeneration, Depends(_generation)]
StoreDep = Annotated[BlobStorage, Depends(_store)]
