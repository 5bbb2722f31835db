"""End-to-end GPU smoke test on a few hundred CIFAR-format images (about a minute on a CUDA machine).

    python benchmarks/gpu_smoke.py                       # writes 500 + 100 fixture-style images to a temp folder
    python benchmarks/gpu_smoke.py --data cifar10:DIR    # or any cifar10 / fmow spec

The default data is written in the real CIFAR-10 python-pickle format with the generator
of fixtures/make_fixtures.py (class colours + stripes + noise: learnable), and read back by
the cifar10 loader. Checks, on the real CUDA path (bf16, channels_last, torch.compile, CUDA
streams and graphs):
1. a block of models trains and gives finite margins on every target, above-chance accuracy;
2. determinism: the same seeds again give the same logits (reported: max |difference|,
   which GPU nondeterminism may make non-zero), and a model trained alone equals the same
   model trained inside a block (up to the same tolerance);
3. the labels override changes the model;
4. pipeline.train end to end (store, blocks, margins) with the resnet9 trainer;
5. the Ray engine on a local Ray instance with one GPU per task gives the local engine's
   margins (up to GPU nondeterminism); skipped without ray.
Exits 0 when every check passes, 1 when one fails, 2 without CUDA.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.data import load_dataset  # noqa: E402
from audit.training.base import correct_class_margins  # noqa: E402


def write_cifar_format(folder: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A cifar-10-batches-py folder of ``n_train`` (5 batches) + ``n_test`` fixture-style images."""
    sys.path.insert(0, str(ROOT / "fixtures"))
    import make_fixtures as mf

    rng = np.random.default_rng(seed)
    out = folder / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    per_batch = n_train // 5
    labels = rng.permutation(np.arange(5 * per_batch) % 10)
    for b in range(5):
        lab = labels[b * per_batch:(b + 1) * per_batch]
        mf.write_pickle(out / f"data_batch_{b + 1}", {b"batch_label": f"training batch {b + 1} of 5".encode(),
                                                     b"labels": [int(c) for c in lab], b"data": mf.cifar_rows(lab, rng),
                                                     b"filenames": [b"x.png"] * len(lab)})
    test = rng.permutation(np.arange(n_test) % 10)
    mf.write_pickle(out / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": [int(c) for c in test],
                                         b"data": mf.cifar_rows(test, rng), b"filenames": [b"x.png"] * n_test})
    mf.write_pickle(out / "batches.meta", {b"num_cases_per_batch": per_batch,
                                           b"label_names": [n.encode() for n in mf.CIFAR_CLASSES], b"num_vis": 3072})
    return folder


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a dataset spec (default: fixture-style CIFAR-format images in a temp folder)")
    p.add_argument("--n-train", type=int, default=500)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--no-ray", action="store_true", help="skip check 5")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print(f"gpu_smoke: needs a CUDA GPU and torch {torch.__version__} sees none here; run it on a GPU machine",
              file=sys.stderr)
        return 2
    from audit.training.gpu import make_gpu_trainer

    tmp = tempfile.TemporaryDirectory()
    spec = args.data or f"cifar10:{write_cifar_format(Path(tmp.name) / 'cifar', args.n_train, args.n_test)}"
    ds = load_dataset(spec)
    print(f"device {torch.cuda.get_device_name(0)}, torch {torch.__version__}; {spec}: {ds.n_train} train, "
          f"{ds.n_test} test", flush=True)
    name = "resnet18" if spec.startswith("fmow") else "resnet9"
    opts = dict(epochs=args.epochs, batch_size=64, lr=0.2, concurrent=4)
    trainer = make_gpu_trainer(name, **opts)
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
    print(f"1. block of 6 ({opts['concurrent']} at once) trained + evaluated in {t1:.1f}s (incl. compile); margins "
          f"finite: {np.isfinite(margins).all()}; test acc per model {np.round(acc, 2).tolist()}", flush=True)
    if not np.isfinite(margins).all():
        failures.append("non-finite margins")
    if acc.mean() <= 2.0 / ds.n_classes:
        failures.append(f"test accuracy {acc.mean():.2f} is near chance")

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

    with tempfile.TemporaryDirectory() as runs:
        t = time.perf_counter()
        local = pipeline.train(spec, Path(runs) / "local", n_models=8, block_size=4, trainer=name,
                               trainer_options=opts, dataset=ds)
        print(f"4. pipeline.train: {local['trained']}/{local['n_models']} models, {local['diverged']} diverged, "
              f"test accuracy {local['test_accuracy']:.3f}, {time.perf_counter() - t:.1f}s", flush=True)
        if local["trained"] != 8 or local["diverged"]:
            failures.append("pipeline run incomplete")
        failures += ray_check(spec, ds, name, opts, Path(runs), args.no_ray)
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print("gpu_smoke: " + ("OK" if not failures else "FAILED: " + "; ".join(failures)))
    tmp.cleanup()
    return 1 if failures else 0


def ray_check(spec: str, ds, name: str, opts: dict, runs: Path, skip: bool) -> list[str]:
    """Check 5: the Ray engine (one GPU per task) against the local engine's run in ``runs/local``."""
    try:
        import ray
    except ImportError:
        skip = True
    if skip:
        print("5. ray engine: skipped", flush=True)
        return []
    from audit import pipeline
    from audit.store import RunStore

    t = time.perf_counter()
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = pipeline.train(spec, runs / "ray", n_models=8, block_size=4, trainer=name, trainer_options=opts,
                                dataset=ds, engine="ray")
    finally:
        ray.shutdown()
    a, b = RunStore.open(runs / "local", writable=False), RunStore.open(runs / "ray", writable=False)
    same_masks = np.array_equal(np.asarray(a.masks), np.asarray(b.masks))
    ma, mb = np.asarray(a.margins), np.asarray(b.margins)
    diff = float(np.nanmax(np.abs(ma - mb)))
    scale = float(np.nanmax(np.abs(ma)))
    print(f"5. ray engine (1 GPU per task): {remote['trained']}/8 models in {time.perf_counter() - t:.1f}s; masks "
          f"equal: {same_masks}; max |margin diff| vs local {diff:.3g} (scale {scale:.3g})", flush=True)
    if remote["trained"] != 8 or not same_masks or not diff <= 0.05 * scale:
        return ["ray engine differs from the local engine"]
    return []


if __name__ == "__main__":
    sys.exit(main())
