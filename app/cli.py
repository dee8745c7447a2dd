"""`ckpt`: the command line entry point; each package registers its own subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app.auth.cli import add_key_commands
from app.commands import add_client_commands
from app.commands.service import add_service_commands
from app.config import Settings
from app.demo.cli import add_demo_command
from app.observability.logs import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    code: int = args.handler(args)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckpt", description="Checkpoint Registry")
    commands = parser.add_subparsers(dest="command", required=True)
    add_service_commands(commands)
    add_demo_command(commands)
    add_key_commands(commands)
    add_client_commands(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
