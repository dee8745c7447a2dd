"""`ckpt upload | list | show | tensors | diff | alias | download | delete`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Group

from app.client import Checkpoint, Client
from app.commands.common import UsageError, dumped, emit, handler, stdout
from app.commands.progress import transfer_bar
from app.commands.render import checkpoint_table, checkpoints_table, diff_table, tensors_table
from app.display import binary_size


def add_checkpoint_commands(commands: Any, options: argparse.ArgumentParser) -> None:
    upload = commands.add_parser(
        "upload", parents=[options], help="upload a file or a model folder (zipped on the fly)"
    )
    upload.add_argument("path", type=Path, help="a .zip, .safetensors, .pt file or a folder")
    upload.add_argument("--name", default=None, help="checkpoint name (default: from the file)")
    upload.add_argument(
        "--deflate",
        action="store_true",
        help="deflate a folder's zip (default STORED: float weights barely compress)",
    )
    upload.add_argument("--metadata", default=None, help="JSON object of your own key/values")
    upload.add_argument(
        "--config",
        type=Path,
        default=None,
        help="the model's config.json, for weights that carry none (else GPT-2's is inferred)",
    )
    upload.set_defaults(handler=handler(_upload))

    listing = commands.add_parser("list", parents=[options], help="checkpoints, newest first")
    listing.add_argument("--name", default=None)
    listing.add_argument("--alias", default=None)
    listing.add_argument("--limit", type=int, default=50, help="at most this many")
    listing.set_defaults(handler=handler(_list))

    show = commands.add_parser("show", parents=[options], help="a checkpoint's metadata")
    show.add_argument("ref", help="id, name, name:alias or name@version")
    show.set_defaults(handler=handler(_show))

    tensors = commands.add_parser("tensors", parents=[options], help="every tensor + sha256")
    tensors.add_argument("ref")
    tensors.set_defaults(handler=handler(_tensors))

    diff = commands.add_parser("diff", parents=[options], help="compare two checkpoints")
    diff.add_argument("ref_a")
    diff.add_argument("ref_b")
    diff.set_defaults(handler=handler(_diff))

    alias = commands.add_parser("alias", parents=[options], help="point an alias at a checkpoint")
    alias.add_argument("ref")
    alias.add_argument("alias")
    alias.add_argument("--delete", action="store_true", help="remove the alias instead")
    alias.set_defaults(handler=handler(_alias))

    download = commands.add_parser(
        "download", parents=[options], help="download the upload; its sha256 is verified"
    )
    download.add_argument("ref")
    download.add_argument("-o", "--output", type=Path, default=Path("."), help="file or folder")
    download.add_argument("--file", default=None, help="one stored file instead (config.json)")
    download.set_defaults(handler=handler(_download))

    delete = commands.add_parser("delete", parents=[options], help="delete a checkpoint")
    delete.add_argument("ref")
    delete.set_defaults(handler=handler(_delete))


def _upload(args: argparse.Namespace, client: Client) -> int:
    metadata = _json_object(args.metadata, "--metadata") if args.metadata else None
    config = _config_file(args.config) if args.config is not None else None
    with transfer_bar(f"upload {args.path.name}", enabled=not args.json) as progress:
        checkpoint = client.upload(
            args.path,
            name=args.name,
            metadata=metadata,
            config=config,
            deflate=args.deflate,
            progress=progress,
        )
    verb = "stored" if checkpoint.created else "already stored"
    return emit(
        args,
        checkpoint,
        Group(f"{verb} as [bold]{checkpoint.ref}[/bold]", checkpoint_table(checkpoint)),
    )


def _config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path}: {exc}") from exc
    return _json_object(text, f"--config {path}")


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{option} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise UsageError(f"{option} must be a JSON object")
    return value


def _list(args: argparse.Namespace, client: Client) -> int:
    items: list[Checkpoint] = []
    pages = client.iter_checkpoints(
        name=args.name, alias=args.alias, page_size=max(1, min(args.limit, 200))
    )
    for checkpoint in pages:
        if len(items) == args.limit:
            break
        items.append(checkpoint)
    return emit(args, dumped(list(items)), checkpoints_table(items, stdout.width))


def _show(args: argparse.Namespace, client: Client) -> int:
    checkpoint = client.get(args.ref)
    return emit(args, checkpoint, checkpoint_table(checkpoint))


def _tensors(args: argparse.Namespace, client: Client) -> int:
    listing = client.tensors(args.ref)
    return emit(args, listing, tensors_table(listing, stdout.width))


def _diff(args: argparse.Namespace, client: Client) -> int:
    diff = client.diff(args.ref_a, args.ref_b)
    if diff.identical_weights:
        return emit(args, diff, f"identical weights: {len(diff.tensors)} tensors equal by hash")
    return emit(args, diff, diff_table(diff))


def _alias(args: argparse.Namespace, client: Client) -> int:
    if args.delete:
        checkpoint = client.delete_alias(args.ref, args.alias)
    else:
        checkpoint = client.set_alias(args.ref, args.alias)
    where = "removed from" if args.delete else "→"
    return emit(args, checkpoint, f"{checkpoint.name}:{args.alias} {where} {checkpoint.ref}")


def _download(args: argparse.Namespace, client: Client) -> int:
    with transfer_bar(f"download {args.ref}", enabled=not args.json) as progress:
        done = client.download(args.ref, args.output, path=args.file, progress=progress)
    summary = {"path": str(done.path), "size": done.size, "sha256": done.sha256}
    size = binary_size(done.size)
    return emit(args, summary, f"{done.path} ({size}), sha256 {done.sha256} verified")


def _delete(args: argparse.Namespace, client: Client) -> int:
    client.delete(args.ref)
    return emit(args, {"deleted": args.ref}, f"deleted {args.ref}")
