"""Reference models: a few models trained on the full training set.

They give (1) the representation the FAISS baselines search — penultimate features of
each model, L2-normalised per model and concatenated / sqrt(K), so an inner product is the
mean cosine similarity over the K models (features of separately trained models are not
aligned, so they are not averaged elementwise) — and (2) the mean logits the mislabel
audit uses to pick each target's most likely wrong class. Saved as RUN/reference.npz.

They are trained like every other model, by the executor (``audit.execution``): a
:class:`ReferenceStore` is a block store whose blocks (of the run's block size) write each
model's logits and features to RUN/reference_models/, so training resumes after an
interruption and ``engine="ray"`` trains the blocks on a cluster.
"""

from __future__ import annotations

import contextlib
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager

import numpy as np

from audit.data.dataset import Dataset
from audit.errors import AuditError
from audit.execution import BlockTask, run_blocks
from audit.jsonio import output_file, read_json, save_npz, write_json
from audit.progress import SILENT, Progress
from audit.release import is_imported
from audit.seeding import STREAM_REFERENCE, model_seed
from audit.store import RunStore, claim_block

REFERENCE_FILE = "reference.npz"
REFERENCE_DIR = "reference_models"  # blocks of reference models while they are trained
CHECKPOINTS_DIR = "reference_checkpoints"  # the same models' outputs after every epoch (gradient baselines)


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


class ReferenceStore:
    """RUN/reference_models/: the blocks of full-data models, one ``block_N.npy`` each
    (float32 [models, targets, classes + features]), written atomically; a block whose file
    exists is done. ``meta.json`` says what the blocks were trained for; blocks made for other
    settings are discarded (the folder only caches models)."""

    def __init__(self, store: RunStore, n_models: int, outputs: str = "reference") -> None:
        c = store.config
        self.path = store.path / (REFERENCE_DIR if outputs == "reference" else CHECKPOINTS_DIR)
        self.n_models, self.block_size = n_models, max(1, min(n_models, c.block_size))
        self.outputs_kind = outputs  # "checkpoints": every epoch's outputs (audit.execution.BlockTask)
        self.seeds = [model_seed(c.seed, STREAM_REFERENCE, i) for i in range(n_models)]
        self.meta = {"n_models": n_models, "block_size": self.block_size, "seed": c.seed, "trainer": c.trainer,
                     "fingerprint": c.fingerprint, **({} if outputs == "reference" else {"outputs": outputs})}
        meta_path = self.path / "meta.json"
        try:
            same = read_json(meta_path) == self.meta
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path.mkdir(parents=True, exist_ok=True)
            write_json(meta_path, self.meta)

    @property
    def n_blocks(self) -> int:
        return -(-self.n_models // self.block_size)

    def _file(self, block: int) -> Path:
        return self.path / f"block_{block}.npy"

    def block_rows(self, block: int) -> range:
        return range(block * self.block_size, min((block + 1) * self.block_size, self.n_models))

    def pending_blocks(self) -> list[int]:
        return [b for b in range(self.n_blocks) if not self.block_done(b)]

    def total_models(self) -> int:
        return self.n_models

    def block_models(self, block: int) -> int:
        return len(self.block_rows(block))

    def block_done(self, block: int) -> bool:
        return self._file(block).is_file()

    def claim(self, block: int) -> ContextManager[bool]:
        return claim_block(self.path, block)

    def block_task(self, block: int, dataset: Dataset) -> BlockTask:
        rows = self.block_rows(block)
        return BlockTask(masks=np.ones((len(rows), dataset.n_train), dtype=bool),
                         seeds=[self.seeds[i] for i in rows], outputs=self.outputs_kind)

    def write_block(self, block: int, task: BlockTask, outputs: np.ndarray) -> None:
        with output_file(self._file(block), binary=True) as fh:
            np.save(fh, np.asarray(outputs, dtype=np.float32))

    def outputs(self) -> np.ndarray:
        """Every model's outputs, ``[n_models, targets, classes + features]`` (all blocks done)."""
        return np.concatenate([np.load(self._file(b)) for b in range(self.n_blocks)], axis=0)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(self.path)


def reference_models(store: RunStore, dataset: Dataset, n_models: int = 3, progress: Progress = SILENT, *,
                     engine: str = "local", address: str | None = None) -> Reference:
    """Load RUN/reference.npz, or train ``n_models`` full-data models (resuming finished blocks) and save it."""
    path = store.path / REFERENCE_FILE
    if path.exists():
        ref = _read(path)
        if ref.n_models >= n_models:
            return ref
    if is_imported(store.path):
        raise AuditError(f"{store.path} was imported from a published release, which has no full-data models: the "
                         f"FAISS baseline needs {n_models} (--trainer {store.config.trainer.get('trainer')} on a CUDA "
                         f"GPU); pass your own features instead (--features FILE, [n_train + n_test, d]) or train them in a run "
                         f"of your own")
    blocks = ReferenceStore(store, n_models)
    trainer = store.config.trainer  # the executor builds it (locally) or sends it to the Ray workers
    run_blocks(blocks, dataset, trainer, engine=engine, address=address, progress=progress,
               description="reference models (full training set)")
    outputs = blocks.outputs()
    logits, feats = outputs[..., :dataset.n_classes], outputs[..., dataset.n_classes:]
    if not np.isfinite(logits).all():
        blocks.remove()
        raise AuditError("a full-data reference model diverged; check the trainer settings in run.json")
    features = np.concatenate([unit_rows(f) for f in feats], axis=1) / np.sqrt(n_models)
    ref = Reference(features=features.astype(np.float32), mean_logits=logits.mean(0).astype(np.float32),
                    n_models=n_models)
    save_npz(path, features=ref.features, mean_logits=ref.mean_logits, n_models=np.array(n_models))
    blocks.remove()  # reference.npz holds everything the audits read
    return ref


def user_features(path: Path | str, n_train: int, n_test: int, key: str | None = None) -> np.ndarray:
    """Your own features for the representation baseline (``--features``): ``[n_train + n_test, d]`` rows (train
    first, then test) from an .npy or an .npz (its one array, or ``key``), as unit rows float32."""
    path = Path(path)
    arrays: list[str] = []
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = list(z.files)
                x = np.asarray(z[key or z.files[0]]) if key is not None or len(arrays) == 1 else None
        else:
            x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise AuditError(f"--features {path} is unreadable ({type(exc).__name__}); give an .npy or .npz of "
                         f"[{n_train + n_test}, d] features") from None
    if x is None:
        raise AuditError(f"--features {path} holds {len(arrays)} arrays ({', '.join(arrays[:8]) or 'none'}); keep "
                         f"one array of [{n_train + n_test}, d] features in it")
    if x.dtype.kind not in "fiu" or x.ndim != 2 or x.shape[0] != n_train + n_test or x.shape[1] < 1:
        raise AuditError(f"--features {path} holds {x.dtype} {x.shape}; the run needs [n_train + n_test, d] = "
                         f"[{n_train + n_test}, d] real numbers, train rows first, then test")
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise AuditError(f"--features {path} has non-finite values")
    if not x.any():
        raise AuditError(f"--features {path} is all zeros; give the features of each example (nearest neighbours "
                         f"of all-zero rows mean nothing)")
    return unit_rows(x)


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
