"""The CPU trainer for features: many small MLPs trained at once, batched over models
(the shared loop, and why each model follows the trajectory it would alone: ``audit.training.batched``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from audit.data.dataset import Dataset
from audit.errors import AuditError
from audit.lazy import no_grad, torch
from audit.training.batched import (BatchedModels, BatchedTrainer, as_channels_first, subset_moments,
                                    translated_batches, uniform_init)

if TYPE_CHECKING:
    from audit.training.batched import Setup


@dataclass(frozen=True)
class MLPConfig:
    hidden: int = 64
    epochs: int = 16
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    translate: int = 0  # images only: random whole-pixel translation of each training image, up to this many pixels


def subset_statistics(x: torch.Tensor, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model input mean and scale ``[B, D]`` of each feature, from each model's own subset (``masks`` [B, N])."""
    xd = x.double()
    return subset_moments(masks, xd, xd * xd)


def check_translate(translate: int, dataset: Dataset) -> None:
    """One line when ``translate`` asks to move the inputs of a dataset of flat features."""
    if translate and not dataset.is_image:
        raise AuditError(f"the mlp option translate moves images; {dataset.spec} holds flat features of shape "
                         f"{tuple(dataset.x_train.shape[1:])}: leave translate at 0")


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

    @no_grad
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

    def _setup(self, dataset: Dataset, masks: np.ndarray, gens: Sequence[torch.Generator]) -> Setup:
        n = masks.shape[1]
        x = torch.from_numpy(np.asarray(dataset.x_train, dtype=np.float32).reshape(n, -1))
        mean, std = subset_statistics(x, masks)  # each model sees only its subset, its inputs' statistics too
        d, c, h = x.shape[1], dataset.n_classes, self.cfg.hidden
        w1, b1 = uniform_init(gens, d, d, h), uniform_init(gens, d, h)
        w2, b2 = uniform_init(gens, h, h, c), uniform_init(gens, h, c)
        params = [p.requires_grad_() for p in (w1, b1, w2, b2)]

        rows = self._batches(dataset, x, gens)

        def forward(idx: torch.Tensor) -> torch.Tensor:
            xb = (rows(idx) - mean[:, None, :]) / std[:, None, :]  # [B, bs, D], each model's normalisation
            hid = torch.relu(torch.baddbmm(b1[:, None, :], xb, w1))
            return torch.baddbmm(b2[:, None, :], hid, w2)

        return params, forward, lambda ps: BatchedMLP(*ps, mean=mean, std=std)

    def _batches(self, dataset: Dataset, x: torch.Tensor, gens: Sequence[torch.Generator]):
        """``rows(idx)``: each model's minibatch of flat inputs ``[B, bs, D]``; with ``translate``, images moved at
        random (``audit.training.batched.translated_batches``) and flattened in the dataset's own order."""
        if self.cfg.translate == 0:
            return lambda idx: x[idx]
        check_translate(self.cfg.translate, dataset)
        batch = translated_batches(as_channels_first(dataset.x_train), self.cfg.translate, gens)
        return lambda idx: batch(idx).permute(0, 1, 3, 4, 2).reshape(*idx.shape, -1)  # [B, bs, H·W·C]
