"""Progress bars and Ctrl-C handling for the commands that move messages.

Why its own module: fanout, replay and bridge show the same bar (messages,
rate, ETA from the backlog ``stats`` reported at the start) on stderr, so
stdout keeps one summary line a script can read; and they stop the same way
-- the first Ctrl-C finishes the batch in hand (confirm, then ack) and ends
cleanly, the second one interrupts at once (the next run resumes either way).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from mqkit.cli.common import err_console
from mqkit.ops.move import MoveResult

__all__ = ["RateColumn", "graceful_stop", "move_progress"]


class RateColumn(ProgressColumn):
    """Messages per second, as rich estimates it over the last seconds."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- msg/s" if speed is None else f"{speed:,.0f} msg/s", style="cyan")


@contextmanager
def move_progress(
    description: str, total: int | None, *, enabled: bool = True
) -> Iterator[Callable[[MoveResult], None]]:
    """A bar on stderr; yields the ``on_progress`` callback for :func:`mqkit.ops.move.move`."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console(),
        disable=not enabled,
        refresh_per_second=4,
    )
    with progress:
        task = progress.add_task(description, total=total or None)

        def update(result: MoveResult) -> None:
            progress.update(task, completed=result.moved + result.skipped)

        yield update


@contextmanager
def graceful_stop() -> Iterator[threading.Event]:
    """An event set by the first Ctrl-C; the second raises KeyboardInterrupt."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        err_console().print(
            "[yellow]stopping after the batch in hand (Ctrl-C again to interrupt now)[/]"
        )

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
