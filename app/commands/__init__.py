"""The `ckpt` subcommands that talk to a running registry through `app.client`."""

from __future__ import annotations

from typing import Any

from app.commands.checkpoints import add_checkpoint_commands
from app.commands.common import client_options
from app.commands.generating import add_generation_commands
from app.commands.verifying import add_verification_commands


def add_client_commands(commands: Any) -> None:
    """Register upload, list, show, tensors, diff, alias, download, delete, verify, report and
    generate on `commands` (the `ckpt` parser's subparsers)."""
    options = client_options()
    add_checkpoint_commands(commands, options)
    add_verification_commands(commands, options)
    add_generation_commands(commands, options)
