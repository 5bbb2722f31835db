"""`audit STEP RUN`: the command of any registered step that has no hand-written one.

Options come from the step's settings; it runs the step and prints its summary, so a new
audit gets its command from its registry line alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import typer

from audit import pipeline
from audit.commands.common import console, progress, show_step
from audit.commands.options import build, with_settings
from audit.contract import Step


def command_for(step: Step) -> Callable[..., None]:
    """A typer command that runs ``step`` on a run directory and prints its summary."""

    @with_settings(step.config_type)
    def command(target: str = typer.Argument(..., help="run directory or dataset spec"),
                run: Optional[Path] = typer.Option(None, "--run", help="run directory (default runs/<dataset>)"),
                settings: dict | None = None) -> None:
        run_dir = pipeline.resolve_run(target, run)
        result = step.run(run_dir, build(step.config_type, settings or {}), progress=progress())
        show_step(step, result, run_dir)
        console.print(f"saved {step.path(run_dir)}")

    command.__doc__ = (step.__doc__ or step.title).strip().splitlines()[0]
    return command
