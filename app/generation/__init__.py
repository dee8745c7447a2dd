"""Text generation from stored checkpoints: model cache, continuous-batching engine, params."""

from app.generation.cache import LoadedModel, Loader, ModelCache, load_model_folder
from app.generation.engine import EngineStats, GenerationEngine, GenerationStream
from app.generation.errors import GenerationFailed, ModelUnavailable, Overloaded, ValidationFailed
from app.generation.events import (
    FinishEvent,
    FinishReason,
    GenerationEvent,
    GenerationResult,
    PrefillToken,
    Timings,
    TokenEvent,
    TopToken,
)
from app.generation.params import GenerationParams

__all__ = [
    "EngineStats",
    "FinishEvent",
    "FinishReason",
    "GenerationEngine",
    "GenerationEvent",
    "GenerationFailed",
    "GenerationParams",
    "GenerationResult",
    "GenerationStream",
    "LoadedModel",
    "Loader",
    "ModelCache",
    "ModelUnavailable",
    "Overloaded",
    "PrefillToken",
    "Timings",
    "TokenEvent",
    "TopToken",
    "ValidationFailed",
    "load_model_folder",
]
