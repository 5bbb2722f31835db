"""The CPU trainer: many small MLPs trained at once, batched over models.

A block of B models is one set of batched weights ``[B, ...]``. Each model draws its own
initialisation and its own per-epoch order of *its own* subset from a generator seeded
with its model seed, and the loss is the sum of per-model mean losses; torch's SGD is
elementwise, so every model follows exactly the trajectory it would follow alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from audit.data.dataset import Dataset
from audit.errors import AuditError
from audit.progress import SILENT, Progress


@dataclass(frozen=True)
class MLPConfig:
    hidden: int = 64
    epochs: int = 16
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0


STD_FLOOR = 0.1  # a feature's scale is at least this fraction of the subset's overall spread


def subset_statistics(x: torch.Tensor, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model input mean and scale ``[B, D]`` from each model's own subset (``masks`` [B, N]).

    A model's normalisation is part of training on its subset, so it never sees the examples
    outside it (their presence would otherwise leak into every model). The scale is
    sqrt(var + (0.1·s)²) with s the subset's overall spread: a feature that is constant in a
    subset (a border pixel) is not blown up for the examples where it is not.
    """
    w = torch.from_numpy(np.asarray(masks, dtype=np.float32))  # [B, N]
    count = w.sum(1, keepdim=True).clamp_min(1.0)
    xd = x.double()
    mean = (w.double() @ xd) / count.double()  # [B, D]
    var = ((w.double() @ (xd * xd)) / count.double() - mean * mean).clamp_min(0.0)
    overall = var.mean(1, keepdim=True).sqrt()  # the subset's overall spread (root mean variance)
    std = (var + (STD_FLOOR * overall) ** 2).sqrt() + 1e-6
    return mean.float(), std.float()
def check_mlp_config(cfg: MLPConfig) -> None:
    """Every setting in its range, with one line naming the first that is not."""
    for key in ("hidden", "epochs", "batch_size"):
        value = getattr(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise AuditError(f"mlp option {key} must be a whole number >= 1 (got {value!r})")
    ranges = {"lr": (0.0, math.inf, False), "momentum": (0.0, 1.0, True), "weight_decay": (0.0, math.inf, True),
              "label_smoothing": (0.0, 1.0, True)}
    for key, (low, high, low_ok) in ranges.items():
        value = getattr(cfg, key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            and (value >= low if low_ok else value > low) and value < high
        if not ok:
            bound = f"{'>=' if low_ok else '>'} {low:g}" + (f" and < {high:g}" if math.isfinite(high) else "")
            raise AuditError(f"mlp option {key} must be a finite number {bound} (got {value!r})")


class BatchedMLP:
    """B trained two-layer MLPs, evaluated together."""

    def __init__(self, w1, b1, w2, b2, mean: torch.Tensor, std: torch.Tensor, chunk: int = 4096) -> None:
        self.w1, self.b1, self.w2, self.b2 = w1, b1, w2, b2
        self.mean, self.std, self.chunk = mean, std, chunk  # [B, D] each model's own input statistics
        self.n_models = int(w1.shape[0])
        self.checkpoints: list[tuple[float, BatchedMLP]] = []  # (mean learning rate of the epoch, model after it)
        # each model's normalisation folded into its first layer: ((x - m) / s) W + b = x (W / s) + (b - (m / s) W)
        self.w1_raw = w1 / std[:, :, None]
        self.b1_raw = b1 - torch.bmm((mean / std)[:, None, :], w1)[:, 0, :]

    @torch.no_grad()
    def _forward(self, x: np.ndarray, want_features: bool) -> np.ndarray:
        outs = []
        for start in range(0, len(x), self.chunk):
            xb = torch.from_numpy(np.asarray(x[start:start + self.chunk], dtype=np.float32).reshape(
                len(x[start:start + self.chunk]), -1))
            h = torch.relu(torch.matmul(xb, self.w1_raw) + self.b1_raw[:, None, :])  # [B, N, H]
            outs.append(h if want_features else torch.baddbmm(self.b2[:, None, :], h, self.w2))
        return torch.cat(outs, dim=1).numpy()

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x, want_features=False)

    def features(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x, want_features=True)


class MLPTrainer:
    """Batched CPU trainer for small datasets (digits, npz features)."""

    name = "mlp"

    def __init__(self, **options) -> None:
        try:
            self.cfg = MLPConfig(**options)
        except TypeError as exc:
            raise AuditError(f"unknown option for the mlp trainer: {exc}") from None
        check_mlp_config(self.cfg)

    def config(self) -> dict:
        return {"name": self.name, **asdict(self.cfg)}

    def train_block(self, dataset: Dataset, masks: np.ndarray, seeds: Sequence[int],
                    labels: np.ndarray | None = None, progress: Progress = SILENT,
                    checkpoints: bool = False) -> BatchedMLP:
        """Train a block; ``checkpoints``: also keep the models after every epoch with the epoch's mean
        learning rate (``.checkpoints`` of the result; TracIn-CP sums over them)."""
        cfg = self.cfg
        masks = np.asarray(masks, dtype=bool)
        n_models, n = masks.shape
        x = torch.from_numpy(np.asarray(dataset.x_train, dtype=np.float32).reshape(n, -1))
        mean, std = subset_statistics(x, masks)  # each model sees only its subset, its inputs' statistics too
        y = torch.from_numpy(np.broadcast_to(dataset.y_train if labels is None else labels, (n_models, n)).copy())
        d, c, h = x.shape[1], dataset.n_classes, cfg.hidden
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]

        def init(fan_in: int, *shape: int) -> torch.Tensor:
            bound = 1.0 / math.sqrt(fan_in)
            return torch.stack([(torch.rand(*shape, generator=g) * 2 - 1) * bound for g in gens])

        w1, b1 = init(d, d, h), init(d, h)
        w2, b2 = init(h, h, c), init(h, c)
        params = [p.requires_grad_() for p in (w1, b1, w2, b2)]
        sizes = torch.from_numpy(masks.sum(1))
        steps_per_epoch = max(1, math.ceil(int(sizes.max()) / cfg.batch_size))
        total = steps_per_epoch * cfg.epochs
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
        # OneCycleLR divides by pct_start*total_steps - 1: with ≤ 4 steps (tiny datasets) that is 0;
        # stepping fewer times than total_steps is allowed, and schedules of 5+ steps are unchanged
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total, 5), pct_start=0.25,
                                                    anneal_strategy="linear", cycle_momentum=False)
        in_subset = torch.from_numpy(masks)
        rows = torch.arange(n_models)[:, None]
        saved: list[tuple[float, BatchedMLP]] = []
        with progress.task("training block", total=cfg.epochs, unit="epochs") as bar:
            for _ in range(cfg.epochs):
                # each model shuffles its own subset: random keys, examples outside the subset last
                keys = torch.stack([torch.rand(n, generator=g) for g in gens])
                order = torch.argsort(keys.masked_fill(~in_subset, 2.0), dim=1)
                lrs = []
                for step in range(steps_per_epoch):
                    lrs.append(sched.get_last_lr()[0])
                    pos = torch.arange(step * cfg.batch_size, min((step + 1) * cfg.batch_size, n))
                    idx = order[:, pos]  # [B, bs]
                    valid = (pos[None, :] < sizes[:, None]).float()
                    xb = (x[idx] - mean[:, None, :]) / std[:, None, :]  # [B, bs, D], each model's normalisation
                    hid = torch.relu(torch.baddbmm(b1[:, None, :], xb, w1))
                    out = torch.baddbmm(b2[:, None, :], hid, w2)
                    loss = torch.nn.functional.cross_entropy(out.reshape(-1, c), y[rows, idx].reshape(-1),
                                                             reduction="none", label_smoothing=cfg.label_smoothing)
                    per_model = (loss.view(n_models, -1) * valid).sum(1) / valid.sum(1).clamp_min(1.0)
                    opt.zero_grad(set_to_none=True)
                    per_model.sum().backward()
                    opt.step()
                    sched.step()
                if checkpoints:
                    saved.append((float(np.mean(lrs)), BatchedMLP(*(p.detach().clone() for p in params), mean=mean,
                                                                   std=std)))
                bar.advance(1)
        model = BatchedMLP(*(p.detach() for p in params), mean=mean, std=std)
        model.checkpoints = saved
        return model
