"""Text generation from stored checkpoints: model cache, continuous-batching engine, params.

For the HTTP layer (TGI `/generate`, `/generate_stream`, OpenAI completions):

* build one `ModelCache(stored_checkpoint_loader(describe, store, cache_dir, device), budget)`
  and one `GenerationEngine(cache, device, max_queue, max_batch)` for the process; `close()`
  both at shutdown;
* tokenize with `(await engine.model(id)).tokenizer` and call `engine.validate(...)` for TGI's
  422 messages (the engine itself lets max_new_tokens run into the context and stops there
  with "length");
* TGI samples whenever a warper is set: pass `params.with_tgi_sampling()` on TGI routes;
* `await engine.stream(...)` raises before any byte is sent (AppError subclasses carry
  status/code); iterate inside `async with stream:` so a disconnect cancels the request;
* `return_full_text`, `truncate`, `best_of`, `details` formatting and SSE framing are the
  endpoint's; `FinishEvent.timings` maps onto TGI's x-*-time headers.
"""

from app.generation.cache import (
    LoadedModel,
    Loader,
    ModelCache,
    load_model_folder,
    stored_checkpoint_loader,
)
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
from app.generation.scheduler import Exactness

__all__ = [
    "EngineStats",
    "Exactness",
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
    "stored_checkpoint_loader",
]
