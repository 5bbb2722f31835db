"""`audit export`: the run's findings for a labelling tool (Label Studio tasks, a FiftyOne dataset)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from audit import export as export_
from audit import pipeline
from audit.commands.common import console
from audit.commands.findings import select_issues


def export(
    target: str = typer.Argument(..., help="run directory or dataset spec"),
    to: str = typer.Option(..., "--to", help="labelstudio (tasks.json + images + label_config.xml) or fiftyone "
                                             "(FiftyOneImageClassificationDataset + audit_samples.json)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder to write (default RUN/export/<format>); "
                                                                 "new, empty, or an earlier export"),
    run: Optional[Path] = typer.Option(None, "--run", help="run directory (default runs/<dataset>)"),
    issue: Optional[str] = typer.Option(None, "--issue", help="only images with these issues (comma-separated)"),
    top: Optional[int] = typer.Option(None, "--top", min=1, help="the most urgent N images only"),
    image_url_prefix: Optional[str] = typer.Option(None, "--image-url-prefix",
                                                   help="labelstudio: where Label Studio fetches images/ (default: "
                                                        "its local-files URL for the export folder)"),
) -> None:
    """Export the flagged images with their findings for Label Studio or FiftyOne, to fix labels there."""
    run_dir = pipeline.resolve_run(target, run)
    folder, n = export_.export(run_dir, to, out, issues=select_issues(issue), top=top,
                               image_url_prefix=image_url_prefix)
    console.print(escape(f"exported {n} flagged images for {to} to {folder} (see {folder / 'README.txt'})"))
