"""`audit report`: render RUN/report.html, one self-contained page with every result the run has."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from audit import pipeline
from audit.commands.common import console, progress
from audit.errors import AuditError
from audit.jsonio import cannot_write, check_output_place
from audit.reports.render import render_report
from audit.store import NOT_WRITABLE


def report(
    target: str = typer.Argument(..., help="run directory or dataset spec"),
    run: Optional[Path] = typer.Option(None, "--run", help="run directory (default runs/<dataset>)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="where to write the page (default RUN/report.html)"),
    examples: int = typer.Option(8, "--examples", min=1, max=100, help="test images in the nearest-examples section"),
) -> None:
    """Render the run's HTML report (opens offline; images and plots inlined)."""
    run_dir = pipeline.resolve_run(target, run)
    if out is not None:
        check_output_place(out, "--out")  # before the page is rendered
    try:
        path = render_report(run_dir, progress=progress(), n_examples=examples, out=out)
    except OSError as exc:
        if out is not None:
            raise cannot_write(out, "--out", exc) from None
        if exc.errno not in NOT_WRITABLE:
            raise
        raise AuditError(f"{run_dir} is not writable ({exc.strerror}); write the report elsewhere with "
                         f"--out FILE") from None
    console.print(f"saved {path}")
