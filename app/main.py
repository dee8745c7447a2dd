"""create_app(settings): the lifespan builds the database, blob store and services."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.api import checkpoints, health, verifications
from app.api.errors import install_error_handlers
from app.config import Settings
from app.db.engine import Database
from app.db.migrate import schema_problem
from app.services.checkpoints import CheckpointService
from app.services.diffs import DiffService
from app.services.verifications import VerificationService
from app.storage.blobs import BlobStore
from app.worker.embedded import EmbeddedWorker

log = logging.getLogger(__name__)


class SchemaOutOfDate(RuntimeError):
    pass


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url)
        problem = schema_problem(db.engine, db.url)
        if problem:
            db.dispose()
            raise SchemaOutOfDate(problem)
        store = BlobStore(settings.data_dir)
        service = CheckpointService(
            db, store, settings.ingest_limits, job_max_attempts=settings.job_max_attempts
        )
        service.recover_storage()
        app.state.settings, app.state.db, app.state.store = settings, db, store
        app.state.checkpoints = service
        app.state.verifications = VerificationService(db, settings.job_max_attempts)
        app.state.diffs = DiffService(db, store)
        worker = EmbeddedWorker(settings) if settings.embedded_worker else None
        try:
            yield
        finally:
            if worker is not None:
                worker.stop()
            db.dispose()

    app = FastAPI(
        title="Checkpoint Registry",
        version=__version__,
        description="Store, inspect, verify and serve model checkpoints.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(checkpoints.router)
    app.include_router(verifications.router)
    return app
