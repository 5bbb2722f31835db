"""`audit brittleness` and `audit mislabel`: data support and label-flip support of test predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from audit import pipeline
from audit.audits.support import BRITTLENESS, MISLABEL, SupportConfig, SupportStep
from audit.commands.common import console, progress, show_cost, show_step
from audit.commands.options import build, with_settings

_TARGET = typer.Argument(..., help="run directory or dataset spec")
_RUN = typer.Option(None, "--run", help="run directory (default runs/<dataset>)")


def _search(step: SupportStep, target: str, run: Optional[Path], settings: dict) -> None:
    run_dir = pipeline.resolve_run(target, run)
    config = build(SupportConfig, settings)
    config.check()  # a setting no search can use: one line before the cost of the search is shown
    show_cost(step, step.cost(run_dir, config), "resumable: Ctrl-C keeps the models trained so far")
    s = step.run(run_dir, config, progress=progress())
    show_step(step, s, run_dir)
    console.print(f"saved {s.json_path} and {s.csv_path}")


@with_settings(SupportConfig)
def brittleness(target: str = _TARGET, run: Optional[Path] = _RUN, settings: dict | None = None) -> None:
    """Smallest training sets whose removal flips test predictions (certified by retraining; resumable)."""
    _search(BRITTLENESS, target, run, settings or {})


@with_settings(SupportConfig)
def mislabel(target: str = _TARGET, run: Optional[Path] = _RUN, settings: dict | None = None) -> None:
    """Smallest training sets whose relabelling to the likeliest wrong class flips test predictions."""
    _search(MISLABEL, target, run, settings or {})
