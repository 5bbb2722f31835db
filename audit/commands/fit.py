"""`audit fit`: LASSO datamodels for every target of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from audit import pipeline
from audit.commands.common import console, progress
from audit.commands.options import build, with_settings


@with_settings(pipeline.FitConfig)
def fit(
    target: str = typer.Argument(..., help="run directory or dataset spec"),
    run: Optional[Path] = typer.Option(None, "--run"),
    settings: dict | None = None,
) -> None:
    """Fit one sparse linear datamodel per target, lambda chosen per target on held-out models."""
    run_dir = pipeline.resolve_run(target, run)
    s = pipeline.FIT.run(run_dir, build(pipeline.FitConfig, settings or {}), progress=progress())
    console.print(f"[bold]{pipeline.FIT.path(run_dir, 'datamodels')}[/]: {s.n_targets} targets from {s.n_models} "
                  f"models in {s.seconds:.1f}s on {s.device}; mean non-zero weights {s.mean_nonzero_weights:.1f}")
