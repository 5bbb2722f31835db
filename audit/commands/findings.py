"""`audit findings`: what the audits found, per example, ranked (and saved as RUN/findings.{json,csv})."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table as RichTable

from audit import findings as found_
from audit import pipeline
from audit.commands.common import console, refresh_findings, show_found
from audit.errors import AuditError


def findings(
    target: str = typer.Argument(..., help="run directory or dataset spec"),
    run: Optional[Path] = typer.Option(None, "--run", help="run directory (default runs/<dataset>)"),
    top: int = typer.Option(20, "--top", min=1, help="findings listed"),
    issue: Optional[str] = typer.Option(None, "--issue", help="only these issues (comma-separated: "
                                                              + ", ".join(found_.ISSUES) + ")"),
) -> None:
    """List the run's findings, most urgent first, from every audit's saved result; saves findings.json/.csv."""
    run_dir = pipeline.resolve_run(target, run)
    wanted = select_issues(issue)
    if not (run_dir / "run.json").is_file():
        raise AuditError(f"{run_dir} is not a run directory (no run.json); run `audit run` first")
    pipeline.RunStore.open(run_dir, writable=False)  # a damaged run.json: one line, as every command says it
    found = refresh_findings(run_dir)
    unread = found_.unread_error(found, wanted)  # an audit's result could not be read: its findings would be
    if unread is not None:                       # missing from the list
        raise unread
    show_found(found, run_dir)
    items = [f for f in found.items if wanted is None or f.issue in wanted]
    table = RichTable(title=f"{min(top, len(items))} of {len(items)} findings"
                            + (f" ({', '.join(sorted(wanted))})" if wanted else ""))
    for col in ("#", "example", "issue", "severity", "score", "given", "predicted", "evidence", "suggested action"):
        table.add_column(col, overflow="fold")
    for i, f in enumerate(items[:top], 1):
        table.add_row(str(i), f"{f.split} {f.index}", f.issue, f.severity, f"{f.score:.3g}", escape(f.given_name or ""),
                      escape(f.predicted_name or ""), escape(f.evidence), escape(f.action))
    console.print(table)


def select_issues(text: str | None) -> set[str] | None:
    """``--issue`` as a set of known issue names (None: all); one error naming the known ones otherwise."""
    if text is None:
        return None
    names = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(names - set(found_.ISSUES))
    if not names or unknown:
        raise AuditError(f"--issue {text!r}: choose among {', '.join(found_.ISSUES)} (comma-separated)")
    return names
