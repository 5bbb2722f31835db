"""Reference models: a few models trained on the full training set.

They give (1) the representation the FAISS baselines search — penultimate features of
each model, L2-normalised per model and concatenated / sqrt(K), so an inner product is the
mean cosine similarity over the K models (features of separately trained models are not
aligned, so they are not averaged elementwise) — and (2) the mean logits the mislabel
audit uses to pick each target's most likely wrong class. Saved as RUN/reference.npz.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit.data.dataset import Dataset
from audit.errors import AuditError
from audit.jsonio import save_npz
from audit.progress import SILENT, Progress
from audit.seeding import STREAM_REFERENCE, model_seed
from audit.store import RunStore
from audit.training.registry import trainer_from_config

REFERENCE_FILE = "reference.npz"


@dataclass(frozen=True)
class Reference:
    """Full-data models' outputs on every target (train first, then test)."""

    features: np.ndarray  # float32 [n_targets, K*F], unit rows
    mean_logits: np.ndarray  # float32 [n_targets, n_classes]
    n_models: int

    def train_features(self, n_train: int) -> np.ndarray:
        return self.features[:n_train]

    def test_features(self, n_train: int) -> np.ndarray:
        return self.features[n_train:]

    def test_accuracy(self, y_test: np.ndarray, n_train: int) -> float:
        return float((self.mean_logits[n_train:].argmax(1) == y_test).mean())


def unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def reference_models(store: RunStore, dataset: Dataset, n_models: int = 3, progress: Progress = SILENT) -> Reference:
    """Load RUN/reference.npz, or train ``n_models`` full-data models and save it."""
    path = store.path / REFERENCE_FILE
    if path.exists():
        ref = _read(path)
        if ref.n_models >= n_models:
            return ref
    trainer = trainer_from_config(store.config.trainer)
    seeds = [model_seed(store.config.seed, STREAM_REFERENCE, i) for i in range(n_models)]
    masks = np.ones((n_models, dataset.n_train), dtype=bool)
    with progress.task("reference models (full training set)", total=1, unit="blocks") as bar:
        models = trainer.train_block(dataset, masks, seeds)
        x = dataset.targets_x()
        logits = models.logits(x)
        feats = models.features(x)
        bar.advance(1)
    if not np.isfinite(logits).all():
        raise AuditError("a full-data reference model diverged; check the trainer settings in run.json")
    features = np.concatenate([unit_rows(f) for f in feats], axis=1) / np.sqrt(n_models)
    ref = Reference(features=features.astype(np.float32), mean_logits=logits.mean(0).astype(np.float32),
                    n_models=n_models)
    save_npz(path, features=ref.features, mean_logits=ref.mean_logits, n_models=np.array(n_models))
    return ref


def load_reference(run_dir: Path) -> Reference | None:
    path = Path(run_dir) / REFERENCE_FILE
    if not path.exists():
        return None
    return _read(path)


def _read(path: Path) -> Reference:
    """RUN/reference.npz, or one line naming the file and the fix when it is damaged."""
    try:
        with np.load(path, allow_pickle=False) as z:
            ref = Reference(features=np.asarray(z["features"], np.float32),
                            mean_logits=np.asarray(z["mean_logits"], np.float32), n_models=int(z["n_models"]))
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as exc:
        raise AuditError(f"{path} is unreadable ({type(exc).__name__}: {exc}); delete that file (it only caches the "
                         f"reference models) and run the command again to retrain them") from None
    if ref.features.ndim != 2 or ref.mean_logits.ndim != 2 or len(ref.features) != len(ref.mean_logits):
        raise AuditError(f"{path} has arrays of shapes {ref.features.shape} and {ref.mean_logits.shape}; delete that "
                         f"file (it only caches the reference models) and run the command again")
    return ref
