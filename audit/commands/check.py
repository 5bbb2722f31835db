"""`audit check`: pass/fail gate on a run's saved results (exit 0 pass, 1 fail, 2 bad input)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from audit import checks
from audit.commands.common import console, err_console
from audit.jsonio import write_json
from audit.store import NOT_WRITABLE

_KIND_TYPE = {"count": Optional[int], "fraction": Optional[float], "miles": Optional[float], "lds": Optional[float],
              "correlation": Optional[float],
              "choice": Optional[str], "method": Optional[str]}


def _check_parameters() -> list[inspect.Parameter]:
    """One option per threshold and per check setting of the registered steps' metrics."""
    params = []
    for m in checks.METRICS:
        defaults = {name: p.default for name, p in m.params.items()}
        what = "minimum" if m.direction == "min" else "maximum"
        params.append(inspect.Parameter(m.key, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[float],
                                        default=typer.Option(None, "--" + m.key.replace("_", "-"),
                                                             help=f"{what} {m.label(defaults)}")))
    for name, p in checks.PARAMS.items():
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=_KIND_TYPE[p.kind],
                                        default=typer.Option(None, "--" + name.replace("_", "-"), help=p.help)))
    return params


def check(
    run_dir: Path = typer.Argument(..., help="run directory (with evaluation.json and/or audits/)"),
    config: Optional[Path] = typer.Option(None, "--config", help=f"thresholds file (default: {checks.CONFIG_FILE} or "
                                                                 "the tool.audit table of pyproject.toml, here or above)"),
    junit: Optional[Path] = typer.Option(None, "--junit", help="also write JUnit XML for CI here"),
    **options: Any,
) -> None:
    """Check a run against thresholds (audit.toml, pyproject.toml tool.audit, or options); for CI."""
    thresholds, source = checks.resolve_thresholds(config, {k: v for k, v in options.items() if k in checks.KNOWN_KEYS})
    result = checks.run_checks(run_dir, thresholds, source=source, save=False)
    saved = save_if_writable(checks.check_path(run_dir), result)
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


_own = list(inspect.signature(check).parameters.values())[:-1]
check.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [p.replace(annotation={"run_dir": Path}.get(p.name, Optional[Path])) for p in _own] + _check_parameters())


def print_checks(result: dict) -> None:
    colour = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "info": "[dim]info[/]"}
    table = Table(title=f"audit check {result['run']} (thresholds: {result['source']})")
    for col in ("check", "measures", "value", "threshold", "result"):
        table.add_column(col, justify="right" if col in ("value", "threshold") else "left")
    for c in result["checks"]:
        value, threshold, status = checks.describe(c)
        table.add_row(c["key"], c["measure"], value, threshold, colour[status])
    console.print(table)
    for c in result["checks"]:  # what a value stands for, where the check's data says (an import of one split)
        note = (c.get("details") or {}).get("note")
        if note and c["status"] != "info":
            console.print(f"{c['key']}: {note}", markup=False)
    verdict = "[bold green]all checks passed[/]" if result["passed"] else \
        f"[bold red]{result['n_failed']} of {result['n_checks']} checks failed[/]"
    console.print(verdict)
