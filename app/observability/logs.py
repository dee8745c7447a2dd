"""Process-wide logging: `CKPT_LOG_FORMAT=text|json`, `CKPT_LOG_LEVEL`.

JSON lines carry time, level, logger, message, request_id and, on the access line, method, path,
status and duration_ms. Nothing here ever sees request headers or bodies.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from datetime import UTC, datetime
from typing import Literal

from app.observability.request_id import current_request_id

ACCESS_LOGGER = "app.access"
ACCESS_FIELDS = ("method", "path", "status", "duration_ms")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# Libraries whose INFO lines are not events: alembic announces its plugins and dialect at every
# schema check (the migrations `ckpt migrate` applies are logged by app.db.migrate).
LIBRARY_LEVELS = {"alembic": logging.WARNING}
WARNINGS_LOGGER = "py.warnings"


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current request's id ("-" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "-")
        if request_id != "-":
            line["request_id"] = request_id
        for field in ACCESS_FIELDS:
            if hasattr(record, field):
                line[field] = getattr(record, field)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(log_format: Literal["text", "json"], level: str) -> None:
    """One stderr handler on the root logger; uvicorn's loggers propagate to it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    json_lines = log_format == "json"
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name, library_level in LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(library_level)
    # Read when huggingface_hub is first imported (later, lazily): without it every
    # from_pretrained draws a tqdm bar ("Loading weights") across the log.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.showwarning = log_warning  # library warnings become log lines, one each


def log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """One log line per warning: category, message and where it was raised (no source line)."""
    text = " ".join(str(message).split())
    logging.getLogger(WARNINGS_LOGGER).warning(
        "%s: %s (%s:%d)", category.__name__, text, filename, lineno
    )
