"""Streamed `audit fit` versus the dense path: peak memory, time and objective on one problem.

Writes a synthetic run-sized problem to disk (never committed): masks bool [M, N] and margins
float16 [M, N + N_test] as .npy files (the release's dtypes), margins = a sparse linear model of
the masks + noise. Then fits the same targets twice, each in a fresh subprocess:

- dense: masks and margins loaded whole into memory (float32 margins), the default budget
  (the masks are held on the device as float32), as `audit fit` did before it streamed;
- streamed: the .npy files memory-mapped and ``--memory-gb`` (the masks held as uint8 and
  converted a block of models at a time, or read from the file per block when even that does
  not fit; the margins read a block of targets at a time).

Fitting every target at 20,000 x 5,000 takes hours on 2 cores, so ``--targets K`` fits the first
K train targets and the first K test targets (the same on both paths). Prints for each path the
seconds, the peak RSS of its process (ru_maxrss) and the masks' form; then the worst relative
difference of the Lasso objective per target (each target on its own rows and its λ) and the
worst absolute weight difference. Writes $OUT/fit_streamed.json (or --json).

    python benchmarks/fit_streamed.py [--models 20000] [--n-train 5000] [--n-test 1000] [--targets 100]
        [--memory-gb 1.0] [--dir DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_problem(folder: Path, m: int, n: int, n_test: int, seed: int = 0, per_target: int = 20) -> None:
    """masks.npy (bool, exactly n/2 per model) and margins.npy (float16), written a block of models at a time."""
    from scipy import sparse

    if (folder / "margins.npy").exists():
        return
    rng = np.random.default_rng(seed)
    T = n + n_test
    cols = np.concatenate([rng.choice(n, per_target, replace=False) for _ in range(T)])
    W = sparse.csr_matrix((rng.normal(0, 0.3, T * per_target).astype(np.float32),
                           (np.repeat(np.arange(T), per_target), cols)), shape=(T, n))
    masks = np.lib.format.open_memmap(folder / "masks.npy", mode="w+", dtype=bool, shape=(m, n))
    margins = np.lib.format.open_memmap(folder / "margins.tmp.npy", mode="w+", dtype=np.float16, shape=(m, T))
    for a in range(0, m, 2000):
        b = min(m, a + 2000)
        block = np.zeros((b - a, n), bool)
        np.put_along_axis(block, np.argsort(rng.random((b - a, n)), axis=1)[:, : n // 2], True, axis=1)
        masks[a:b] = block
        y = np.asarray((W @ block.T.astype(np.float32)).T) + 2.0 + rng.normal(0, 1.0, (b - a, T))
        y[:, :n] += 3.0 * block  # a train target's own presence: what eq. 9 leaves out
        margins[a:b] = y.astype(np.float16)
    masks.flush()
    margins.flush()
    del masks, margins
    os.replace(folder / "margins.tmp.npy", folder / "margins.npy")


def child(folder: Path, mode: str, targets: int, memory_gb: float, out: Path) -> None:
    """Fit the first ``targets`` train and test targets on one path; save weights, bias, λ and figures."""
    from audit.datamodels import fit_datamodels

    masks = np.load(folder / "masks.npy", mmap_mode="r")
    margins = np.load(folder / "margins.npy", mmap_mode="r")
    n = masks.shape[1]
    kwargs: dict = {}
    if mode == "dense":
        masks, margins = np.asarray(masks), np.asarray(margins, dtype=np.float32)
    else:
        kwargs["memory_gb"] = memory_gb
    t0 = time.perf_counter()
    parts = [fit_datamodels(masks, margins, n, targets=s, **kwargs)
             for s in (slice(0, targets), slice(n, n + targets))]
    seconds = time.perf_counter() - t0
    np.savez(out, weights=np.concatenate([p.weights for p in parts]), bias=np.concatenate([p.bias for p in parts]),
             lam=np.concatenate([p.lam for p in parts]))
    info = parts[0].info
    print(json.dumps({"seconds": round(seconds, 1), "peak_rss_gb": round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3), "masks_held_as": info["masks_held_as"],
        "chunk_size": info["chunk_size"], "memory_budget_gb": info["memory_budget_gb"]}))


def objectives(folder: Path, fitted: dict, targets: int) -> np.ndarray:
    """Each fitted target's Lasso objective on its own rows (float64 per block of models)."""
    import torch

    masks = np.load(folder / "masks.npy", mmap_mode="r")
    margins = np.load(folder / "margins.npy", mmap_mode="r")
    n = masks.shape[1]
    cols = np.r_[np.arange(targets), np.arange(n, n + targets)]
    W = torch.as_tensor(fitted["weights"], dtype=torch.float64)
    sq, cnt = torch.zeros(len(cols), dtype=torch.float64), torch.zeros(len(cols), dtype=torch.float64)
    for a in range(0, masks.shape[0], 2000):
        x = torch.as_tensor(np.asarray(masks[a:a + 2000], dtype=np.float64))
        y = torch.as_tensor(np.asarray(margins[a:a + 2000][:, cols], dtype=np.float64))
        keep = torch.ones_like(y)
        keep[:, :targets] = 1.0 - x[:, :targets]  # eq. 9: a train target's rows exclude it
        r = (y - x @ W.T - torch.as_tensor(fitted["bias"], dtype=torch.float64)) * keep
        sq += (r * r).sum(0)
        cnt += keep.sum(0)
    return (sq / (2 * cnt) + torch.as_tensor(fitted["lam"], dtype=torch.float64) * W.abs().sum(1)).numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=20000)
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--targets", type=int, default=100, help="train targets and test targets fitted (each)")
    ap.add_argument("--memory-gb", type=float, default=1.0, help="the streamed path's budget")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", default=None, help="where the problem's .npy files go (kept for reruns)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs=3, metavar=("DIR", "MODE", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        import torch

        torch.set_num_threads(a.threads)
        child(Path(a.child[0]), a.child[1], a.targets, a.memory_gb, Path(a.child[2]))
        return 0
    folder = Path(a.dir or tempfile.mkdtemp(prefix="fit-streamed-"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    make_problem(folder, a.models, a.n_train, a.n_test)
    print(f"problem: {a.models} models x {a.n_train} train (+{a.n_test} test) in {folder} "
          f"({time.perf_counter() - t0:.0f}s to write); fitting {a.targets} train + {a.targets} test targets")
    results, fitted = {}, {}
    for mode in ("dense", "streamed"):
        out = folder / f"{mode}.npz"
        proc = subprocess.run([sys.executable, __file__, "--child", str(folder), mode, str(out), "--targets",
                               str(a.targets), "--memory-gb", str(a.memory_gb), "--threads", str(a.threads)],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
        if proc.returncode:
            print(proc.stderr[-3000:])
            return 1
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        with np.load(out) as z:
            fitted[mode] = {k: z[k] for k in z.files}
        r = results[mode]
        print(f"{mode:>9}: {r['seconds']:7.1f}s  peak RSS {r['peak_rss_gb']:.2f} GB  masks held as "
              f"{r['masks_held_as']}, {r['chunk_size']} targets per block (budget {r['memory_budget_gb']} GB)")
    od, os_ = objectives(folder, fitted["dense"], a.targets), objectives(folder, fitted["streamed"], a.targets)
    rel = float(np.max(np.abs(od - os_) / od))
    dw = float(np.max(np.abs(fitted["dense"]["weights"] - fitted["streamed"]["weights"])))
    print(f"objective: worst relative difference {rel:.2e}; weights: worst absolute difference {dw:.2e}; "
          f"time streamed / dense {results['streamed']['seconds'] / results['dense']['seconds']:.2f}")
    summary = {"models": a.models, "n_train": a.n_train, "n_test": a.n_test, "targets_each": a.targets,
               "threads": a.threads, "results": results, "objective_rel_diff_max": rel, "weights_abs_diff_max": dw,
               "load_average": os.getloadavg(), "machine": platform.processor() or platform.machine()}
    path = Path(a.json or Path(os.environ.get("OUT", folder)) / "fit_streamed.json")
    path.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
