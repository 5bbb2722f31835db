"""One progress interface for every long loop: rich in the terminal, plain lines in a log, silent in tests.

Library code takes a ``Progress`` (default: ``SILENT``) and calls ``task(...)`` to get a
handle with ``advance(n)``; commands pass a ``RichProgress`` when stderr is a terminal and a
``PlainProgress`` (time-stamped lines at a steady rate) when it is piped to a log. ``completed``
starts a bar where earlier work left it (a resumed run counts from what is done), and
``within`` lets a long inner loop (a block's epochs) move the outer bar as it goes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator, Protocol, TextIO


class ProgressTask(Protocol):
    def advance(self, n: float = 1) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: float | None, unit: str = "",
             completed: float = 0) -> contextlib.AbstractContextManager[ProgressTask]: ...


class _NullTask:
    def advance(self, n: float = 1) -> None:
        pass


class SilentProgress:
    """Progress that shows nothing (tests, library use)."""

    @contextlib.contextmanager
    def task(self, description: str, total: float | None, unit: str = "", completed: float = 0) -> Iterator[ProgressTask]:
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
    def task(self, description: str, total: float | None, unit: str = "", completed: float = 0) -> Iterator[ProgressTask]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as _Bar

        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                   TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn()]
        with _Bar(*columns, console=self._console, transient=False) as bar:
            task_id = bar.add_task(description, total=total, rate="", completed=completed)
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


class PlainProgress:
    """Time-stamped progress lines for logs (stderr not a terminal): one when a task starts, then
    one every ``interval`` seconds while it runs (from a timer, so a long block still reports),
    and one when it ends."""

    def __init__(self, stream: TextIO, interval: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream, self._interval, self._clock = stream, interval, clock

    @contextlib.contextmanager
    def task(self, description: str, total: float | None, unit: str = "", completed: float = 0) -> Iterator[ProgressTask]:
        handle = _PlainTask(self, description, total, unit, completed)
        handle.line("started")
        stop = threading.Event()
        timer = threading.Thread(target=handle.tick, args=(stop,), daemon=True)
        timer.start()
        ended = "stopped"  # an exception or Ctrl-C left the task unfinished: the log must not say done
        try:
            yield handle
            ended = "done"
        finally:
            stop.set()
            timer.join()
            handle.line(ended)

    def write(self, text: str) -> None:
        try:
            self._stream.write(text + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken log must not stop the work
            pass


class _PlainTask:
    def __init__(self, owner: PlainProgress, description: str, total: float | None, unit: str, completed: float) -> None:
        self._owner, self._description, self._total, self._unit = owner, description, total, unit
        self._start_count = self.count = float(completed)
        self._started = owner._clock()
        self._lock = threading.Lock()

    def advance(self, n: float = 1) -> None:
        with self._lock:
            self.count += n

    def tick(self, stop: threading.Event) -> None:
        while not stop.wait(self._owner._interval):
            self.line("")

    def line(self, what: str) -> None:
        with self._lock:
            count, elapsed = self.count, max(self._owner._clock() - self._started, 1e-9)
        rate = (count - self._start_count) / elapsed
        unit = f" {self._unit}" if self._unit else ""
        text = f"{time.strftime('%H:%M:%S')} {self._description}: {count:,.0f}"
        if self._total:
            text += f"/{self._total:,.0f}{unit} ({count / self._total:.0%})"
            if rate > 0 and what not in ("done", "stopped"):
                text += f", {rate:,.1f}{unit}/s, about {_clock_text((self._total - count) / rate)} left"
        else:
            text += unit
        self._owner.write(text + (f" [{what}]" if what else ""))


def _clock_text(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Within:
    """A progress for an inner loop that moves one outer task: the inner task's whole total is
    worth ``share`` of the outer one (e.g. a block's epochs worth the block's models)."""

    def __init__(self, outer: ProgressTask, share: float) -> None:
        self._outer, self._share, self.moved = outer, share, 0.0

    @contextlib.contextmanager
    def task(self, description: str, total: float | None, unit: str = "", completed: float = 0) -> Iterator[ProgressTask]:
        yield _WithinTask(self, total)

    def finish(self) -> None:
        """Move the outer task by what the inner loop has not reported yet."""
        if self.moved < self._share:
            self._outer.advance(self._share - self.moved)
            self.moved = self._share


class _WithinTask:
    def __init__(self, owner: Within, total: float | None) -> None:
        self._owner, self._total = owner, total

    def advance(self, n: float = 1) -> None:
        if self._total:
            step = min(self._owner._share * n / self._total, self._owner._share - self._owner.moved)
            if step > 0:
                self._owner._outer.advance(step)
                self._owner.moved += step
