"""What every command shares: the consoles, the progress bars, option parsing."""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from audit import findings
from audit.contract import Block, Cost, Result, Step, Table
from audit.errors import AuditError
from audit.progress import SILENT, PlainProgress, Progress, RichProgress
from audit.store import NOT_WRITABLE

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def progress() -> Progress:
    """Rich bars on a terminal, time-stamped lines every few seconds when stderr goes to a log, nothing
    when AUDIT_QUIET is set (tests)."""
    if os.environ.get("AUDIT_QUIET"):
        return SILENT
    return RichProgress(err_console) if err_console.is_terminal else PlainProgress(sys.stderr)


def show(blocks: Sequence[Block]) -> None:
    """A step's summary (lines and tables) on the terminal."""
    for block in blocks:
        if isinstance(block, Table):
            table = RichTable(title=block.title)
            for col in block.columns:
                table.add_column(col, no_wrap=True, justify="right" if block.right_aligned else "left")
            for row in block.rows:
                table.add_row(*row)
            console.print(table)
        else:
            console.print(block.text)


def parse_names(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (a comma-separated option; empty parts dropped)."""
    return [part for part in text.replace(" ", "").split(",") if part]


def parse_number_list(text: Optional[str], what: str, cast: Callable[[str], float] = float) -> Optional[list]:
    """``"3,17,42"`` -> ``[3, 17, 42]`` with ``cast=int`` (``float``: numbers); None stays None."""
    if text is None:
        return None
    kind = "integers" if cast is int else "numbers"
    try:
        values = [cast(part) for part in parse_names(text)]
    except ValueError:
        raise AuditError(f"{what} must be a comma-separated list of {kind} (got '{text}')") from None
    if not values:
        raise AuditError(f"{what} is empty; give a comma-separated list of {kind}")
    return values


# ----- findings ----------------------------------------------------------------------------------
def show_found(found: findings.Findings, where: Path | None = None) -> None:
    """The "what we found" block: one line per issue (counts by severity, the first finding)."""
    saved = f" ({where / findings.FINDINGS_CSV})" if where is not None else ""
    console.print(f"[bold]what we found[/]{escape(saved)}:")
    for line in findings.summary_lines(found):
        console.print("  " + escape(line))


def refresh_findings(run_dir: Path) -> findings.Findings:
    """Collect the run's findings and save them (a read-only run: printed only, with a note)."""
    found = findings.collect(run_dir)
    try:
        return findings.save(run_dir, found)
    except OSError as exc:
        if exc.errno not in NOT_WRITABLE:
            raise
        err_console.print(f"note: {run_dir} is not writable; the findings were not saved there")
        return found


def show_step(step: Step, result: Result, run_dir: Path) -> None:
    """What an audit command prints when its step has run: the run's findings (refreshed), then the
    step's own lines and tables."""
    show_found(refresh_findings(run_dir), run_dir)
    show(step.summary(result))


def show_cost(step: Step, cost: Cost | None, skip: str) -> None:
    """The models a retraining step is about to train, how long that should take, and how to skip it."""
    if cost is None or cost.models <= 0:
        return
    eta = ""
    if cost.seconds is not None:
        fast, slow = cost.seconds
        span = _duration(fast) if slow <= fast * 1.05 else f"{_duration(fast)} to {_duration(slow)}"
        rate = f"{cost.rate:,.1f}" if cost.rate < 100 else f"{cost.rate:,.0f}"
        eta = f", about {span} at the {rate} models/s measured on this run ({cost.measured_on})"
    console.print(escape(f"{step.name}: up to {cost.models:,} models to train ({cost.detail}){eta}; "
                         f"{cost.cheaper and 'fewer with ' + cost.cheaper + ', '}{skip}"))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
