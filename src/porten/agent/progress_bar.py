"""The owner's view of a download: a rich progress bar on the agent's terminal.

The hub sees the same bytes through load-progress messages; this is for the
person watching ``porten agent run`` (or ``porten up``). It draws only when
stderr is a terminal (:func:`for_terminal`), so service logs stay clean.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class DownloadBars:
    """One bar per model downloading; each disappears into a summary line when done."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            "[progress.percentage]{task.percentage:>3.0f}%",
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def update(self, model_id: str, done_bytes: int, total_bytes: int) -> None:
        """``model_id`` has ``done_bytes`` of ``total_bytes`` on disk."""
        task = self._tasks.get(model_id)
        if task is None:
            if not self._tasks:
                self._progress.start()
            task = self._progress.add_task(f"downloading {model_id}", total=total_bytes or None)
            self._tasks[model_id] = task
        self._progress.update(task, completed=done_bytes, total=total_bytes or None)

    def finish(self, model_id: str, error: str = "") -> None:
        """The download of ``model_id`` ended (with ``error``, if it failed)."""
        task = self._tasks.pop(model_id, None)
        if task is None:
            return
        if error:
            self._progress.update(task, description=f"[red]failed {model_id}")
        self._progress.refresh()
        if not self._tasks:
            self._progress.stop()
        if error:
            self._progress.console.print(f"[red]download of {model_id} failed:[/] {error}")


def for_terminal() -> DownloadBars | None:
    """Bars on stderr when it is a terminal, else ``None`` (a service, a pipe, a test)."""
    if not sys.stderr.isatty():
        return None
    return DownloadBars(Console(stderr=True))
