"""Decoding a CIFAR-sized image folder: cold (hash + decode + write the cache) and cached.

    python benchmarks/decode_images.py [--n 60000] [--size 32] [--cores 2] [--dir DIR]

Writes ``--n`` PNGs of ``--size``x``--size`` RGB pixels (CIFAR-like: smooth colour fields plus
noise, 10 classes, 5/6 train and 1/6 test) as ``folder:`` layout in a temporary folder (or
``--dir``, reused when it already holds them), pins this process to ``--cores`` CPUs, points
``$AUDIT_DATA`` at a temporary folder, and times ``load_dataset("folder:DIR")``:

* cold, 1 thread: hashing + decoding on one thread + writing the decoded-array cache;
* cold, ``--cores`` threads: the same on the thread pool (the default);
* cached: a second load (hashing the files and reading the cache; no decoding).

Prints one line per measurement (seconds and images/s), the machine's CPU count and the
1-minute load average before and after: the machine may be shared, so quote the load.
Exits non-zero if any load gives other arrays than the first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_images(root: Path, n: int, size: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        split = "test" if i % 6 == 5 else "train"
        label = i % 10
        folder = root / split / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(0, 255, size=(3, 3))
        img = a[None, None, :] * (1 - yy[..., None]) + b[None, None, :] * xx[..., None] * 0.5 + c[None, None, :] * 0.3
        img = img + rng.normal(0, 10, size=img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="image folder to (re)use instead of a temporary one")
    args = parser.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus[:args.cores])
    work = Path(tempfile.mkdtemp(prefix="decode-bench-"))
    os.environ["AUDIT_DATA"] = str(work / "data")
    from audit.data import decode, load_dataset

    root = args.dir or work / "images"
    if not (root / "test").is_dir():
        start = time.perf_counter()
        write_images(root, args.n, args.size)
        print(f"wrote {args.n:,} {args.size}x{args.size} PNGs to {root} in {time.perf_counter() - start:.1f}s "
              f"({sum(p.stat().st_size for p in root.rglob('*.png')) / 2**20:.0f} MiB)")
    spec = f"folder:{root}"
    print(f"machine: {os.cpu_count()} CPUs, this process pinned to {len(os.sched_getaffinity(0))}; "
          f"load average (1 min) before: {os.getloadavg()[0]:.2f}")
    reference = None
    ok = True
    try:
        for name, workers, clear in (("cold, 1 thread", 1, True), (f"cold, {args.cores} threads", None, True),
                                     ("cached", None, False)):
            if clear:
                shutil.rmtree(decode.cache_dir(), ignore_errors=True)
            original = decode.n_workers
            if workers is not None:
                decode.n_workers = lambda: workers  # type: ignore[assignment]
            try:
                start = time.perf_counter()
                ds = load_dataset(spec)
                seconds = time.perf_counter() - start
            finally:
                decode.n_workers = original  # type: ignore[assignment]
            n = ds.n_train + ds.n_test
            print(f"{name:>18}: {seconds:7.2f} s  ({n / seconds:9,.0f} images/s)  x_train {ds.x_train.shape}")
            if reference is None:
                reference = ds.fingerprint()
            elif ds.fingerprint() != reference:
                print(f"{name}: arrays differ from the first load", file=sys.stderr)
                ok = False
    finally:
        print(f"load average (1 min) after: {os.getloadavg()[0]:.2f}")
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
