"""One progress interface for every long loop: rich in the terminal, silent in tests.

Library code takes a ``Progress`` (default: ``SILENT``) and calls ``task(...)`` to get a
handle with ``advance(n)``; commands pass a ``RichProgress``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Protocol


class ProgressTask(Protocol):
    def advance(self, n: float = 1) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: float | None, unit: str = "") -> contextlib.AbstractContextManager[ProgressTask]: ...


class _NullTask:
    def advance(self, n: float = 1) -> None:
        pass


class SilentProgress:
    """Progress that shows nothing (tests, library use)."""

    @contextlib.contextmanager
    def task(self, description: str, total: float | None, unit: str = "") -> Iterator[ProgressTask]:
        yield _NullTask()


SILENT = SilentProgress()


class _RichTask:
    def __init__(self, bar, task_id) -> None:
        self._bar, self._id = bar, task_id

    def advance(self, n: float = 1) -> None:
        self._bar.advance(self._id, n)


class RichProgress:
    """Progress bars on the terminal with rate (e.g. models/s) and time left."""

    def __init__(self, console=None) -> None:
        self._console = console

    @contextlib.contextmanager
    def task(self, description: str, total: float | None, unit: str = "") -> Iterator[ProgressTask]:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as _Bar, TaskProgressColumn,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)

        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                   TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn()]
        with _Bar(*columns, console=self._console, transient=False) as bar:
            task_id = bar.add_task(description, total=total, rate="")
            handle = _RateTask(bar, task_id, unit)
            yield handle


class _RateTask(_RichTask):
    def __init__(self, bar, task_id, unit: str) -> None:
        super().__init__(bar, task_id)
        self._unit = unit

    def advance(self, n: float = 1) -> None:
        super().advance(n)
        task = self._bar.tasks[self._id] if isinstance(self._bar.tasks, dict) else next(
            t for t in self._bar.tasks if t.id == self._id)
        speed = task.speed
        if speed and self._unit:
            self._bar.update(self._id, rate=f"{speed:,.1f} {self._unit}/s")
