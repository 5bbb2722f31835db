"""Which datamodel ranking finds the smaller supports: largest weights or nearest datamodel embeddings.

Runs the support search (`audit mislabel` and `audit brittleness`) on a fitted run twice, once per
`--datamodel-ranking` (weights, embedding), beside the representation and random rankings, and prints
each ranking's fraction certified and median certified support (the run's own result files are put
back). Without --run it trains and fits `audit run digits`' models first (5,000 MLPs at α = 0.5;
--models to change). Writes $OUT/support_rankings.json (or --json).

    python benchmarks/support_rankings.py [--run RUN] [--models 5000] [--n 100] [--seed 0] [--T 2]
        [--modes relabel,remove]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit import pipeline  # noqa: E402
from audit.audits.support import run_brittleness  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="a fitted run (default: train and fit digits in a temporary folder)")
    ap.add_argument("--models", type=int, default=5000)
    ap.add_argument("--n", type=int, default=100, help="test targets (class-balanced sample of --seed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--T", type=int, default=None)
    ap.add_argument("--modes", default="relabel,remove")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    run = Path(a.run) if a.run else Path(tempfile.mkdtemp(prefix="support-rankings-")) / "digits"
    if a.run is None:
        pipeline.train("digits", run, n_models=a.models)
        pipeline.FIT.run(run)
    saved = run / "audits"
    results, lines = [], []
    for mode in a.modes.split(","):
        name = "mislabel" if mode == "relabel" else "brittleness"
        files = [saved / f"{name}.json", saved / f"{name}.csv"]
        backups = {f: f.with_name(f.name + ".keep") for f in files if f.exists()}
        for f, b in backups.items():  # the run's own result is put back afterwards (or none left, if it had none)
            shutil.copy2(f, b)
        try:
            for ranking in ("weights", "embedding"):
                t0 = time.perf_counter()
                s = run_brittleness(run, mode=mode, n=a.n, T=a.T, seed=a.seed, datamodel_ranking=ranking)
                row = {"mode": mode, "datamodel_ranking": ranking, "seconds": time.perf_counter() - t0,
                       "load": os.getloadavg()[0],
                       "per_method": {m: {"certified": r["fraction_certified"],
                                          "median_support": r["median_certified_support_label"]}
                                      for m, r in s["per_method"].items()},
                       "verdict": (s.get("verdict") or {}).get("text")}
                results.append(row)
                cells = "  ".join(f"{m} {v['certified']:.2f} / {v['median_support']}"
                                  for m, v in row["per_method"].items())
                lines.append(f"{mode:8s} datamodels by {ranking:9s}: {cells}  ({row['seconds']:.0f} s, "
                             f"load {row['load']:.1f})")
                print(lines[-1], flush=True)
        finally:
            for f in files:
                if f in backups:
                    shutil.move(backups[f], f)
                else:
                    f.unlink(missing_ok=True)
    out = Path(a.json) if a.json else Path(os.environ.get("OUT", ".")) / "support_rankings.json"
    out.write_text(json.dumps({"args": vars(a), "run": str(run), "results": results, "table": lines}, indent=2,
                              default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
