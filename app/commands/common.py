"""What every client subcommand shares: connection options, --json, errors → exit codes."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from rich.console import Console, RenderableType
from rich.markup import escape

from app.client import Client, RegistryError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SERVER = 3
EXIT_INCONCLUSIVE = 4  # a verification neither passed nor failed (see `ckpt verify`)


class UsageError(Exception):
    """The command line names something unusable (exit 2, like argparse's own errors)."""


JsonOutput = BaseModel | dict[str, Any] | list[Any]
Command = Callable[[argparse.Namespace, Client], int]
Handler = Callable[[argparse.Namespace], int]

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False)


def client_options() -> argparse.ArgumentParser:
    """A parent parser: every client subcommand takes these."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--url", default=None, help="registry URL (default CKPT_URL)")
    options.add_argument("--api-key", default=None, help="API key (default CKPT_API_KEY)")
    options.add_argument("--json", action="store_true", help="print JSON for scripts")
    return options


def handler(command: Command) -> Handler:
    """Runs `command` with a client; server errors print their code and message, exit 3."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request on stderr
        try:
            with Client(args.url, api_key=args.api_key) as client:
                return command(args, client)
        except RegistryError as exc:
            where = f" (HTTP {exc.status})" if exc.status is not None else ""
            stderr.print(f"[red]error[/red] {exc.code}{where}: {escape(exc.message)}")
            return EXIT_SERVER
        except TimeoutError as exc:  # a job no worker finished in time: the server's side
            stderr.print(f"[red]error[/red] timeout: {escape(str(exc))}")
            return EXIT_SERVER
        except (UsageError, FileNotFoundError, IsADirectoryError) as exc:
            stderr.print(f"[red]error[/red] {escape(str(exc))}")
            return EXIT_USAGE
        except KeyboardInterrupt:
            return 130

    return run


def print_json(value: JsonOutput) -> None:
    if isinstance(value, BaseModel):
        text = value.model_dump_json(indent=2)
    else:
        text = json.dumps(value, indent=2, default=str)
    sys.stdout.write(text + "\n")


def emit(args: argparse.Namespace, data: JsonOutput, human: RenderableType) -> int:
    """`data` as JSON with --json, else `human` (a rich renderable or markup text)."""
    if args.json:
        print_json(data)
    else:
        stdout.print(human)
    return EXIT_OK


def dumped(items: list[BaseModel]) -> list[Any]:
    return [item.model_dump(mode="json") for item in items]
