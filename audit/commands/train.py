"""`audit train`: train subset models into a run directory (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from audit import pipeline
from audit.commands.common import console, progress
from audit.commands.options import build, with_settings


@with_settings(pipeline.TrainConfig)
def train(
    dataset: str = typer.Argument(..., help="digits, cifar10[:DIR], fmow[:DIR], npz:FILE, folder:DIR, csv:FILE "
                                                 "or hf:DIR (options after ?, e.g. folder:DIR?size=32x32)"),
    run: Optional[Path] = typer.Option(None, "--run", help="run directory (default runs/<dataset>)"),
    settings: dict | None = None,
) -> None:
    """Train models on random subsets; an existing run resumes where it stopped."""
    run_dir = run or pipeline.default_run_dir(dataset, plant_labels=(settings or {}).get("plant_labels"))
    s = pipeline.TRAIN.for_dataset(dataset).run(run_dir, build(pipeline.TrainConfig, settings or {}),
                                                progress=progress())
    acc = s.test_accuracy
    console.print(f"[bold]{run_dir}[/]: {s.trained}/{s.n_models} models trained ({s.trained_now} now, "
                  f"{s.diverged} diverged), test accuracy at alpha={s.alpha}: {acc:.3f}"
                  if acc is not None else f"{run_dir}: no models yet")
