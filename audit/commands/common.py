"""What every command shares: the consoles, the progress bars, option parsing."""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence

from rich.console import Console
from rich.table import Table as RichTable

from audit.contract import Block, Table
from audit.errors import AuditError
from audit.progress import SILENT, PlainProgress, Progress, RichProgress

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
