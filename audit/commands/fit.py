"""`audit fit`: LASSO datamodels for every target of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from audit import pipeline
from audit.commands.common import console, progress


def fit(
    target: str = typer.Argument(..., help="run directory or dataset spec"),
    run: Optional[Path] = typer.Option(None, "--run"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto"),
    n_lambdas: int = typer.Option(24, "--n-lambdas", help="points on the lambda path"),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="models held out to choose lambda"),
    selection: str = typer.Option("min", "--selection",
                                  help="lambda rule: min (lowest validation MSE) or 1se (largest lambda within one "
                                       "standard error of it)"),
) -> None:
    """Fit one sparse linear datamodel per target, lambda chosen per target on held-out models."""
    run_dir = pipeline.resolve_run(target, run)
    s = pipeline.fit(run_dir, device=device, n_lambdas=n_lambdas, val_fraction=val_fraction,
                     selection=selection, progress=progress())
    console.print(f"[bold]{run_dir}/datamodels.npz[/]: {s['n_targets']} targets from {s['n_models']} models in "
                  f"{s['seconds']:.1f}s on {s['device']}; mean non-zero weights {s['mean_nonzero_weights']:.1f}")
