"""A live progress bar (rich): steps, steps/s, recent episode return and ETA."""

from __future__ import annotations

import sys

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} steps/s" if speed else "- steps/s", style="cyan", no_wrap=True)


class TrainProgress:
    """Context manager; ``update(steps_done, **info)`` sets the position and the info text."""

    def __init__(self, total: int, description: str, enabled: bool | None = None, start: int = 0):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._p = None
        if self.enabled:
            self._p = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=16),
                MofNCompleteColumn(),
                _Rate(),
                TextColumn("{task.fields[info]}"),
                TextColumn("eta"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._p.add_task(description, total=total, completed=start, info="")

    def __enter__(self) -> TrainProgress:
        if self._p is not None:
            self._p.start()
        return self

    def update(self, completed: int, **info: float | str | None) -> None:
        if self._p is None:
            return
        text = "  ".join(
            f"{k} {v:,.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items() if v is not None
        )
        self._p.update(self._task, completed=completed, info=text)

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.stop()
