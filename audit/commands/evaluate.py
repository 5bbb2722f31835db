"""`audit evaluate`: datamodel quality on held-out models, against difference of means."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from audit import pipeline
from audit.commands.common import console, progress, show
from audit.commands.options import build, with_settings


@with_settings(pipeline.EvaluateConfig)
def evaluate(
    target: str = typer.Argument(..., help="run directory or dataset spec"),
    run: Optional[Path] = typer.Option(None, "--run"),
    settings: dict | None = None,
) -> None:
    """Train held-out models and report MSE, LDS (Spearman) and the baseline."""
    run_dir = pipeline.resolve_run(target, run)
    r = pipeline.EVALUATE.run(run_dir, build(pipeline.EvaluateConfig, settings or {}), progress=progress())
    show(pipeline.EVALUATE.summary(r))
    console.print(f"saved {pipeline.EVALUATE.path(run_dir)}")
