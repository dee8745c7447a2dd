"""Rich progress displays on stderr: byte transfers and verification jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from app.client import ProgressCallback, Verification
from app.commands.common import stderr


@contextmanager
def transfer_bar(description: str, *, enabled: bool) -> Iterator[ProgressCallback | None]:
    """A bar with bytes, rate and ETA; yields the callback to hand the client."""
    if not enabled:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=False) as progress:
        task = progress.add_task(description, total=None)

        def advance(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        yield advance


@contextmanager
def job_spinner(
    description: str, *, enabled: bool
) -> Iterator[Callable[[Verification], None] | None]:
    """A spinner showing the job's state and elapsed time while it is polled."""
    if not enabled:
        yield None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=False) as progress:
        task = progress.add_task(description, total=None)

        def show(view: Verification) -> None:
            progress.update(task, description=f"{description}: {view.status}")

        yield show
