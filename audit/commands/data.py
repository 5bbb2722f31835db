"""`audit data ...`: one-off dataset preparation (FFCV .beton files)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from audit.commands.common import console, progress
from audit.data import load_dataset
from audit.data.ffcv_io import default_beton_dir, import_ffcv, write_beton

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Prepare datasets for fast loading.")


@app.command("prepare")
def prepare(
    dataset: str = typer.Argument(..., help="digits, cifar10[:DIR], fmow[:DIR], npz:FILE, folder:DIR, csv:FILE "
                                                 "or hf:DIR (options after ?, e.g. folder:DIR?size=32x32)"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for train.beton / test.beton "
                                                           "(default $AUDIT_DATA/ffcv/<dataset>)"),
    write_mode: str = typer.Option("raw", "--write-mode", help="raw (lossless, fastest to read) or jpg"),
    jpeg_quality: int = typer.Option(90, "--jpeg-quality", help="JPEG quality for --write-mode jpg"),
    year: Optional[int] = typer.Option(None, "--year", help="FMoW: keep images from this year (default 2012)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="writer processes (default: up to 8)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="rewrite files that already match the dataset"),
) -> None:
    """Write the dataset once to FFCV .beton files (needs the ffcv extra: scripts/setup-ffcv.sh)."""
    import_ffcv()  # fail before loading a large dataset
    ds = load_dataset(dataset, progress=progress(), **({"year": year} if year else {}))
    folder = out or default_beton_dir(dataset, year)
    paths = write_beton(ds, folder, write_mode=write_mode, jpeg_quality=jpeg_quality, num_workers=workers,
                        overwrite=overwrite)
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in paths.values())
    console.print(f"[bold]{folder}[/]: {ds.n_train} train / {ds.n_test} test examples of {dataset} ({sizes})")
