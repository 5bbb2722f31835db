"""`audit evaluate`: datamodel quality on held-out models, against difference of means."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from audit import pipeline
from audit.commands.common import console, progress


def evaluate(
    target: str = typer.Argument(..., help="run directory or dataset spec"),
    run: Optional[Path] = typer.Option(None, "--run"),
    n_subsets: int = typer.Option(200, "--n-subsets", help="held-out subsets to train"),
    repeats: int = typer.Option(1, "--repeats", "-r", help="models per held-out subset, margins averaged"),
) -> None:
    """Train held-out models and report MSE, LDS (Spearman) and the baseline."""
    run_dir = pipeline.resolve_run(target, run)
    r = pipeline.evaluate(run_dir, n_subsets=n_subsets, repeats=repeats, progress=progress())
    print_evaluation(r)
    console.print(f"saved {run_dir}/evaluation.json")


def print_evaluation(r: dict) -> None:
    table = Table(title=f"datamodel quality on {r['n_subsets']} held-out subsets x {r['repeats']} repeats")
    for col in ("estimator", "targets", "mean LDS (Spearman)", "mean MSE"):
        table.add_column(col)
    for group in ("all", "train", "test"):
        g = r[group]
        table.add_row(f"datamodels ({group})", str(g["n_targets"]), f"{g['lds_mean']:.3f}", f"{g['mse_mean']:.3f}")
        table.add_row(f"difference of means ({group})", str(g["n_targets"]), f"{g['baseline_lds_mean']:.3f}", "")
    console.print(table)
    if r.get("noise_floor_mse") is not None:
        console.print(f"noise floor (OPT) MSE with {r['repeats']} repeats: {r['noise_floor_mse']:.3f}")
