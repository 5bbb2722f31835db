"""Planted near-duplicates by perturbation family: which leakage ranking finds them.

Trains a digits run with the project's own pipeline (--trainer, default the MLP recipe; α=0.5,
--models models), fits its datamodels, and runs the planted check (`audit leakage --plant N`): N test
images get perturbed copies in a twin run, one perturbation family per copy (noise, one-pixel
shift, brightness/contrast, crop-and-resize, JPEG; flip where the classes allow it), and
each ranking — datamodels, representation (FAISS on full-data features), pixels (pixel
correlation), their union and their rank fusion — is scored by recall@1/5/10 and the copy's
median full rank, overall and per family. Prints a table and writes
$OUT/leakage_families.json (or --json).

    python benchmarks/leakage_families.py [--models 5000] [--plant 100] [--plant-models 5000] [--seed 0]
        [--trainer mlp|cnn] [-o NAME=VALUE] [--runs-dir DIR] [--families noise,shift,brightness,crop,jpeg]
        [--datamodel-ranking auto|weights|embedding]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit import pipeline  # noqa: E402
from audit.audits import leakage_audit as la  # noqa: E402


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=5000)
    ap.add_argument("--plant", type=int, default=100)
    ap.add_argument("--plant-models", type=int, default=None, help="models in the twin run (default: --models)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alpha", type=float, default=0.5, help="subset fraction of both runs (the paper's grid: "
                                                            "0.1, 0.2, 0.5, 0.75)")
    ap.add_argument("--trainer", default="mlp", help="the CPU trainer: mlp or cnn (its default recipe)")
    ap.add_argument("--option", "-o", action="append", default=[],
                    help="trainer setting NAME=VALUE, as `audit train -o` (e.g. translate=1); repeatable")
    ap.add_argument("--families", default=None, help="comma-separated (default: every family digits allows)")
    ap.add_argument("--datamodel-ranking", default="auto", help="how the datamodels list candidates, as `audit leakage "
                                                                "--datamodel-ranking`: weights, embedding or auto")
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    runs = Path(a.runs_dir or tempfile.mkdtemp(prefix="leak-families-"))
    options = pipeline.parse_trainer_options(a.option)
    tag = "".join(f"-{k}{v}" for k, v in sorted(options.items()))
    run = runs / f"digits-{a.trainer}{tag}-{a.models}-a{a.alpha:g}-s{a.seed}"
    t0 = time.perf_counter()
    pipeline.train("digits", run, n_models=a.models, alpha=a.alpha, seed=a.seed, trainer=a.trainer,
                   trainer_options=options)
    pipeline.TRAIN.note(run)
    if not pipeline.FIT.is_current(run):
        pipeline.FIT.run(run)
    la.run_leakage(run, datamodel_ranking=a.datamodel_ranking)
    families = "default" if a.families is None else tuple(a.families.split(","))
    r = la.run_planted_check(run, a.plant, n_models=a.plant_models or a.models, families=families, seed=a.seed,
                             datamodel_ranking=a.datamodel_ranking)
    ev = pipeline.EVALUATE.run(Path(r["run"]))  # the twin's datamodels (they rank the planted copies): LDS
    seconds = time.perf_counter() - t0
    methods = [m for m in (*la.METHODS, *la.COMBINED) if m in r["methods"]]
    lines = [f"digits {a.trainer}{' ' + ' '.join(a.option) if a.option else ''}, datamodels by {a.datamodel_ranking}, "
             f"α={a.alpha:g}, {a.models} models (twin {a.plant_models or a.models}), {a.plant} planted copies, "
             f"seed {a.seed}; {seconds:.0f} s, load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
             f"({platform.processor() or platform.machine()})",
             f"LDS of the twin's datamodels on {ev.n_subsets} held-out subsets: test targets {_f(ev.test.lds_mean)}, "
             f"train targets {_f(ev.train.lds_mean)} (difference of means: {_f(ev.test.baseline_lds_mean)})",
             "recall@10 (median full rank) per family:",
             f"{'family':12s} {'n':>4s} " + " ".join(f"{m:>16s}" for m in methods)]
    groups = [("all", {"n_planted": r["n_planted"], "methods": r["methods"]})] + list(r.get("by_family", {}).items())
    for name, g in groups:
        cells = []
        for m in methods:
            x = g["methods"].get(m, {})
            rank = x.get("median_full_rank")
            cells.append(f"{x.get('recall_at_k', {}).get('10', float('nan')):.2f}"
                         + (f" ({rank:g})" if rank is not None else "").rjust(9))
        lines.append(f"{name:12s} {g['n_planted']:>4d} " + " ".join(f"{c:>16s}" for c in cells))
    print("\n".join(lines))
    out = Path(a.json) if a.json else Path(os.environ.get("OUT", ".")) / "leakage_families.json"
    out.write_text(json.dumps({"args": vars(a), "seconds": seconds, "load": os.getloadavg()[0],
                               "lds_test": ev.test.lds_mean, "lds_train": ev.train.lds_mean,
                               "methods": r["methods"], "by_family": r.get("by_family"), "table": lines},
                              indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
