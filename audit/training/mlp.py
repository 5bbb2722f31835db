"""The CPU trainer for features: many small MLPs trained at once, batched over models
(the shared loop, and why each model follows the trajectory it would alone: ``audit.training.batched``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from audit.data.dataset import Dataset
from audit.progress import SILENT, Progress
from audit.training.batched import (BatchedModels, BatchedTrainer, block_labels, model_generators, subset_moments,
                                    train_models, uniform_init)


@dataclass(frozen=True)
class MLPConfig:
    hidden: int = 64
    epochs: int = 16
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0


def subset_statistics(x: torch.Tensor, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model input mean and scale ``[B, D]`` of each feature, from each model's own subset (``masks`` [B, N])."""
    xd = x.double()
    return subset_moments(masks, xd, xd * xd)


class BatchedMLP(BatchedModels):
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


class MLPTrainer(BatchedTrainer):
    """Batched CPU trainer for small datasets (digits, npz features)."""

    name = "mlp"
    config_class = MLPConfig
    whole_settings = ("hidden", "epochs", "batch_size")

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
        y = block_labels(dataset.y_train, labels, n_models)
        d, c, h = x.shape[1], dataset.n_classes, cfg.hidden
        gens = model_generators(seeds)
        w1, b1 = uniform_init(gens, d, d, h), uniform_init(gens, d, h)
        w2, b2 = uniform_init(gens, h, h, c), uniform_init(gens, h, c)
        params = [p.requires_grad_() for p in (w1, b1, w2, b2)]

        def forward(idx: torch.Tensor) -> torch.Tensor:
            xb = (x[idx] - mean[:, None, :]) / std[:, None, :]  # [B, bs, D], each model's normalisation
            hid = torch.relu(torch.baddbmm(b1[:, None, :], xb, w1))
            return torch.baddbmm(b2[:, None, :], hid, w2)

        def snapshot() -> BatchedMLP:
            return BatchedMLP(*(p.detach().clone() for p in params), mean=mean, std=std)

        saved = train_models(params, forward, y, masks, gens, cfg, snapshot if checkpoints else None, progress)
        model = BatchedMLP(*(p.detach() for p in params), mean=mean, std=std)
        model.checkpoints = saved
        return model
