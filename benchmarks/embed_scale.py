"""Datamodel embeddings at CIFAR width: PCA and spectral clustering of a synthetic sparse weight matrix.

    python benchmarks/embed_scale.py [--rows 10000] [--width 50000] [--density 0.01] [--fit 8000]
                                     [--components 100] [--cluster 2000] [--memory-gb 4]

Writes a ``rows × width`` float32 weight matrix (LASSO-like: ``density`` of each row non-zero)
to a memory-mapped file in a temporary folder, then runs what ``audit embed`` runs on it under
the memory rule of ``audit/audits/embed.py``: reads the first ``--fit`` rows a chunk at a time
into a CSR matrix (the dense branch does not apply at this width), fits the top ``--components``
principal components (ARPACK), projects the fitted rows (in memory) and the other rows (read a chunk at a time), and clusters the first
``--cluster`` projected rows (spectral, RBF). Prints each phase's seconds, the peak RSS and the
load average (peak RSS includes the pages of the memory-mapped file; the anonymous
memory after each phase is what the audit itself holds). Nothing is written outside the temporary folder.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from audit.audits import embed as E


def synthetic_weights(path: Path, rows: int, width: int, density: float, seed: int = 0) -> np.memmap:
    """A memory-mapped ``rows × width`` float32 matrix with ``density`` of each row non-zero."""
    w = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, width))
    rng = np.random.default_rng(seed)
    per_row = max(1, int(density * width))
    for start in range(0, rows, 1000):
        n = min(1000, rows - start)
        block = np.zeros((n, width), np.float32)
        cols = rng.integers(0, width, size=(n, per_row))
        np.put_along_axis(block, cols, rng.normal(size=(n, per_row)).astype(np.float32), axis=1)
        w[start:start + n] = block
    w.flush()
    return np.load(path, mmap_mode="r")


def memory_gb() -> tuple[float, float]:
    """(anonymous, file-backed) resident memory now, from /proc/self/status (Linux), in GB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1e6
    return fields.get("RssAnon", float("nan")), fields.get("RssFile", float("nan"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--width", type=int, default=50_000)
    ap.add_argument("--density", type=float, default=0.01)
    ap.add_argument("--fit", type=int, default=8_000, help="rows the PCA is fitted on (the rest: 'test' rows)")
    ap.add_argument("--components", type=int, default=100)
    ap.add_argument("--cluster", type=int, default=2_000, help="projected rows clustered (0: no clustering)")
    ap.add_argument("--memory-gb", type=float, default=4.0)
    a = ap.parse_args()
    budget = a.memory_gb * 1e9
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        w = synthetic_weights(Path(tmp) / "weights.npy", a.rows, a.width, a.density)
        t_write = time.perf_counter() - t0
        dense = E.dense_fits(a.fit, a.width, budget)
        t0 = time.perf_counter()
        x, zeros = E.read_embeddings(w, np.arange(a.fit), budget, dense=dense)
        t_read = time.perf_counter() - t0
        anon = [memory_gb()[0]]
        t0 = time.perf_counter()
        pca, exact = E.fit_pca(x, a.components, 0)
        t_fit = time.perf_counter() - t0
        anon.append(memory_gb()[0])
        nnz = x.size if dense else x.nnz
        t0 = time.perf_counter()
        keep = min(a.components, len(pca.components_))
        coords = np.concatenate([E.coordinates(pca, x, keep), E.project(pca, w, np.arange(a.fit, a.rows), keep)[0]])
        del x
        t_proj = time.perf_counter() - t0
        anon.append(memory_gb()[0])
        t_cluster = 0.0
        if a.cluster:
            t0 = time.perf_counter()
            ids, _ = E.spectral_clusters(coords[:a.cluster], 10, 0, budget)
            t_cluster = time.perf_counter() - t0
            anon.append(memory_gb()[0])
        spec = E.spectrum(pca, a.fit, a.width, exact)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"embeddings {a.rows:,} × {a.width:,} float32 ({a.rows * a.width * 4 / 1e9:.1f} GB memory-mapped), "
          f"{a.density:.1%} non-zero; PCA fitted on {a.fit:,} rows ({'dense' if dense else 'CSR'}, {nnz:,} values), "
          f"budget {a.memory_gb:g} GB")
    print(f"write {t_write:.1f} s (not part of the audit); read + normalise {t_read:.1f} s; "
          f"PCA ({'exact' if exact else 'ARPACK'}, {spec.computed} components) {t_fit:.1f} s; "
          f"project {a.rows:,} rows {t_proj:.1f} s; spectral clustering of {a.cluster:,} rows {t_cluster:.1f} s; "
          f"audit total {t_read + t_fit + t_proj + t_cluster:.1f} s")
    print(f"peak RSS {rss_gb:.2f} GB (it counts the memory-mapped file's pages: reclaimable page cache); anonymous "
          f"memory after each phase {', '.join(f'{v:.2f}' for v in anon)} GB; load average {load} on {os.cpu_count()} CPUs; "
          f"top {spec.computed} components hold {sum(spec.ratios):.1%} of the variance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
