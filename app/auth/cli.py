"""`ckpt keys create|list|revoke`: manage API keys in the database CKPT_ settings point at."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from app.auth.scopes import SCOPES
from app.config import Settings


def add_key_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `keys` on the `ckpt` subparsers (the object add_subparsers() returned)."""
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    actions = keys.add_subparsers(dest="keys_command", required=True)

    create = actions.add_parser("create", help="create a key; prints the secret once")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--scope", required=True, choices=SCOPES)
    create.add_argument("--quota-bytes", type=int, default=None, help="storage quota")
    create.set_defaults(handler=_create)

    listing = actions.add_parser("list", help="every key: id, name, scope, use, revocation")
    listing.set_defaults(handler=_list)

    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id", metavar="ID")
    revoke.set_defaults(handler=_revoke)

    for action in (create, listing, revoke):
        action.add_argument("--json", action="store_true", help="machine-readable output")


@contextmanager
def _key_store() -> Iterator[Any]:
    from app.auth.service import Authenticator
    from app.db.engine import Database
    from app.db.migrate import schema_problem

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)
    try:
        problem = schema_problem(db.engine, db.url)
        if problem:
            raise SystemExit(f"ckpt keys: {problem}")
        yield Authenticator(db, settings).keys
    finally:
        db.dispose()


def _create(args: argparse.Namespace) -> int:
    from app.errors import AppError

    with _key_store() as keys:
        try:
            created = keys.create(args.name, args.scope, args.quota_bytes)
        except AppError as exc:
            print(f"ckpt keys create: {exc.message}", file=sys.stderr)
            return 2
    if args.json:
        print(created.model_dump_json())
        return 0
    print(created.key)
    print(
        f"created key {created.id} ({created.name!r}, scope {created.scope}); "
        "this is the only time the key is shown: store it now",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    with _key_store() as keys:
        views = keys.list()
    if args.json:
        print(json.dumps([view.model_dump(mode="json") for view in views]))
        return 0
    rows = [("ID", "NAME", "SCOPE", "CREATED", "LAST USED", "REVOKED")]
    rows += [
        (v.id, v.name, v.scope, _when(v.created_at), _when(v.last_used_at), _when(v.revoked_at))
        for v in views
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from app.errors import NotFound

    with _key_store() as keys:
        try:
            view = keys.revoke(args.key_id)
        except NotFound as exc:
            print(f"ckpt keys revoke: {exc.message}", file=sys.stderr)
            return 1
    if args.json:
        print(view.model_dump_json())
    else:
        print(f"revoked key {view.id} ({view.name!r})")
    return 0


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "-"
