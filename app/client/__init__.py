"""Python client of the Checkpoint Registry (sync `Client`, async `AsyncClient`)."""

from app.client.aio import AsyncClient
from app.client.calls import VerificationOptions
from app.client.errors import ChecksumMismatch, RegistryError
from app.client.models import (
    Checkpoint,
    CheckpointDiff,
    CheckpointPage,
    Completion,
    Generation,
    Health,
    ModelCard,
    StreamedToken,
    Tensor,
    TensorList,
    Verification,
)
from app.client.sources import ProgressCallback
from app.client.sync import Client
from app.client.transfer import Downloaded, GenerationParameters

__all__ = [
    "AsyncClient",
    "Checkpoint",
    "CheckpointDiff",
    "CheckpointPage",
    "ChecksumMismatch",
    "Client",
    "Completion",
    "Downloaded",
    "Generation",
    "GenerationParameters",
    "Health",
    "ModelCard",
    "ProgressCallback",
    "RegistryError",
    "StreamedToken",
    "Tensor",
    "TensorList",
    "Verification",
    "VerificationOptions",
]
