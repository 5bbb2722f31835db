"""`audit brittleness` and `audit mislabel`: data support and label-flip support of test predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from audit import pipeline
from audit.commands.common import console, parse_names, parse_number_list, progress


def _search(mode: str, target: str, run: Optional[Path], n: int, targets: Optional[str], T: Optional[int],
            k_grid: Optional[str], methods: str, all_heuristic: bool, seed: int) -> None:
    from audit.audits.support import run_brittleness

    run_dir = pipeline.resolve_run(target, run)
    summary = run_brittleness(run_dir, mode=mode, n=n, targets=parse_number_list(targets, "--targets", int), T=T,
                              k_grid=parse_number_list(k_grid, "--k-grid", int), methods=parse_names(methods),
                              seed=seed, all_heuristic=all_heuristic, progress=progress())
    print_summary(summary)
    console.print(f"saved {summary['json']} and {summary['csv']}")


def print_summary(s: dict) -> None:
    what = "removal support (brittleness)" if s["mode"] == "remove" else "label-flip support (mislabel)"
    table = Table(title=f"{what}: {s['n_targets']} test targets, T={s['T']} models per point, "
                        f"k grid {s['k_grid']}")
    for col in ("ranking", "median support", "certified", "median k*", "no crossing"):
        table.add_column(col, no_wrap=True)
    for method, r in s["per_method"].items():
        table.add_row(method, r["median_certified_support_label"], f"{r['fraction_certified']:.2f}",
                      r["median_k_star_label"], f"{r['fraction_no_crossing']:.2f}")
    console.print(table)
    console.print(f"median support: median over the targets of the certified support ⌈1.2·k*⌉ (not certified = "
                  f"beyond the grid); certified: fraction certified; no crossing: fraction with k* > {s['max_k']}")
    h = s["heuristic"]
    med = "none" if h["median"] == float("inf") else f"{h['median']:g}"
    console.print(f"heuristic support (no retraining): median {med} over the targets, "
                  f"{h['fraction_not_found']:.2f} never reached")
    if "heuristic_all" in s:
        ha = s["heuristic_all"]
        med = "none" if ha["median"] == float("inf") else f"{ha['median']:g}"
        console.print(f"heuristic support over all {ha['n']} test examples: median {med}")
    console.print(f"full-data accuracy on the targets {s['full_data_accuracy']:.3f}; "
                  f"{s['models_trained_now']} models trained now ({s['models_in_plan']} in the plan), "
                  f"{s['seconds']:.0f}s")


_TARGET = typer.Argument(..., help="run directory or dataset spec")
_RUN = typer.Option(None, "--run", help="run directory (default runs/<dataset>)")
_N = typer.Option(100, "--n", help="test targets, class-balanced sample (fixed seed)")
_TARGETS = typer.Option(None, "--targets", help="comma-separated test indices (instead of --n)")
_T = typer.Option(None, "--T", help="models retrained per grid point (default sized for the dataset)")
_GRID = typer.Option(None, "--k-grid", help="comma-separated k values (default: the paper's grid, scaled)")
_METHODS = typer.Option("datamodels,representation,random", "--methods", help="rankings to search")
_ALL = typer.Option(False, "--all-heuristic", help="also the heuristic support of every test example")
_SEED = typer.Option(0, "--seed", min=0, help="seed of the target sample and the retraining (>= 0)")


def brittleness(target: str = _TARGET, run: Optional[Path] = _RUN, n: int = _N, targets: Optional[str] = _TARGETS,
                T: Optional[int] = _T, k_grid: Optional[str] = _GRID, methods: str = _METHODS,
                all_heuristic: bool = _ALL, seed: int = _SEED) -> None:
    """Smallest training sets whose removal flips test predictions (certified by retraining; resumable)."""
    _search("remove", target, run, n, targets, T, k_grid, methods, all_heuristic, seed)


def mislabel(target: str = _TARGET, run: Optional[Path] = _RUN, n: int = _N, targets: Optional[str] = _TARGETS,
             T: Optional[int] = _T, k_grid: Optional[str] = _GRID, methods: str = _METHODS,
             all_heuristic: bool = _ALL, seed: int = _SEED) -> None:
    """Smallest training sets whose relabelling to the likeliest wrong class flips test predictions."""
    _search("relabel", target, run, n, targets, T, k_grid, methods, all_heuristic, seed)
