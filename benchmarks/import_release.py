"""Time `audit import` + `audit evaluate` + `audit influence` + `audit report` on a synthetic release.

    python benchmarks/import_release.py OUT [--n-train 2000 --n-test 500 --models 3000 --eval-models 500]

Writes a random npz dataset (32x32x3 images, 10 classes) and a release in the published layout
(fixtures/make_release.py) at the stated size into OUT (never committed); runs the steps in
a second call (the release is there) and prints each one's seconds and the peak RSS (resource.getrusage,
max RSS of that process, which does nothing else).
The leakage audit is not timed: on an imported run it needs full-data reference models.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import shutil
import time
from pathlib import Path

import numpy as np

from audit import pipeline
from audit.audits.influence import INFLUENCE
from audit.reports.render import render_report
from audit.release_import import import_release

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--models", type=int, default=3000, help="all models, the evaluation models included")
    parser.add_argument("--eval-models", type=int, default=500)
    parser.add_argument("--memory-gb", type=float, default=None)
    a = parser.parse_args()
    spec = importlib.util.spec_from_file_location("make_release", HERE.parent / "fixtures" / "make_release.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    data = a.out / "data.npz"
    if (a.out / "release").exists():  # written by an earlier call: measure the steps alone
        run_steps(a, data)
        return
    rng = np.random.default_rng(0)
    a.out.mkdir(parents=True, exist_ok=True)
    np.savez(data, x_train=rng.integers(0, 256, (a.n_train, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(a.n_train) % 10, x_test=rng.integers(0, 256, (a.n_test, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(a.n_test) % 10)
    t0 = time.perf_counter()
    maker.write_release(a.out / "release", n_train=a.n_train, n_test=a.n_test, n_models=a.models, logits=False)
    print(f"write release: {time.perf_counter() - t0:.1f}s (run again to time the steps in a fresh process)")


def run_steps(a: argparse.Namespace, data: Path) -> None:
    """Import the release into OUT/run (made anew) and time each step; the peak RSS of this process."""
    run_dir = a.out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"start (python, numpy, torch loaded): peak RSS {peak_gib():.2f} GiB")
    steps = [("import", lambda: import_release(a.out / "release", f"npz:{data}", run_dir, eval_models=a.eval_models)),
             ("evaluate", lambda: pipeline.EVALUATE.run(run_dir, pipeline.EvaluateConfig(memory_gb=a.memory_gb))),
             ("influence", lambda: INFLUENCE.run(run_dir)), ("report", lambda: render_report(run_dir))]
    for name, step in steps:
        t0 = time.perf_counter()
        step()
        print(f"{name}: {time.perf_counter() - t0:.1f}s, peak RSS so far {peak_gib():.2f} GiB")


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


if __name__ == "__main__":
    main()
