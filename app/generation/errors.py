"""Errors of the generation engine, each carrying its HTTP status and a stable code.

The codes line up with TGI's `error_type` values ("validation", "overloaded", "generation") so the
HTTP layer can report them in TGI's `{"error", "error_type"}` shape as well as the registry's own.
"""

from __future__ import annotations

from app.errors import AppError


class ValidationFailed(AppError):
    """The generation parameters (or the prompt's length) are not acceptable for this model."""

    status = 422
    code = "validation"


class Overloaded(AppError):
    """The waiting queue is full; the client should retry later."""

    status = 429
    code = "overloaded"


class GenerationFailed(AppError):
    """The model failed while generating (a forward pass raised, the engine stopped...)."""

    status = 424
    code = "generation"


class ModelUnavailable(AppError):
    """The checkpoint cannot be served: unsupported architecture, no tokenizer, no model config."""

    status = 422
    code = "model_unavailable"
