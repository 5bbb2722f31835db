"""Throughput (and, given real CIFAR-10, accuracy) of the GPU trainers.

    python benchmarks/train_gpu.py                       # throughput on CIFAR-shaped random data
    python benchmarks/train_gpu.py --cifar DIR --acc-models 8   # + mean test accuracy at alpha

Throughput: each setting trains ``concurrent`` models for ``--epochs`` epochs on a
CIFAR-10-sized random set (50,000 x 32x32x3 uint8, 10 classes; alpha=0.5 -> 25,000 per
model), timed after a warm-up that compiles. Seconds per model = measured seconds per
model-epoch x the recipe's epochs + the measured time for margins on all 60,000 targets
(flip TTA). Reported as models per hour and per GPU-day, next to the paper's 5,000 per
A100-day. GPU utilisation is nvidia-smi's mean utilisation.gpu sampled every 0.2 s during
the timed runs; memory is torch's peak allocation. Random data says nothing about accuracy:
that needs the real CIFAR-10 folder (``--cifar``).
FMoW: ResNet-18 at 224x224 on random data (a few thousand images), scaled to the 2012
split (21,404 train / 3,138 test, alpha=0.5, 15 epochs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.data.dataset import Dataset  # noqa: E402
from audit.training.base import correct_class_margins  # noqa: E402
from audit.training.gpu import RECIPES, make_gpu_trainer  # noqa: E402

PAPER_MODELS_PER_DAY = 5000  # A100, paper


class GpuSampler:
    """nvidia-smi utilisation.gpu / memory.used sampled in a thread."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.samples, self._stop = interval, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                util, mem = out.stdout.strip().splitlines()[0].split(",")
                self.samples.append((float(util), float(mem)))
            except Exception:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "GpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        if not self.samples:
            return {"util_mean": None, "util_max": None, "smi_mem_max_mib": None}
        u = np.array([s[0] for s in self.samples])
        return {"util_mean": round(float(u.mean()), 1), "util_max": float(u.max()),
                "smi_mem_max_mib": float(max(s[1] for s in self.samples))}


def random_dataset(n_train: int, n_test: int, size: int, n_classes: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(spec="random", x_train=rng.integers(0, 256, (n_train, size, size, 3), dtype=np.uint8),
                   y_train=rng.integers(0, n_classes, n_train), x_test=rng.integers(0, 256, (n_test, size, size, 3),
                                                                                      dtype=np.uint8),
                   y_test=rng.integers(0, n_classes, n_test), classes=tuple(str(i) for i in range(n_classes)))


def masks_for(n_models: int, n_train: int, alpha: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_models, n_train), dtype=bool)
    for m in masks:
        m[rng.choice(n_train, int(math.floor(alpha * n_train)), replace=False)] = True
    return masks


def prepare_slots(trainer, ds: Dataset) -> float:
    """Upload the data and build (capture) the trainer's slots outside the timed region:
    a one-off cost per trainer and dataset, reported separately."""
    t = time.perf_counter()
    data = trainer._data(ds)
    bf16 = trainer.device.type == "cuda" and trainer.cfg.precision == "bf16"
    trainer._get_slots(data, ds.n_classes, ds.n_train, trainer.cfg.concurrent, bf16)
    torch.cuda.synchronize()
    return time.perf_counter() - t


def timed_block(trainer, ds: Dataset, n_models: int, alpha: float, eval_x: np.ndarray | None) -> dict:
    masks = masks_for(n_models, ds.n_train, alpha, 1)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with GpuSampler() as smi:
        t0 = time.perf_counter()
        models = trainer.train_block(ds, masks, list(range(100, 100 + n_models)))
        torch.cuda.synchronize()
        t_train = time.perf_counter() - t0
        t_eval = None
        if eval_x is not None:
            t1 = time.perf_counter()
            logits = models.logits(eval_x)
            t_eval = time.perf_counter() - t1
            assert np.isfinite(logits).all()
    return {"train_s": t_train, "eval_s": t_eval, "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
            **smi.summary()}


def bench_resnet9(args, out: dict) -> None:
    ds = random_dataset(50_000, 10_000, 32, 10)
    targets = ds.targets_x()
    alpha, e = args.alpha, args.epochs
    print(f"== resnet9 on CIFAR-shaped random data: {ds.n_train} train, alpha={alpha}, timing {e} epochs", flush=True)
    t = time.perf_counter()
    warm = make_gpu_trainer("resnet9", epochs=1, concurrent=1)
    warm.train_block(ds, masks_for(1, ds.n_train, alpha, 0), [0]).logits(targets[:2048])
    torch.cuda.synchronize()
    print(f"   warm-up (compile) {time.perf_counter() - t:.1f}s", flush=True)
    rows = []
    settings = [dict(concurrent=c) for c in args.concurrent]
    settings += [dict(concurrent=c, compile=False) for c in args.eager_concurrent]
    settings += [dict(concurrent=c, cuda_graphs=False) for c in args.nograph_concurrent]
    for extra in settings:
        trainer = make_gpu_trainer("resnet9", epochs=e, **extra)
        k = extra["concurrent"]
        setup = prepare_slots(trainer, ds)
        r = timed_block(trainer, ds, k, alpha, targets)
        r["setup_s"] = setup
        per_model_epoch = r["train_s"] / (k * e)
        eval_per_model = r["eval_s"] / k
        row = {"setting": extra, **r, "s_per_model_epoch": per_model_epoch, "eval_s_per_model": eval_per_model}
        for recipe, rc in RECIPES["resnet9"].items():
            s = per_model_epoch * rc["epochs"] + eval_per_model
            row[f"{recipe}_s_per_model"] = s
            row[f"{recipe}_models_per_hour"] = 3600 / s
            row[f"{recipe}_models_per_gpu_day"] = 86400 / s
        rows.append(row)
        print(f"   {str(extra):34s} {per_model_epoch * 1000:7.1f} ms/model-epoch  eval {eval_per_model:5.2f} s/model  "
              f"paper {row['paper_models_per_gpu_day']:7.0f}/day  fast {row['fast_models_per_gpu_day']:7.0f}/day  "
              f"util {r['util_mean']}%  peak {r['peak_mem_gib']:.1f} GiB  setup {setup:.1f}s", flush=True)
    out["resnet9"] = rows


def bench_resnet18(args, out: dict) -> None:
    n_train, n_eval = args.fmow_images, 1024
    ds = random_dataset(n_train, 64, 224, 62)
    alpha, e = 0.5, args.epochs
    print(f"== resnet18 on 224x224 random data: {n_train} train, alpha={alpha}, timing {e} epochs", flush=True)
    t = time.perf_counter()
    make_gpu_trainer("resnet18", epochs=1, concurrent=1).train_block(ds, masks_for(1, n_train, alpha, 0), [0])
    torch.cuda.synchronize()
    print(f"   warm-up (compile) {time.perf_counter() - t:.1f}s", flush=True)
    rc = RECIPES["resnet18"]["paper"]
    steps_per_epoch_real = (21_404 // 2) // rc["batch_size"]
    n_targets_real = 21_404 + 3_138
    rows = []
    for k in args.fmow_concurrent:
        trainer = make_gpu_trainer("resnet18", epochs=e, concurrent=k)
        setup = prepare_slots(trainer, ds)
        r = timed_block(trainer, ds, k, alpha, ds.x_train[:n_eval])
        r["setup_s"] = setup
        steps = e * ((n_train // 2) // rc["batch_size"])
        per_model_step = r["train_s"] / (k * steps)
        eval_per_model = r["eval_s"] / k * n_targets_real / n_eval
        s = per_model_step * steps_per_epoch_real * rc["epochs"] + eval_per_model
        row = {"setting": {"concurrent": k}, **r, "s_per_model_step": per_model_step,
               "eval_s_per_model": eval_per_model, "paper_s_per_model": s, "paper_models_per_hour": 3600 / s,
               "paper_models_per_gpu_day": 86400 / s}
        rows.append(row)
        print(f"   concurrent={k}: {per_model_step * 1000:7.1f} ms/model-step (batch {rc['batch_size']})  "
              f"eval {eval_per_model:5.1f} s/model  -> {s:6.1f} s/model, {3600 / s:6.1f} models/h, "
              f"{86400 / s:6.0f}/GPU-day  util {r['util_mean']}%  peak {r['peak_mem_gib']:.1f} GiB  setup {setup:.1f}s",
              flush=True)
    out["resnet18"] = rows


def bench_accuracy(args, out: dict) -> None:
    from audit.data import load_dataset

    ds = load_dataset(f"cifar10:{args.cifar}")
    res = {}
    for recipe in args.acc_recipes:
        trainer = make_gpu_trainer("resnet9", recipe=recipe, concurrent=min(8, args.acc_models))
        masks = masks_for(args.acc_models, ds.n_train, args.alpha, 7)
        t = time.perf_counter()
        models = trainer.train_block(ds, masks, list(range(args.acc_models)))
        margins = correct_class_margins(models.logits(ds.x_test), ds.y_test)
        acc = (margins > 0).mean(1)
        res[recipe] = {"mean_test_acc": float(acc.mean()), "per_model": acc.tolist(),
                       "seconds": time.perf_counter() - t}
        print(f"== accuracy {recipe}: mean test accuracy {acc.mean():.4f} over {args.acc_models} models at "
              f"alpha={args.alpha} (min {acc.min():.4f}, max {acc.max():.4f})", flush=True)
    out["accuracy"] = res


def profile(args) -> None:
    """Host issue time vs wall time per model-step, for graphs / no graphs / no compile."""
    from audit.training import gpu as G

    ds = random_dataset(50_000, 16, 32, 10)
    print("== profile resnet9 steps (ms per model-step; issue = host time to launch them)", flush=True)
    for variant in (dict(), dict(cuda_graphs=False), dict(compile=False), dict(compile=False, cuda_graphs=False)):
        for k in (1, 8):
            trainer = make_gpu_trainer("resnet9", epochs=1, concurrent=k, **variant)
            data = trainer._data(ds)
            slots = trainer._get_slots(data, ds.n_classes, ds.n_train, k, True)
            masks = masks_for(k, ds.n_train, 0.5, 3)
            for i, slot in enumerate(slots):
                job = G._Job(trainer, ds.n_classes, 3, masks[i], i, ds.y_train)
                slot.stream.wait_stream(torch.cuda.current_stream())
                slot.load(job)
                slot.start_epoch(job)
                for st in range(3):
                    slot.step(st, 0.1)
            steps = 25_000 // trainer.cfg.batch_size - 4
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for st in range(3, 3 + steps):
                for slot in slots:
                    slot.step(st, 0.1)
            t_issue = time.perf_counter() - t0
            torch.cuda.synchronize()
            t_wall = time.perf_counter() - t0
            n = steps * k
            print(f"   {str(variant):45s} k={k:2d}: wall {1000 * t_wall / n:6.2f}  issue {1000 * t_issue / n:6.2f} "
                  f"ms/model-step  ({trainer.cfg.batch_size * n / t_wall:,.0f} img/s)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=3, help="epochs timed per setting (scaled to each recipe)")
    p.add_argument("--concurrent", type=int, nargs="*", default=[1, 4, 8, 16])
    p.add_argument("--eager-concurrent", type=int, nargs="*", default=[8], help="settings without torch.compile")
    p.add_argument("--nograph-concurrent", type=int, nargs="*", default=[8], help="settings without CUDA graphs")
    p.add_argument("--fmow-images", type=int, default=4096)
    p.add_argument("--fmow-concurrent", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--skip", nargs="*", default=[], choices=["resnet9", "resnet18"])
    p.add_argument("--cifar", help="real cifar-10-batches-py folder: also measure accuracy")
    p.add_argument("--acc-models", type=int, default=8)
    p.add_argument("--acc-recipes", nargs="*", default=["fast", "paper"])
    p.add_argument("--profile", action="store_true", help="only profile the resnet9 step (host vs GPU)")
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "train_gpu.json"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        print(f"train_gpu: needs a CUDA GPU and torch {torch.__version__} sees none here; run it on a GPU machine",
              file=sys.stderr)
        sys.exit(2)
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "args": vars(args)}
    print(f"device {out['device']}, torch {out['torch']}", flush=True)
    if args.profile:
        profile(args)
        return
    if "resnet9" not in args.skip:
        bench_resnet9(args, out)
    if "resnet18" not in args.skip:
        bench_resnet18(args, out)
    if args.cifar:
        bench_accuracy(args, out)
    else:
        print("accuracy: not measured (no real CIFAR-10 folder given; random data says nothing about accuracy)")
    Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    best = max(out.get("resnet9", []), key=lambda r: r["paper_models_per_gpu_day"], default=None)
    if best:
        print(f"summary: resnet9 best {best['setting']}: paper recipe {best['paper_models_per_hour']:.0f} models/h = "
              f"{best['paper_models_per_gpu_day']:.0f}/GPU-day, fast recipe {best['fast_models_per_hour']:.0f} "
              f"models/h = {best['fast_models_per_gpu_day']:.0f}/GPU-day (paper: {PAPER_MODELS_PER_DAY}/A100-day)")
    for r in out.get("resnet18", []):
        print(f"summary: resnet18 {r['setting']}: {r['paper_models_per_hour']:.1f} models/h = "
              f"{r['paper_models_per_gpu_day']:.0f}/GPU-day (FMoW 2012, 15 epochs)")


if __name__ == "__main__":
    main()
