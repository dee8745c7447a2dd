"""create_app(settings): the lifespan builds the database, blob store and services."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from app import __version__
from app.api import checkpoints, health, openai_compat, tgi, verifications
from app.api.errors import install_error_handlers
from app.auth import api as keys_api
from app.auth.deps import require_scope, scope_by_method
from app.auth.service import Authenticator
from app.config import Settings
from app.db.engine import Database
from app.db.migrate import schema_problem
from app.generation import GenerationEngine, ModelCache
from app.generation.cache import stored_checkpoint_loader
from app.ingest.torch_pickle import configure_loader_slots
from app.observability.install import install_observability
from app.services.checkpoints import CheckpointService
from app.services.diffs import DiffService
from app.services.eviction import DeletionEviction
from app.services.generation import GenerationCatalog
from app.services.text_generation import GenerationLimits, TextGeneration
from app.services.verifications import VerificationService
from app.storage.base import BlobStorage
from app.storage.factory import open_blob_store
from app.ui import pages as ui_pages
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
        store = open_blob_store(settings)
        service = CheckpointService(
            db, store, settings.ingest_limits, job_max_attempts=settings.job_max_attempts
        )
        service.recover_storage()
        app.state.settings, app.state.db, app.state.store = settings, db, store
        app.state.checkpoints = service
        app.state.auth = Authenticator(db, settings)
        app.state.verifications = VerificationService(db, settings.job_max_attempts)
        app.state.diffs = DiffService(db, store)
        app.state.generation = _text_generation(settings, db, store)
        app.state.metrics.watch_generation(app.state.generation.engine)
        service.on_deleted.append(
            DeletionEviction(app.state.generation.engine.cache, _checkpoint_folders(settings))
        )
        app.state.ingest_executor = _ingest_executor(settings)
        worker = EmbeddedWorker(settings) if settings.embedded_worker else None
        try:
            yield
        finally:
            if worker is not None:
                worker.stop()
            app.state.ingest_executor.shutdown(wait=True, cancel_futures=True)
            app.state.generation.engine.close()
            db.dispose()

    app = FastAPI(
        title="Checkpoint Registry",
        version=__version__,
        description="Store, inspect, verify and serve model checkpoints.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_observability(app)  # the outermost middleware: add other middleware above
    app.include_router(health.router)
    # Access: GET needs a `read` key, changes need `write` (deleting a checkpoint: `admin`).
    app.include_router(checkpoints.router, dependencies=[scope_by_method()])
    app.include_router(verifications.router, dependencies=[scope_by_method()])
    app.include_router(openai_compat.router, dependencies=[require_scope("read")])
    app.include_router(tgi.router, dependencies=[require_scope("read")])
    app.include_router(ui_pages.router, dependencies=[require_scope("read")])
    app.include_router(keys_api.router)
    return app


def _text_generation(settings: Settings, db: Database, store: BlobStorage) -> TextGeneration:
    """The generation engine: models loaded lazily into an LRU cache, one scheduler thread."""
    from app.worker.device import resolve_device

    device = resolve_device(settings.device)
    verifications = VerificationService(db, settings.job_max_attempts)
    catalog = GenerationCatalog(db, settings.default_model, settings.serving_dtype, verifications)
    cache_dir = _checkpoint_folders(settings)
    cache_dir.mkdir(parents=True, exist_ok=True)
    loader = stored_checkpoint_loader(
        catalog.loading,
        store,
        cache_dir,
        device,
        max_folders=settings.model_folder_cache_entries,
        serving_dtype=settings.serving_dtype,
    )
    limits = GenerationLimits(
        max_queue=settings.max_queue,
        max_batch=settings.max_batch,
        max_stop_sequences=settings.max_stop_sequences,
        max_top_n_tokens=settings.max_top_n_tokens,
        max_new_tokens=settings.max_new_tokens,
        max_input_chars=settings.max_input_chars,
    )
    engine = GenerationEngine(
        ModelCache(loader, settings.model_cache_bytes),
        device,
        max_queue=limits.max_queue,
        max_batch=limits.max_batch,
        max_stop_sequences=limits.max_stop_sequences,
        max_top_n_tokens=limits.max_top_n_tokens,
        exactness=settings.exact_batching,
    )
    return TextGeneration(catalog, engine, limits)


def _ingest_executor(settings: Settings) -> ThreadPoolExecutor:
    """Uploads are inspected here, never on the default thread pool that sync routes and key
    checks share; the process-wide cap on sandboxed torch loaders comes with it."""
    configure_loader_slots(settings.max_torch_loaders, settings.torch_loader_wait_seconds)
    return ThreadPoolExecutor(settings.ingest_threads, thread_name_prefix="ingest")


def _checkpoint_folders(settings: Settings) -> Path:
    """Where stored checkpoints are materialised as folders (shared with the worker)."""
    return settings.data_dir / "cache" / "checkpoints"
