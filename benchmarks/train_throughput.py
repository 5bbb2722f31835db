"""Training throughput of the batched CPU trainer on digits: models per second and test accuracy.

Trains ``--models`` subset models at α (default 0.5) in a temporary run with the default recipe
of ``--trainer`` (mlp, the digits default, or cnn), as `audit train digits --trainer T` does, and
prints models/s, the mean test accuracy of the models and the projected time for 5,000 models.

    python benchmarks/train_throughput.py [--models 500] [--alpha 0.5] [--threads 2] [--trainer mlp|cnn]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=500)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--trainer", default="mlp", help="mlp or cnn")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from audit import pipeline

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = pipeline.train("digits", Path(tmp) / "digits", n_models=args.models, alpha=args.alpha,
                           trainer=args.trainer)
        seconds = time.perf_counter() - t0
    rate = s["trained"] / seconds
    print(f"digits {args.trainer}, α={args.alpha}, {torch.get_num_threads()} threads: {s['trained']} models in "
          f"{seconds:.1f} s = {rate:.1f} models/s; mean test accuracy {s['test_accuracy']:.3f}; diverged {s['diverged']}")
    print(f"projected: 5,000 models in {5000 / rate:.0f} s")


if __name__ == "__main__":
    main()
