"""End-to-end GPU smoke test on the CIFAR-format fixture (about a minute on a CUDA machine).

    python benchmarks/gpu_smoke.py [--data cifar10:fixtures/cifar10]

Checks, with the real CUDA path (bf16, channels_last, torch.compile, CUDA streams):
1. a block of models trains and gives finite margins on every target;
2. determinism: the same seeds again give the same logits (reported: max |difference|,
   which GPU nondeterminism may make non-zero), and a model trained alone equals the same
   model trained inside a block;
3. the labels override changes the model;
4. pipeline.train end to end (store, blocks, margins) with trainer resnet9.
Exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.data import load_dataset  # noqa: E402
from audit.training.base import correct_class_margins  # noqa: E402
from audit.training.gpu import make_gpu_trainer  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="cifar10:fixtures/cifar10")
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA here")
        return 2
    ds = load_dataset(args.data)
    print(f"device {torch.cuda.get_device_name(0)}, torch {torch.__version__}; {ds.spec}: {ds.n_train} train, "
          f"{ds.n_test} test", flush=True)
    opts = dict(epochs=args.epochs, batch_size=16, lr=0.2, concurrent=4)
    trainer = make_gpu_trainer("resnet9", **opts)
    rng = np.random.default_rng(0)
    masks = np.zeros((6, ds.n_train), dtype=bool)
    for m in masks:
        m[rng.choice(ds.n_train, ds.n_train // 2, replace=False)] = True
    seeds = [11, 12, 13, 14, 15, 16]
    failures = []

    t = time.perf_counter()
    models = trainer.train_block(ds, masks, seeds)
    logits = models.logits(ds.targets_x())
    t1 = time.perf_counter() - t
    margins = correct_class_margins(logits, ds.targets_y())
    acc = (margins[:, ds.n_train:] > 0).mean(1)
    print(f"1. block of 6 (4 at once) trained + evaluated in {t1:.1f}s (incl. compile); margins finite: "
          f"{np.isfinite(margins).all()}; test acc per model {np.round(acc, 2).tolist()}", flush=True)
    if not np.isfinite(margins).all():
        failures.append("non-finite margins")

    t = time.perf_counter()
    again = trainer.train_block(ds, masks, seeds).logits(ds.targets_x())
    t2 = time.perf_counter() - t
    diff_same = float(np.abs(again - logits).max())
    alone = trainer.train_block(ds, masks[4:5], seeds[4:5]).logits(ds.targets_x())
    diff_alone = float(np.abs(alone[0] - logits[4]).max())
    scale = float(np.abs(logits).max())
    print(f"2. same seeds again ({t2:.1f}s, compiled): max |logit diff| {diff_same:.3g}; model 5 trained alone vs "
          f"in the block: {diff_alone:.3g} (logit scale {scale:.3g})", flush=True)
    if diff_same > 0.05 * scale or diff_alone > 0.05 * scale:
        failures.append("models differ beyond GPU nondeterminism")

    labels = np.broadcast_to(ds.y_train, masks[:1].shape).copy()
    labels[0, masks[0]] = (labels[0, masks[0]] + 1) % ds.n_classes
    flipped = trainer.train_block(ds, masks[:1], seeds[:1], labels=labels).logits(ds.targets_x())
    diff_labels = float(np.abs(flipped[0] - logits[0]).max())
    print(f"3. labels override: max |logit diff| {diff_labels:.3g}", flush=True)
    if diff_labels <= max(diff_same, 1e-6) * 2:
        failures.append("labels override did not change the model")

    from audit import pipeline

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        summary = pipeline.train(args.data, Path(tmp) / "run", n_models=8, block_size=4, trainer="resnet9",
                                 trainer_options=opts, dataset=ds)
        print(f"4. pipeline.train: {summary['trained']}/{summary['n_models']} models, {summary['diverged']} diverged, "
              f"test accuracy {summary['test_accuracy']:.3f}, {time.perf_counter() - t:.1f}s", flush=True)
        if summary["trained"] != 8 or summary["diverged"]:
            failures.append("pipeline run incomplete")
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print("gpu_smoke: " + ("OK" if not failures else "FAILED: " + "; ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
