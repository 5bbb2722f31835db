"""`audit run`: the whole pipeline on one dataset (every registered step, then the report)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from audit import pipeline
from audit.commands.common import console, parse_names, progress, show, show_cost, show_found
from audit.commands.options import build, with_settings
from audit.contract import Result, Step
from audit.steps import REGISTRY
from audit.workflow import SUMMARY_FILE, RunOptions, check_score_matrices, run_pipeline


def print_step(step: Step, result: Result | None, entry: dict) -> None:
    """One step's outcome, as the step's own command would print it."""
    if result is None:
        console.print(f"{step.name}: skipped, {entry.get('reason', 'not run')}", markup=False)
        return
    if entry.get("skipped"):
        console.print(step.skip_line())
        return
    show(step.summary(result))


@with_settings(*(s.config_type for s in REGISTRY), include_command_only=False)
def run(
    dataset: str = typer.Argument("digits", help="digits (default), cifar10[:DIR], fmow[:DIR], npz:FILE, "
                                                        "folder:DIR, csv:FILE or hf:DIR (options after ?, "
                                                        "e.g. folder:DIR?size=32x32)"),
    run: Optional[Path] = typer.Option(None, "--run", help="run directory (default runs/<dataset>)"),
    audits: str = typer.Option(",".join(REGISTRY.default_audits()), "--audits",
                               help="comma-separated audits to run ('' for none)" + "".join(
                                   f"; {a} runs only when named" for a in REGISTRY.audits()
                                   if a not in REGISTRY.default_audits())),
    settings: dict | None = None,
) -> None:
    """Train, fit and evaluate datamodels, run the audits, render the report; resumes if interrupted."""
    start = time.perf_counter()
    run_dir = run or pipeline.default_run_dir(dataset, plant_labels=(settings or {}).get("plant_labels"))
    values = settings or {}
    options = RunOptions(configs={s.name: build(s.config_type, values) for s in REGISTRY},
                         audits=tuple(parse_names(audits)))
    options.check()
    check_score_matrices(run_dir, options)  # before the heading: a bad --methods is the only line printed
    console.rule(f"[bold]audit run {dataset}[/] -> {run_dir}")
    summary = run_pipeline(dataset, run_dir, options, progress=progress(), on_step=print_step, on_cost=show_cost)
    show_found(summary["findings"], run_dir)
    console.print(f"[bold green]done[/] in {time.perf_counter() - start:.0f}s; results in [bold]{run_dir}[/] "
                  f"(every step's summary: {run_dir}/{SUMMARY_FILE}); report: [bold]{summary['report']}[/]")
