"""`audit import`: a run of the published datamodels release (read in place, nothing copied)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from audit import pipeline
from audit.commands.common import console
from audit.release_import import import_release


def import_(
    folder: Path = typer.Argument(..., help="one dataset's folder of the release (holding data/ and/or datamodels/)"),
    dataset: str = typer.Option(..., "--dataset", help="the dataset spec the release was made on (cifar10[:DIR], "
                                                       "fmow[:DIR], ...)"),
    pct: int = typer.Option(50, "--pct", help="the release's subset percentage (the PCT of its file names)"),
    eval_models: int = typer.Option(10000, "--eval-models", help="the last rows of masks and margins that "
                                                                 "evaluate the datamodels (not trained on)"),
    run: Optional[Path] = typer.Option(None, "--run", help="run directory (default runs/<dataset>-release<PCT>)"),
) -> None:
    """Check the release's files against the dataset and make a run that reads them memory-mapped."""
    run_dir = run or pipeline.default_run_dir(dataset).with_name(f"{pipeline.dataset_name(dataset)}-release{pct}")
    data = import_release(folder, dataset, run_dir, pct=pct, eval_models=eval_models)
    n = data["n_models"]
    what = [f"{n - eval_models:,} training + {eval_models:,} evaluation models" if n else "no models",
            _weights_said(data["files"])]
    console.print(f"[bold]{run_dir}[/]: imported {', '.join(what)} from {len(data['files'])} files "
                  f"(read in place; moving or changing them breaks the run)")


def _weights_said(files: dict) -> str:
    """What the import holds of the published datamodels, for its one line."""
    splits = [split for split in ("train", "test") if f"{split}_weights" in files]
    if not splits:
        return "no datamodels (run `audit fit`)"
    if len(splits) == 2:
        return "the published datamodels"
    return (f"the published datamodels of the {splits[0]} targets only (steps that read the other split's "
            f"weights say so)")
