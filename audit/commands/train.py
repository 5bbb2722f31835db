"""`audit train`: train subset models into a run directory (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from audit import pipeline
from audit.commands.common import console, parse_options, progress


def train(
    dataset: str = typer.Argument(..., help="digits, cifar10[:DIR], fmow[:DIR] or npz:FILE"),
    run: Optional[Path] = typer.Option(None, "--run", help="run directory (default runs/<dataset>)"),
    n_models: int = typer.Option(5000, "--n-models", "-m", help="how many subset models in the run"),
    alpha: float = typer.Option(0.5, "--alpha", help="fraction of the training set each model sees"),
    seed: int = typer.Option(0, "--seed", min=0, help="seed of the subsets and models (>= 0)"),
    trainer: Optional[str] = typer.Option(None, "--trainer", help="mlp, resnet9 or resnet18 (default per dataset)"),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="trainer setting NAME=VALUE"),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="models trained together"),
    engine: str = typer.Option("local", "--engine", help="local or ray"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (auto, ray://HOST:PORT)"),
    year: Optional[int] = typer.Option(None, "--year", help="FMoW: keep images from this year (default 2012)"),
) -> None:
    """Train models on random subsets; an existing run resumes where it stopped."""
    run_dir = run or pipeline.default_run_dir(dataset)
    summary = pipeline.train(dataset, run_dir, n_models=n_models, alpha=alpha, seed=seed, trainer=trainer,
                             trainer_options=parse_options(option), block_size=block_size, engine=engine,
                             address=address, dataset_options={"year": year} if year else None,
                             progress=progress())
    acc = summary["test_accuracy"]
    console.print(f"[bold]{run_dir}[/]: {summary['trained']}/{summary['n_models']} models trained "
                  f"({summary['trained_now']} now, {summary['diverged']} diverged), test accuracy at "
                  f"alpha={summary['alpha']}: {acc:.3f}" if acc is not None else f"{run_dir}: no models yet")
