"""`audit import-scores FILE --run RUN`: your own attribution scores as another method of the run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from audit import scores
from audit.commands.common import console
from audit.errors import AuditError
from audit.store import RUN_JSON, RunStore


def import_scores(
    file: Path = typer.Argument(..., help="score matrix [n_train, n_targets]: .npy, .npz, a TRAK scores file "
                                          "(scores/NAME.mmap) or a TRAK save folder"),
    run: Path = typer.Option(..., "--run", help="run directory to add it to"),
    name: Optional[str] = typer.Option(None, "--name", help="method name (default: the file's name)"),
    key: Optional[str] = typer.Option(None, "--key", help="array of an .npz, or experiment of a TRAK save folder"),
) -> None:
    """Import a score matrix (rows: training examples; columns: test targets, or train then test targets)."""
    if not (run / RUN_JSON).is_file():
        raise AuditError(f"{run} is not a run directory (no {RUN_JSON})")
    c = RunStore.open(run, writable=False).config
    info = scores.import_scores(file, run, n_train=c.n_train, n_test=c.n_test, name=name, key=key)
    rows = "test targets" if info.targets == "test" else "train and test targets"
    console.print(f"imported '{info.name}': {info.n_train} training examples x {info.shape_given[1]} {rows}; saved "
                  f"{scores.matrix_path(run, info.name)}")
    console.print(f"rank by it with --methods datamodels,{info.name}; run `audit evaluate {run}` for its LDS")
