"""`audit run`: the whole pipeline on one dataset (train, fit, evaluate, audits, report)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from audit import pipeline
from audit.commands.common import console, parse_names, parse_options, progress
from audit.workflow import RunOptions, run_pipeline


def print_step(name: str, s: dict) -> None:
    """One step's outcome, as the step's own command would print it (shorter for the cheap ones)."""
    if s.get("skipped"):
        console.print(f"{name}: already current, skipped")
        return
    if name == "train":
        acc = s.get("test_accuracy")
        console.print(f"trained {s['trained']} models ({s['diverged']} diverged)"
                      + (f", test accuracy at α={s['alpha']} {acc:.3f}" if acc is not None else "")
                      + f" [{s['step_seconds']:.0f}s]")
    elif name == "fit":
        console.print(f"fitted datamodels for {s['n_targets']} targets on {s['n_models']} models "
                      f"[{s['step_seconds']:.0f}s]")
    elif name == "evaluate":
        from audit.commands.evaluate import print_evaluation

        print_evaluation(s)
    elif name in ("brittleness", "mislabel"):
        from audit.commands.brittleness import print_summary

        print_summary(s)
    elif name == "leakage":
        from audit.commands.leakage import print_leakage

        print_leakage(s)
    elif name == "report":
        console.print(f"report: [bold]{s['path']}[/]")


def run(
    dataset: str = typer.Argument("digits", help="digits (default), cifar10[:DIR], fmow[:DIR] or npz:FILE"),
    run: Optional[Path] = typer.Option(None, "--run", help="run directory (default runs/<dataset>)"),
    n_models: int = typer.Option(5000, "--n-models", "-m", help="subset models to train"),
    alpha: float = typer.Option(0.5, "--alpha", help="fraction of the training set in each subset"),
    seed: int = typer.Option(0, "--seed", min=0, help="seed of the subsets and models (>= 0)"),
    n_subsets: int = typer.Option(200, "--eval-subsets", help="held-out subsets for evaluation"),
    device: str = typer.Option("auto", "--device", help="fitting device: cpu, cuda or auto"),
    audit_targets: int = typer.Option(100, "--audit-targets", help="test targets in the brittleness/mislabel audits"),
    audit_T: Optional[int] = typer.Option(None, "--audit-T", help="models per retraining point (default: sized for the dataset)"),
    audits: str = typer.Option("brittleness,mislabel,leakage", "--audits",
                               help="comma-separated audits to run ('' for none)"),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="trainer option NAME=VALUE (repeatable)"),
) -> None:
    """Train, fit and evaluate datamodels, run the audits, render the report; resumes if interrupted."""
    start = time.perf_counter()
    run_dir = run or pipeline.default_run_dir(dataset)
    options = RunOptions(n_models=n_models, alpha=alpha, seed=seed, eval_subsets=n_subsets, device=device,
                         audit_targets=audit_targets, audit_T=audit_T,
                         audits=tuple(parse_names(audits)),
                         trainer_options=parse_options(option))
    options.check()
    console.rule(f"[bold]audit run {dataset}[/] -> {run_dir}")
    summary = run_pipeline(dataset, run_dir, options, progress=progress(), on_step=print_step)
    console.print(f"[bold green]done[/] in {time.perf_counter() - start:.0f}s; results in [bold]{run_dir}[/] "
                  f"(every step's summary: {run_dir}/run_summary.json); report: [bold]{summary['steps']['report']['path']}[/]")
