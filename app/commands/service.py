"""`ckpt serve | migrate | worker | reference-outputs`: the commands that run the service itself
(the other commands talk to a running one through `app.client`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from app.config import Settings


def add_service_commands(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default=None, help="bind address (default CKPT_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default CKPT_PORT or 8000)")
    serve.set_defaults(handler=_serve)

    migrate = commands.add_parser("migrate", help="bring the database to the latest schema")
    migrate.set_defaults(handler=_migrate)

    worker = commands.add_parser("worker", help="run a verification worker (owns the device)")
    worker.set_defaults(handler=_worker)

    reference = commands.add_parser(
        "reference-outputs",
        help="record a model folder's outputs, to prove them later with a verification",
    )
    reference.add_argument("model_dir", type=Path, help="a save_pretrained() folder")
    reference.add_argument("--prompts", nargs="+", default=None, help="prompt texts")
    reference.add_argument("--max-new-tokens", type=int, default=32)
    reference.add_argument("--device", default="cpu")
    reference.add_argument("-o", "--output", type=Path, default=None, help="file (default stdout)")
    reference.set_defaults(handler=_reference_outputs)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.auth.service import startup_problem
    from app.db.engine import Database
    from app.db.migrate import schema_problem

    settings = Settings()
    host = args.host or settings.host
    os.environ["CKPT_HOST"] = host  # the app decides whether it is reachable from outside
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)
    problem = schema_problem(db.engine, db.url) or startup_problem(settings, db, host)
    db.dispose()
    if problem:
        print(f"ckpt serve: {problem}", file=sys.stderr)
        return 1
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=args.port or settings.port,
        timeout_graceful_shutdown=10,
        limit_concurrency=settings.limit_concurrency,  # beyond it uvicorn answers 503
        log_config=None,  # the root logger set up in main() formats uvicorn's lines too
        access_log=False,  # one access line per request comes from app.observability
    )
    return 0


def _worker(_args: argparse.Namespace) -> int:
    from app.lifeline import exit_with_parent
    from app.worker.main import run_worker

    exit_with_parent()  # started by `ckpt serve`: ends when that server does

    return run_worker(Settings())


def _reference_outputs(args: argparse.Namespace) -> int:
    from app.verify.reference_outputs import record_reference_outputs

    document = record_reference_outputs(
        args.model_dir,
        prompts=args.prompts,
        token_ids=None,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
    )
    text = json.dumps(document)
    if args.output is None:
        print(text)
    else:
        args.output.write_text(text)
        print(f"reference outputs for {len(document['prompts'])} prompts -> {args.output}")
    return 0


def _migrate(_args: argparse.Namespace) -> int:
    from app.db.migrate import upgrade

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    print(f"database at the latest schema: {settings.resolved_database_url}")
    return 0
