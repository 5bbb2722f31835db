"""`audit check`: pass/fail gate on a run's saved results (exit 0 pass, 1 fail, 2 bad input)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from audit import checks
from audit.commands.common import console, err_console
from audit.jsonio import write_json
from audit.store import NOT_WRITABLE

_P = checks.PARAMS


def check(
    run_dir: Path = typer.Argument(..., help="run directory (with evaluation.json and/or audits/)"),
    config: Optional[Path] = typer.Option(None, "--config", help=f"thresholds file (default: {checks.CONFIG_FILE} or "
                                                                 "the tool.audit table of pyproject.toml, here or above)"),
    junit: Optional[Path] = typer.Option(None, "--junit", help="also write JUnit XML for CI here"),
    min_lds: Optional[float] = typer.Option(None, "--min-lds", help="minimum mean datamodel LDS"),
    lds_group: Optional[str] = typer.Option(None, "--lds-group", help=_P["lds_group"].help),
    max_brittle_fraction: Optional[float] = typer.Option(
        None, "--max-brittle-fraction", help="maximum fraction of test targets with certified support <= k"),
    support_k: Optional[int] = typer.Option(None, "--support-k", help=_P["support_k"].help),
    max_mislabel_fraction: Optional[float] = typer.Option(
        None, "--max-mislabel-fraction", help="maximum fraction of test targets flipped by relabelling <= k"),
    mislabel_k: Optional[int] = typer.Option(None, "--mislabel-k", help=_P["mislabel_k"].help),
    support_method: Optional[str] = typer.Option(None, "--support-method", help=_P["support_method"].help),
    max_geo_leak_fraction: Optional[float] = typer.Option(
        None, "--max-geo-leak-fraction", help="FMoW: maximum fraction of test images with a candidate within d miles"),
    leak_miles: Optional[float] = typer.Option(None, "--leak-miles", help=_P["leak_miles"].help),
    leak_method: Optional[str] = typer.Option(None, "--leak-method", help=_P["leak_method"].help),
    max_mturk_leak_fraction: Optional[float] = typer.Option(
        None, "--max-mturk-leak-fraction", help="CIFAR: maximum fraction of annotated test images with score >= s"),
    mturk_score: Optional[float] = typer.Option(None, "--mturk-score", help=_P["mturk_score"].help),
    min_planted_recall: Optional[float] = typer.Option(
        None, "--min-planted-recall", help="minimum share of planted duplicates found among the candidates"),
    planted_k: Optional[int] = typer.Option(None, "--planted-k", help=_P["planted_k"].help),
    planted_method: Optional[str] = typer.Option(None, "--planted-method", help=_P["planted_method"].help),
) -> None:
    """Check a run against thresholds (audit.toml, pyproject.toml tool.audit, or options); for CI."""
    options = {k: v for k, v in locals().items() if k in checks.KNOWN_KEYS}
    thresholds, source = checks.resolve_thresholds(config, options)
    result = checks.run_checks(run_dir, thresholds, source=source, save=False)
    saved = save_if_writable(run_dir / "audits" / checks.CHECK_JSON, result)
    if junit is not None:
        checks.write_junit(result, junit)
        saved.append(str(junit))
    print_checks(result)
    if saved:
        console.print(f"saved {' and '.join(saved)}")
    code = checks.exit_code(result)
    if code:
        sys.exit(code)  # SystemExit passes through the CLI wrapper unchanged (typer.Exit would not)


def save_if_writable(path: Path, result: dict) -> list[str]:
    """Save the result in the run (a read-only run is still checked: the verdict is the exit code)."""
    try:
        write_json(path, result)
    except OSError as exc:
        if exc.errno not in NOT_WRITABLE:
            raise
        err_console.print(f"note: {path.parent} is not writable; the result was not saved there")
        return []
    return [str(path)]


def print_checks(result: dict) -> None:
    colour = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "info": "[dim]info[/]"}
    table = Table(title=f"audit check {result['run']} (thresholds: {result['source']})")
    for col in ("check", "measures", "value", "threshold", "result"):
        table.add_column(col, justify="right" if col in ("value", "threshold") else "left")
    for c in result["checks"]:
        value, threshold, status = checks.describe(c)
        table.add_row(c["key"], c["measure"], value, threshold, colour[status])
    console.print(table)
    verdict = "[bold green]all checks passed[/]" if result["passed"] else \
        f"[bold red]{result['n_failed']} of {result['n_checks']} checks failed[/]"
    console.print(verdict)
