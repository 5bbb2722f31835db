"""`audit leakage`: train-test leakage candidates, FAISS baseline, FMoW geodesic check, MTurk files, planted check."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from audit import pipeline
from audit.audits.leakage_audit import LEAKAGE, LeakageConfig
from audit.commands.common import console, progress, show_step
from audit.commands.options import build, with_settings


@with_settings(LeakageConfig)
def leakage(
    target: str = typer.Argument(..., help="run directory or dataset spec (digits, cifar10[:DIR], fmow[:DIR], "
                                           "npz:FILE, folder:DIR, csv:FILE, hf:DIR)"),
    run: Optional[Path] = typer.Option(None, "--run", help="run directory (default runs/<dataset>)"),
    settings: dict | None = None,
) -> None:
    """Leakage candidates from datamodels vs the FAISS baseline; FMoW geodesic check; MTurk round trip."""
    run_dir = pipeline.resolve_run(target, run)
    s = LEAKAGE.run(run_dir, build(LeakageConfig, settings or {}), progress=progress())
    show_step(LEAKAGE, s, run_dir)
    console.print(f"saved {s.files['json']} and {s.files['candidates_csv']}")
