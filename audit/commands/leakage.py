"""`audit leakage`: train-test leakage candidates, FAISS baseline, FMoW geodesic check, MTurk files, planted check."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from audit import pipeline
from audit.commands.common import console, parse_number_list, progress
from audit.errors import AuditError


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def print_leakage(s: dict) -> None:
    """The leakage summary as rich tables (used by `audit leakage` and `audit run`)."""
    o, dc = s["overlap"], s["datamodel_candidates"]
    console.print(f"[bold]leakage[/] {s['dataset']}: {s['n_test']} test x {s['n_train']} train, top {s['k']} "
                  f"candidates; FAISS on {s['n_reference_models']} full-data models "
                  f"(test acc {s['reference_test_accuracy']:.3f})")
    console.print(f"datamodel candidates with positive weight: {dc['mean_positive']:.1f} of {s['k']} on average "
                  f"({dc['n_tests_fewer_than_k']} test images have fewer, {dc['n_tests_none']} none); "
                  f"same class as the test image: {_f(dc['same_class_fraction'])}")
    console.print(f"overlap datamodels vs FAISS: {_f(o['mean_overlap_at_k'])} of the top {o['k']} shared "
                  f"(chance {o['chance_overlap_at_k']:.4f}), Jaccard {_f(o['mean_jaccard'])}, "
                  f"{_f(o['frac_any_overlap'])} of test images share at least one")
    if "geo" in s:
        g = s["geo"]
        table = Table(title="FMoW geodesic check: efficacy = found / ground truth")
        for col in ("d (miles)", "ground truth", "datamodels", "FAISS"):
            table.add_column(col, justify="right")
        for i, d in enumerate(g["d_miles"]):
            table.add_row(f"{d:g}", str(g["n_ground_truth"][i]), _f(g["efficacy"]["datamodels"][i]),
                          _f(g["efficacy"]["representation"][i]))
        console.print(table)
        fw = g["fraction_within"]
        console.print(f"test images within 0.25 / 2.6 miles of a training image: {fw['0.25']:.3f} / {fw['2.6']:.3f} "
                      "(paper, full FMoW 2012: ~0.20 / ~0.80)")
    if "planted" in s:
        _print_recall(s["planted"], f"planted duplicates in this run ({s['planted']['n_planted']})")
    if "planted_check" in s:
        pc = s["planted_check"]
        _print_recall(pc, f"planted check: {pc.get('n_planted')} copies in {pc.get('run')}")
    if "mturk_export" in s:
        e = s["mturk_export"]
        console.print(f"MTurk batch: {e['n_hits']} HITs in {e['dir']} (batch_input.csv, hit_template.html, images/)")
    if "mturk" in s:
        m = s["mturk"]
        ls = m["leakage_score"]
        console.print(f"MTurk results: {m['n_assignments_used']} assignments by {m['n_workers']} workers "
                      f"({m['n_rejected']} rejected) on {m['n_tests_answered']} test images; leakage score mean "
                      f"{ls['mean']:.3f}, >= 0.5 for {ls['n_at_least_0.5']}, = 1 for {ls['n_equal_1']}")
        if m.get("mean_score_top") is not None:
            console.print(f"mean annotation score: top candidates {m['mean_score_top']:.3f}, "
                          f"bottom candidates {_f(m.get('mean_score_bottom'))}")


def _print_recall(p: dict, title: str) -> None:
    methods = [m for m in ("datamodels", "representation") if m in p]
    if not methods:
        return
    ks = list(p[methods[0]]["recall_at_k"])
    table = Table(title=f"{title}: recall@k")
    table.add_column("method")
    for k in ks:
        table.add_column(f"@{k}", justify="right")
    if any("median_full_rank" in p[m] for m in methods):
        table.add_column("median rank", justify="right")
    for m in methods:
        row = [m if m == "datamodels" else "FAISS"] + [_f(p[m]["recall_at_k"][k]) for k in ks]
        if "median_full_rank" in p[m]:
            row.append(f"{p[m]['median_full_rank']:g}" if p[m]["median_full_rank"] is not None else "-")
        table.add_row(*row)
    console.print(table)


_TARGET = typer.Argument(..., help="run directory or dataset spec (digits, cifar10[:DIR], fmow[:DIR], npz:FILE, "
                                        "folder:DIR, csv:FILE, hf:DIR)")


def leakage(
    target: str = _TARGET,
    run: Optional[Path] = typer.Option(None, "--run", help="run directory (default runs/<dataset>)"),
    k: int = typer.Option(10, "--k", help="candidates per test image (datamodels and FAISS)"),
    d_grid: Optional[str] = typer.Option(None, "--d-grid", help="FMoW: comma-separated miles (default 0.25..3)"),
    mturk_export: Optional[Path] = typer.Option(None, "--mturk-export",
                                                help="write the MTurk batch into DIR (with --mturk-results and no "
                                                     "--image-base-url: read the export in DIR)"),
    image_base_url: Optional[str] = typer.Option(None, "--image-base-url",
                                                 help="public URL where DIR/images/ will be served"),
    mturk_sample: Optional[int] = typer.Option(None, "--mturk-sample",
                                               help="export N class-balanced test images instead of all"),
    mturk_results: Optional[Path] = typer.Option(None, "--mturk-results", help="MTurk batch results CSV to import"),
    plant: Optional[int] = typer.Option(None, "--plant",
                                        help="also plant copies of N test images in a twin run <run>-plantN, "
                                             "train + fit it, and report recall@k (CPU-sized data)"),
    plant_models: Optional[int] = typer.Option(None, "--plant-models",
                                               help="models in the planted run (default 1000, at most the run's)"),
) -> None:
    """Leakage candidates from datamodels vs the FAISS baseline; FMoW geodesic check; MTurk round trip."""
    from audit.audits.leakage_audit import run_leakage, run_planted_check

    run_dir = pipeline.resolve_run(target, run)
    if plant is not None and plant < 1:
        raise AuditError(f"--plant {plant}: plant at least one test image")
    bars = progress()
    s = run_leakage(run_dir, k=k, d_grid=parse_number_list(d_grid, "--d-grid"), mturk_export=mturk_export,
                    image_base_url=image_base_url, mturk_results=mturk_results, mturk_sample=mturk_sample,
                    progress=bars)
    if plant is not None:
        p = run_planted_check(run_dir, plant, k=k, n_models=plant_models, progress=bars)
        s["planted_check"] = {m: {"recall_at_k": r["recall_at_k"], "median_full_rank": r["median_full_rank"]}
                              for m, r in p["methods"].items()} | {"run": p["run"], "n_planted": p["n_planted"]}
    print_leakage(s)
    console.print(f"saved {s['files']['json']} and {s['files']['candidates_csv']}")
