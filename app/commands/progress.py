"""Rich progress displays on stderr: byte transfers and verification jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from app.client import ProgressCallback, Verification
from app.commands.common import stderr
from app.display import binary_size


class _BinarySpeedColumn(ProgressColumn):
    """The transfer rate in the binary units every other size is shown in (MiB/s)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        rate = "?" if speed is None else f"{binary_size(speed)}/s"
        return Text(rate, style="progress.data.speed")


@contextmanager
def transfer_bar(description: str, *, enabled: bool) -> Iterator[ProgressCallback | None]:
    """A bar with bytes, rate and ETA; yields the callback to hand the client."""
    if not enabled:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        _BinarySpeedColumn(),
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
