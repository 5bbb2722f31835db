"""Gradient baselines (the paper's App. F.2): TracIn-CP and a last-layer influence-function estimate.

Both are computed from full-data reference models (``audit.reference``, the same seeds as the
FAISS baseline's), trained once more with their outputs kept after every epoch, and both look at
the last layer only, whose gradient has a closed form: for an example with penultimate features
``h``, softmax ``p`` and label ``y``, the gradient of its cross-entropy loss with respect to the
last layer's weights and bias is ``(p - e_y) ⊗ [h, 1]``. So

* **TracIn-CP** (Pruthi et al. 2020): score(i, t) = mean over models of Σ over epoch checkpoints of
  lr_epoch · g_i · g_t = lr · ((p_i - e_yi)·(p_t - e_yt)) · (h_i·h_t + 1);
* **influence** (Koh & Liang 2017, last layer): score(i, t) = g_t^T (H + λI)^-1 g_i, H the Hessian of
  the mean training loss in the last layer (Σ_i (diag p_i - p_i p_i^T) ⊗ a_i a_i^T / n, a = [h, 1]),
  λ = ``damping`` × its mean diagonal; solved exactly (``C·(F+1)`` unknowns on digits: 650 with the MLP,
  1,290 with the CNN).

Sign: a positive score means training on example i lowers target t's loss, i.e. raises its
correct-class margin, like a positive datamodel weight. Each is saved as a score matrix of the run
(``RUN/scores/tracin.npy``, ``influence.npy``, test targets), so ``audit evaluate`` gives its LDS and
every ranking audit can rank by it (``--methods datamodels,tracin``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit import pipeline, scores
from audit.contract import Block, Line, Result, Step, Table, setting
from audit.data.dataset import Dataset
from audit.errors import AuditError
from audit.execution import address_setting, engine_setting, run_blocks
from audit.jsonio import write_json
from audit.progress import SILENT, Progress
from audit.audits.leakage_audit import N_REFERENCE
from audit.reference import ReferenceStore

METHODS = ("tracin", "influence")
CHECKPOINT_TRAINERS = ("mlp", "cnn")  # trainers that keep per-epoch checkpoints
CHUNK = 2048  # targets scored at a time


@dataclass(frozen=True)
class GradientsConfig:
    """Settings of the gradient baselines."""

    gradient_methods: tuple[str, ...] = setting(METHODS, "--gradient-methods", "tracin, influence (or one of them)",
                                                parse="names")
    n_reference: int = setting(N_REFERENCE, "--n-reference", "full-data reference models (the same seeds as the "
                                                             "FAISS baseline's), averaged over", command_only=True)
    damping: float = setting(0.01, "--damping", "influence: λ added to the last layer's Hessian, as a fraction of "
                                                "its mean diagonal")
    engine: str = engine_setting()
    address: str | None = address_setting()


class GradientsResult(Result):
    """audits/gradients.json."""

    methods: list[str]
    n_models: int
    n_checkpoints: int
    n_train: int
    n_test: int
    damping: float
    parameters: int  # last-layer parameters (C·(F+1))
    seconds: float
    seconds_scoring: float
    files: list[str]


def last_layer_errors(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``p - e_y`` [n, C]: the loss gradient with respect to the logits (softmax cross-entropy)."""
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), np.asarray(y, dtype=np.int64)] -= 1.0
    return p


def _with_bias(h: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(h, dtype=np.float64), np.ones((len(h), 1))], axis=1)


def tracin_scores(outputs: np.ndarray, y: np.ndarray, n_train: int, n_classes: int) -> np.ndarray:
    """TracIn-CP ``[n_test, n_train]`` from checkpoint outputs ``[models, epochs, targets, C + F + 1]`` (logits,
    features, the epoch's learning rate; targets: train then test) and labels ``y`` of every target."""
    n_models, n_epochs = outputs.shape[:2]
    out = np.zeros((outputs.shape[2] - n_train, n_train), dtype=np.float64)
    for m in range(n_models):
        for e in range(n_epochs):
            o = outputs[m, e]
            err, a, lr = last_layer_errors(o[:, :n_classes], y), _with_bias(o[:, n_classes:-1]), float(o[0, -1])
            for start in range(0, len(out), CHUNK):
                t = slice(n_train + start, n_train + start + CHUNK)
                out[start:start + CHUNK] += lr * (err[t] @ err[:n_train].T) * (a[t] @ a[:n_train].T)
    return (out / n_models).astype(np.float32)


def influence_scores(outputs: np.ndarray, y: np.ndarray, n_train: int, n_classes: int,
                     damping: float = GradientsConfig.damping) -> np.ndarray:
    """Last-layer influence ``[n_test, n_train]``: g_t^T (H + λI)^-1 g_i averaged over the final checkpoint of
    each model (``outputs`` as for :func:`tracin_scores`)."""
    import torch

    out = np.zeros((outputs.shape[2] - n_train, n_train), dtype=np.float64)
    for m in range(outputs.shape[0]):
        o = outputs[m, -1]
        z = torch.from_numpy(np.asarray(o[:, :n_classes], dtype=np.float64))
        a = torch.from_numpy(_with_bias(o[:, n_classes:-1]))
        err = torch.from_numpy(last_layer_errors(o[:, :n_classes], y))
        p = torch.softmax(z[:n_train], dim=1)
        # Hessian of the mean training loss in the last layer, ordered (class, feature)
        s = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # [n, C, C]
        d = n_classes * a.shape[1]
        hess = torch.einsum("ncd,nf,ng->cfdg", s, a[:n_train], a[:n_train]).reshape(d, d) / n_train
        hess += damping * hess.diagonal().mean() * torch.eye(d, dtype=hess.dtype)
        g = (err[:, :, None] * a[:, None, :]).reshape(len(a), d)  # per-example gradients
        solved = torch.linalg.solve(hess, g[n_train:].T)  # (H + λI)^-1 g_t, [d, n_test]
        out += (solved.T @ g[:n_train].T).numpy()
    return (out / outputs.shape[0]).astype(np.float32)


def checkpoint_outputs(store: pipeline.RunStore, dataset: Dataset, n_models: int, *, engine: str = "local",
                       address: str | None = None, progress: Progress = SILENT) -> np.ndarray:
    """The reference models' outputs after every epoch ``[models, epochs, targets, C + F + 1]`` (trained
    through the executor, resumable per block; the folder is removed once read)."""
    name = store.config.trainer.get("name")
    if name not in CHECKPOINT_TRAINERS:
        keep = " and ".join(CHECKPOINT_TRAINERS)
        raise AuditError(f"the gradient baselines need per-epoch checkpoints, which the {keep} "
                         f"trainers keep and the {name} trainer does not yet; import scores made elsewhere (e.g. "
                         f"TRAK) with audit import-scores")
    blocks = ReferenceStore(store, n_models, outputs="checkpoints")
    run_blocks(blocks, dataset, store.config.trainer, engine=engine, address=address, progress=progress,
               description="reference models with checkpoints (full training set)")
    outputs = blocks.outputs()
    if not np.isfinite(outputs).all():
        blocks.remove()
        raise AuditError("a full-data reference model diverged; check the trainer settings in run.json")
    blocks.remove()
    return outputs


def compute_gradients(run_dir: Path, config: GradientsConfig, dataset: Dataset | None = None,
                      progress: Progress = SILENT) -> GradientsResult:
    """Train the checkpointed reference models, score every (test target, training example) pair with each
    method and save them as the run's score matrices."""
    methods = list(dict.fromkeys(config.gradient_methods))
    if not methods or any(m not in METHODS for m in methods):
        raise AuditError(f"--gradient-methods must be among {', '.join(METHODS)} (got {', '.join(methods) or 'none'})")
    if config.n_reference < 1:
        raise AuditError(f"--n-reference must be at least 1 (got {config.n_reference})")
    if not 0 < config.damping < 1e6:
        raise AuditError(f"--damping must be a positive number below 1e6 (got {config.damping})")
    start = time.perf_counter()
    store = pipeline.RunStore.open(run_dir, writable=False)
    ds = pipeline.dataset_of(store) if dataset is None else dataset
    c = store.config
    outputs = checkpoint_outputs(store, ds, config.n_reference, engine=config.engine, address=config.address,
                                 progress=progress)
    scoring = time.perf_counter()
    y = ds.targets_y()
    made = {"tracin": lambda: tracin_scores(outputs, y, c.n_train, ds.n_classes),
            "influence": lambda: influence_scores(outputs, y, c.n_train, ds.n_classes, config.damping)}
    how = {"tracin": f"TracIn-CP, last layer, {outputs.shape[1]} checkpoints x {config.n_reference} full-data models",
           "influence": f"influence function, last layer, damping {config.damping:g}, {config.n_reference} full-data "
                        f"models"}
    files = []
    with progress.task("gradient baselines", total=len(methods), unit="methods") as bar:
        for method in methods:
            matrix = made[method]()
            scores.save_matrix(run_dir, method, matrix.T, n_train=c.n_train, n_test=c.n_test,
                               source="audit gradients", how=how[method])
            files.append(str(scores.matrix_path(run_dir, method)))
            bar.advance(1)
    result = GradientsResult(methods=methods, n_models=config.n_reference, n_checkpoints=int(outputs.shape[1]),
                             n_train=c.n_train, n_test=c.n_test, damping=config.damping,
                             parameters=int(ds.n_classes * (outputs.shape[-1] - ds.n_classes)),
                             seconds=round(time.perf_counter() - start, 2),
                             seconds_scoring=round(time.perf_counter() - scoring, 2), files=files)
    write_json(Path(run_dir) / GRADIENTS.files["result"], result.to_json())
    return result


class GradientsStep(Step[GradientsConfig, GradientsResult]):
    """Gradient baselines (TracIn-CP, last-layer influence) as score matrices of the run."""

    name, title = "gradients", "Gradient baselines"
    config_type, result_type = GradientsConfig, GradientsResult
    files = {"result": "audits/gradients.json"}
    needs = (pipeline.TRAIN,)
    retrains = True

    def compute(self, run_dir: Path, config: GradientsConfig, *, dataset: Dataset | None = None,
                progress: Progress = SILENT) -> GradientsResult:
        return compute_gradients(Path(run_dir), config, dataset, progress)

    def scores_written(self, config: GradientsConfig) -> tuple[str, ...]:
        return tuple(m for m in config.gradient_methods if m in METHODS)

    def summary(self, r: GradientsResult) -> list[Block]:
        return [Table("gradient baselines (score matrices of the run)", ("method", "file"),
                      tuple(zip(r.methods, r.files))),
                Line(f"{r.n_models} full-data models x {r.n_checkpoints} checkpoints, last layer ({r.parameters} "
                     f"parameters); {r.seconds:.1f}s ({r.seconds_scoring:.1f}s scoring); their LDS: audit evaluate, "
                     f"rankings: --methods datamodels,{','.join(r.methods)}")]

    def cost_detail(self, result: GradientsResult) -> str:
        return f"{result.n_models} full-data models"


GRADIENTS = GradientsStep()
