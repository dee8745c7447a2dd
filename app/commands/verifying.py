"""`ckpt verify` and `ckpt report`: exit 1 when a report failed, 4 when it was inconclusive."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from app.client import Client, Verification, VerificationOptions
from app.commands.common import (
    EXIT_FAILED,
    EXIT_INCONCLUSIVE,
    EXIT_OK,
    UsageError,
    handler,
    print_json,
    stdout,
)
from app.commands.progress import job_spinner
from app.commands.render import report_view, status_text

CHECKS = ("integrity", "round_trip", "load", "equivalence", "stability", "weights", "resumability")


def add_verification_commands(commands: Any, options: argparse.ArgumentParser) -> None:
    verify = commands.add_parser(
        "verify",
        parents=[options],
        help="verify a checkpoint (with --wait: exit 1 when it fails, 4 when inconclusive)",
    )
    verify.add_argument("ref")
    verify.add_argument(
        "--reference",
        default=None,
        help="a checkpoint ref, or a reference outputs file (ckpt reference-outputs)",
    )
    verify.add_argument("--prompts", nargs="+", default=None, help="prompt texts")
    verify.add_argument("--checks", nargs="+", choices=CHECKS, default=None)
    verify.add_argument("--device", default=None, help="the worker's device (default auto)")
    verify.add_argument("--max-new-tokens", type=int, default=None)
    verify.add_argument("--wait", action="store_true", help="follow the job, print the report")
    verify.add_argument("--timeout", type=float, default=600, help="seconds to wait at most")
    verify.set_defaults(handler=handler(_verify))

    report = commands.add_parser(
        "report", parents=[options], help="a verification report (exit 1 when it failed)"
    )
    report.add_argument("verification_id")
    report.add_argument("--html", type=Path, default=None, help="write the HTML report here")
    report.set_defaults(handler=handler(_report))


def _verify(args: argparse.Namespace, client: Client) -> int:
    job = client.verify(args.ref, **_options(args))
    if not args.wait:
        if args.json:
            print_json(job)
        else:
            stdout.print(f"verification {job.id} {status_text(job.status)}")
            stdout.print(f"follow it with: ckpt report {job.id}")
        return EXIT_OK
    with job_spinner(f"verification {job.id}", enabled=not args.json) as show:
        report = client.wait(job.id, timeout=args.timeout, progress=show)
    return _print_report(report, as_json=args.json)


def _options(args: argparse.Namespace) -> VerificationOptions:
    options = VerificationOptions()
    if args.reference is not None:
        options["reference"] = _reference(args.reference)
    if args.prompts:
        options["prompts"] = args.prompts
    if args.checks:
        options["checks"] = args.checks
    if args.device:
        options["device"] = args.device
    if args.max_new_tokens is not None:
        options["max_new_tokens"] = args.max_new_tokens
    return options


def _reference(value: str) -> str | dict[str, Any]:
    """An existing file is an outputs document; anything else a checkpoint ref."""
    path = Path(value)
    if not path.is_file():
        return value
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--reference {path} is not a JSON outputs document: {exc}") from exc
    if not isinstance(document, dict):
        raise UsageError(f"--reference {path} is not a JSON outputs document")
    return document


def _report(args: argparse.Namespace, client: Client) -> int:
    if args.html is not None:
        args.html.write_text(client.report_html(args.verification_id))
        if not args.json:
            stdout.print(f"HTML report written to {args.html}")
    return _print_report(client.verification(args.verification_id), as_json=args.json)


def _print_report(report: Verification, *, as_json: bool) -> int:
    if as_json:
        print_json(report)
    else:
        stdout.print(report_view(report))
        if report.error:
            stdout.print(f"[red]error[/red]: {report.error}")
    return exit_code(report.status)


def exit_code(status: str) -> int:
    """0 passed, 1 failed or error, 4 inconclusive (a check could not give a verdict)."""
    if status in ("failed", "error"):
        return EXIT_FAILED
    return EXIT_INCONCLUSIVE if status == "inconclusive" else EXIT_OK
