"""`audit run`: the whole pipeline on one dataset (train, fit, evaluate, audits, report)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from audit import pipeline
from audit.commands.common import console, progress
from audit.commands.evaluate import print_evaluation


def run(
    dataset: str = typer.Argument("digits", help="digits (default), cifar10[:DIR], fmow[:DIR] or npz:FILE"),
    run: Optional[Path] = typer.Option(None, "--run", help="run directory (default runs/<dataset>)"),
    n_models: int = typer.Option(5000, "--n-models", "-m"),
    alpha: float = typer.Option(0.5, "--alpha"),
    seed: int = typer.Option(0, "--seed"),
    n_subsets: int = typer.Option(200, "--eval-subsets", help="held-out subsets for evaluation"),
    device: str = typer.Option("auto", "--device", help="fitting device: cpu, cuda or auto"),
) -> None:
    """Train, fit and evaluate datamodels, then run the audits; resumes if interrupted."""
    start = time.perf_counter()
    run_dir = run or pipeline.default_run_dir(dataset)
    bars = progress()
    console.rule(f"[bold]audit run {dataset}[/] -> {run_dir}")
    s = pipeline.train(dataset, run_dir, n_models=n_models, alpha=alpha, seed=seed, progress=bars)
    console.print(f"trained {s['trained']} models ({s['diverged']} diverged), test accuracy {s['test_accuracy']:.3f}")
    f = pipeline.fit(run_dir, device=device, progress=bars)
    console.print(f"fitted datamodels for {f['n_targets']} targets in {f['seconds']:.1f}s")
    e = pipeline.evaluate(run_dir, n_subsets=n_subsets, progress=bars)
    print_evaluation(e)
    console.print(f"[bold green]done[/] in {time.perf_counter() - start:.0f}s; results in [bold]{run_dir}[/]")
