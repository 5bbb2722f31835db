"""Time `audit import` + `audit evaluate` + `audit leakage` + `audit influence` + `audit report` on a synthetic release.

    python benchmarks/import_release.py OUT [--n-train 2000 --n-test 500 --models 3000 --eval-models 500]
    python benchmarks/import_release.py OUT --cifar10     # the full CIFAR-10 shape: 50,000 + 10,000 targets,
                                                          # 20,000 + 10,000 models (about 17 GB in OUT)

Writes a random npz dataset (32x32x3 images, 10 classes), random features [N_train + N_test, 512] for
the leakage audit's representation baseline (`--features`: an imported run has no reference models)
and a release in the published layout (fixtures/make_release.py, written a block of models at a time)
at the stated size into OUT (never committed); runs the steps in a second call (the release is there)
and prints each one's seconds and the peak RSS (resource.getrusage, max RSS of that process, which does
nothing else; the memory-mapped release pages it reads count in it).
"""

from __future__ import annotations

import argparse
import os
import importlib.util
import resource
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from audit import pipeline
from audit.audits.influence import INFLUENCE
from audit.audits.leakage_audit import LEAKAGE, LeakageConfig
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
    parser.add_argument("--cifar10", action="store_true", help="the full CIFAR-10 shape (sets the four sizes)")
    a = parser.parse_args()
    if a.cifar10:
        a.n_train, a.n_test, a.models, a.eval_models = 50000, 10000, 30000, 10000
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
    np.save(a.out / "features.npy", rng.normal(0.0, 1.0, (a.n_train + a.n_test, 512)).astype(np.float32))
    t0 = time.perf_counter()
    maker.write_release(a.out / "release", n_train=a.n_train, n_test=a.n_test, n_models=a.models, logits=False,
                        dense=False)
    print(f"write release: {time.perf_counter() - t0:.1f}s (run again to time the steps in a fresh process)")


def run_steps(a: argparse.Namespace, data: Path) -> None:
    """Import the release into OUT/run (made anew) and time each step; the peak RSS of this process."""
    run_dir = a.out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"start (python, numpy, torch loaded): peak RSS {peak_gib():.2f} GiB")
    steps = [("import", lambda: import_release(a.out / "release", f"npz:{data}", run_dir, eval_models=a.eval_models)),
             ("evaluate", lambda: pipeline.EVALUATE.run(run_dir, pipeline.EvaluateConfig(memory_gb=a.memory_gb))),
             ("leakage", lambda: LEAKAGE.run(run_dir, LeakageConfig(features=str(a.out / "features.npy")))),
             ("influence", lambda: INFLUENCE.run(run_dir)), ("report", lambda: render_report(run_dir))]
    anon = AnonymousPeak()
    for name, step in steps:
        t0 = time.perf_counter()
        anon.peak = 0.0
        step()
        print(f"{name}: {time.perf_counter() - t0:.1f}s, peak RSS so far {peak_gib():.2f} GiB "
              f"(anonymous memory peak in this step {anon.peak:.2f} GiB; load average {os.getloadavg()[0]:.1f})")


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class AnonymousPeak:
    """The peak of RssAnon (/proc/self/status: memory that is not a file's pages), sampled every 0.2 s: what
    the process needs, while RSS also counts the memory-mapped release pages the kernel may drop."""

    def __init__(self) -> None:
        self.peak = 0.0
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            with open("/proc/self/status") as f:
                kib = next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
            self.peak = max(self.peak, kib / 2**20)
            time.sleep(0.2)


if __name__ == "__main__":
    main()
