"""`ckpt demo`: registered by app.cli; heavy imports wait until the command runs."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any


def add_demo_command(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="train a small GPT-2 here and show the registry: uploads, best, verify, generate",
    )
    demo.add_argument("--url", default=None, help="registry (default CKPT_URL or 127.0.0.1:8000)")
    demo.add_argument("--epochs", type=positive_int, default=3, help="default 3")
    demo.add_argument("--steps-per-epoch", type=positive_int, default=100, help="default 100")
    demo.add_argument("--name", default="demo-gpt2", help="checkpoint name (epochs: NAME-train)")
    demo.add_argument("--workdir", type=Path, default=None, help="default: a new temp folder")
    demo.set_defaults(handler=_run)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from app.demo.run import DemoOptions, run_demo
    from app.demo.training import TrainingConfig

    steps = args.steps_per_epoch
    options = DemoOptions(
        workdir=args.workdir or Path(tempfile.mkdtemp(prefix="ckpt-demo-")),
        url=args.url,
        name=args.name,
        training=TrainingConfig(
            epochs=args.epochs, steps_per_epoch=steps, eval_every=min(50, steps)
        ),
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    return run_demo(options, Console())
