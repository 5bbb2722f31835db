"""The trainer interface shared by the CPU and GPU trainers, and margin arithmetic.

A trainer trains a *block* of models at once. Model ``b`` of a block sees only the
training examples where ``masks[b]`` is true, with labels ``labels[b]`` (defaults to the
dataset's labels; the mislabel audit overrides some), and draws its initialisation and
data order from ``seeds[b]`` alone, so a model's result does not depend on which other
models share its block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from audit.data.dataset import Dataset
from audit.progress import SILENT, Progress


class TrainedModels(Protocol):
    """A block of trained models that can be evaluated on any inputs."""

    n_models: int

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits ``[n_models, N, n_classes]`` (float32) for inputs ``x`` in the dataset's layout."""

    def features(self, x: np.ndarray) -> np.ndarray:
        """Penultimate-layer features ``[n_models, N, F]`` (float32)."""


class Trainer(Protocol):
    """Trains blocks of subset models on one dataset."""

    name: str

    def config(self) -> dict:
        """The settings that determine the models (saved in run.json)."""

    def train_block(self, dataset: Dataset, masks: np.ndarray, seeds: Sequence[int],
                    labels: np.ndarray | None = None, progress: Progress = SILENT) -> TrainedModels:
        """Train ``len(seeds)`` models; ``masks`` is bool ``[B, n_train]``, ``labels`` int ``[B, n_train]``."""


def correct_class_margins(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Logit of the true class minus the largest other logit: ``[B, N, C], [N] -> [B, N]``.

    Non-finite logits give NaN margins, which the store counts as a diverged model.
    """
    logits = np.asarray(logits, dtype=np.float32)
    idx = np.broadcast_to(np.asarray(y)[None, :, None], logits.shape[:2] + (1,))
    true = np.take_along_axis(logits, idx, axis=2)[..., 0]
    others = logits.copy()
    np.put_along_axis(others, idx, -np.inf, axis=2)
    margins = true - others.max(axis=2)
    margins[~np.isfinite(margins)] = np.nan
    return margins.astype(np.float32)


@dataclass(frozen=True)
class BlockResult:
    """What training a block yields for the store: margins on every target."""

    margins: np.ndarray  # float32 [B, n_targets]
