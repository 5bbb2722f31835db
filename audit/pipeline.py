"""The steps of an audit run as library calls: train, fit, evaluate.

Commands parse options and print; everything here takes paths and values, returns
results, and saves what it computes as JSON (and arrays) in the run directory.
"""

from __future__ import annotations

import re
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from audit.data import Dataset, dataset_kind, load_dataset
from audit.errors import AuditError
from audit.jsonio import read_json, save_npz, write_json
from audit.progress import SILENT, Progress
from audit.store import RUN_JSON, STREAM_EVAL, RunConfig, RunStore
from audit.training.engines import train_local, train_ray
from audit.training.registry import (DEFAULT_TRAINER, default_block_size, make_trainer, trainer_config,
                                     trainer_from_config)

if TYPE_CHECKING:
    from audit.datamodels import Datamodels

DATAMODELS_FILE = "datamodels.npz"
PATH_KINDS = ("npz", "cifar10", "fmow", "folder", "csv")  # dataset specs whose argument is a file or folder


def default_run_dir(spec: str, runs_root: Path | str = "runs") -> Path:
    """``runs/<dataset name>``: where a dataset's run lives unless told otherwise."""
    kind = dataset_kind(spec)
    arg = spec.partition(":")[2]
    name = Path(arg).stem if kind == "npz" and arg else kind
    return Path(runs_root) / name


def resolve_run(target: str, run: Path | None = None) -> Path:
    """A command's TARGET is a run directory or a dataset spec (-> its default run dir)."""
    if run is not None:
        return Path(run)
    if (Path(target) / RUN_JSON).exists():
        return Path(target)
    if ":" not in target and Path(target).is_dir():
        raise AuditError(f"{target} is not a run directory (no {RUN_JSON}); run `audit train` first")
    return default_run_dir(target)


def absolute_spec(spec: str) -> str:
    """``kind:PATH`` with PATH made absolute, so run.json finds the data from any folder."""
    kind, sep, arg = spec.partition(":")
    if kind not in PATH_KINDS or not arg:
        return spec
    return f"{kind}:{Path(arg).expanduser().absolute()}"


def dataset_of(store: RunStore) -> Dataset:
    """Reload the run's dataset and refuse one whose contents changed."""
    spec = store.config.dataset
    kind, _, arg = spec.partition(":")
    if kind in PATH_KINDS and arg and not Path(arg).expanduser().exists():
        relative = "" if Path(arg).expanduser().is_absolute() else f" (relative to {Path.cwd()})"
        raise AuditError(f"{store.path} was trained on {spec}, but {arg}{relative} does not exist any more; put the "
                         f"data back there, or set \"dataset\" in {store.path}/{RUN_JSON} to where it is now")
    ds = load_dataset(spec, **store.config.dataset_options)
    if ds.fingerprint() != store.config.fingerprint:
        raise AuditError(f"{store.config.dataset} no longer matches the data {store.path} was trained on "
                         f"(fingerprint {ds.fingerprint()} vs {store.config.fingerprint}); use a new --run")
    return ds


# ----- train -----------------------------------------------------------------------
def train(spec: str, run_dir: Path, *, n_models: int = 5000, alpha: float = 0.5, seed: int = 0,
          trainer: str | None = None, trainer_options: dict | None = None, block_size: int | None = None,
          engine: str = "local", address: str | None = None, dataset_options: dict | None = None,
          dataset: Dataset | None = None, progress: Progress = SILENT) -> dict:
    """Create or resume a run and train its pending models. Returns the run summary."""
    spec = absolute_spec(spec)
    if block_size is not None and block_size < 1:
        raise AuditError(f"--block-size must be at least 1 (got {block_size})")
    ds = dataset or load_dataset(spec, **(dataset_options or {}))
    name = trainer or DEFAULT_TRAINER[dataset_kind(spec)]
    if engine == "local":  # fail fast (resnet9/18 without CUDA) before the run directory exists
        make_trainer(name, **(trainer_options or {}))
    tconfig = trainer_config(name, **(trainer_options or {}))  # builds nothing: a CPU-only Ray driver can send it
    config = RunConfig(dataset=spec, fingerprint=ds.fingerprint(), n_train=ds.n_train, n_test=ds.n_test,
                       alpha=alpha, n_models=n_models, seed=seed, trainer=tconfig,
                       block_size=default_block_size(name) if block_size is None else block_size,
                       dataset_options=dataset_options or {})
    store = RunStore.open_or_create(run_dir, config)
    return _train_store(store, ds, engine=engine, address=address, progress=progress)


def _train_store(store: RunStore, ds: Dataset, *, engine: str = "local", address: str | None = None,
                 progress: Progress = SILENT) -> dict:
    start = time.perf_counter()
    if engine == "local":
        trained = train_local(store, ds, trainer_from_config(store.config.trainer), progress=progress)
    elif engine == "ray":
        trained = train_ray(store, ds, store.config.trainer, address=address, progress=progress)
    else:
        raise AuditError(f"unknown engine '{engine}': use local or ray")
    seconds = time.perf_counter() - start
    counts = store.summary()
    if counts["trained"] and counts["diverged"] == counts["trained"]:
        raise AuditError(f"{store.path}: all {counts['trained']} models trained so far diverged (non-finite "
                         f"margins); lower the learning rate (-o lr=...) or check the data (a single class?), "
                         f"then train into a new --run")
    summary = {**counts, "trained_now": trained, "seconds": round(seconds, 2),
               "models_per_second": round(trained / seconds, 2) if trained and seconds > 0 else None,
               "alpha": store.config.alpha, "dataset": store.config.dataset, "trainer": store.config.trainer}
    _merge_json(store.path / "train.json", summary, key=f"{store.path.name}")
    return summary


def _merge_json(path: Path, summary: dict, key: str) -> None:
    """Keep the latest training summary; accumulate total training seconds across resumes."""
    old = read_json(path) if path.exists() else {}
    summary["total_seconds"] = round(float(old.get("total_seconds", 0.0)) + summary["seconds"], 2)
    write_json(path, summary)


# ----- fit -------------------------------------------------------------------------
def fit(run_dir: Path, *, device: str = "cpu", progress: Progress = SILENT, **options) -> dict:
    """Fit LASSO datamodels for every target on the run's finished models."""
    from audit.datamodels import fit_datamodels

    store = RunStore.open(run_dir, writable=False)
    rows = store.finished_rows()
    if len(rows) < 20:
        raise AuditError(f"{run_dir} has {len(rows)} finished models; train at least 20 (ideally thousands) "
                         f"before fitting")
    start = time.perf_counter()
    dm = fit_datamodels(np.asarray(store.masks[rows]), np.asarray(store.margins[rows]), store.config.n_train,
                        device=_device(device), progress=progress, **options)
    seconds = time.perf_counter() - start
    dm.save(store.path / DATAMODELS_FILE)
    summary = {"n_models": int(len(rows)), "n_targets": store.config.n_targets, "seconds": round(seconds, 2),
               "device": _device(device), "mean_nonzero_weights": float((dm.weights != 0).sum(1).mean()),
               "median_lambda_ratio": float(np.median(dm.lam_ratio)), "mean_val_mse": float(np.mean(dm.val_mse)),
               "options": options}
    write_json(store.path / "fit.json", summary)
    return summary


def _device(device: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise AuditError(f"unknown device '{device}': use cpu, cuda, cuda:N or auto")
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise AuditError("--device cuda was asked for but CUDA is not available here; use --device cpu")
    return device


def load_datamodels(run_dir: Path):
    from audit.datamodels import Datamodels

    path = Path(run_dir) / DATAMODELS_FILE
    if not path.exists():
        raise AuditError(f"{run_dir} has no {DATAMODELS_FILE}; run `audit fit {run_dir}` first")
    try:
        return Datamodels.load(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise AuditError(f"{path} is unreadable ({type(exc).__name__}: {exc}); run `audit fit {run_dir}` again") from None


def open_fitted(run_dir: Path, dataset: Dataset | None = None) -> tuple[RunStore, Datamodels, Dataset]:
    """A fitted run for an audit: its store (read-only), datamodels (shape checked) and dataset.

    ``dataset`` (already loaded by the caller) must be the one the run was trained on.
    """
    store = RunStore.open(run_dir, writable=False)
    c = store.config
    dm = load_datamodels(run_dir)
    if dm.weights.shape != (c.n_targets, c.n_train):
        raise AuditError(f"{run_dir}/{DATAMODELS_FILE} has weights {dm.weights.shape}, expected "
                         f"{(c.n_targets, c.n_train)}; run `audit fit {run_dir}` again")
    if dataset is None:
        return store, dm, dataset_of(store)
    if dataset.fingerprint() != c.fingerprint:
        raise AuditError(f"the dataset passed does not match the one {run_dir} was trained on")
    return store, dm, dataset


# ----- evaluate --------------------------------------------------------------------
def _scatter_sample(dm, masks_eval: np.ndarray, measured: np.ndarray, n_train: int, n_targets: int,
                    per_group: int = 4) -> dict[str, np.ndarray]:
    """Predicted vs measured margins on the held-out models for a few train and test targets
    (for plots): ``scatter_targets`` [k], ``scatter_pred`` / ``scatter_measured`` [m, k], and
    ``scatter_valid`` [m, k] (a train target is only scored on models that exclude it)."""
    targets = np.r_[np.linspace(0, n_train - 1, per_group), np.linspace(n_train, n_targets - 1, per_group)]
    targets = np.unique(targets.astype(int))
    pred = masks_eval.astype(np.float32) @ dm.weights[targets].T + dm.bias[targets]
    valid = np.ones((len(masks_eval), len(targets)), bool)
    is_train = targets < n_train
    valid[:, is_train] = ~masks_eval[:, targets[is_train]]
    return {"scatter_targets": targets, "scatter_pred": pred.astype(np.float32),
            "scatter_measured": measured[:, targets].astype(np.float32), "scatter_valid": valid}


def evaluate(run_dir: Path, *, n_subsets: int = 200, repeats: int = 1, progress: Progress = SILENT) -> dict:
    """Train held-out models (``repeats`` per subset), then score datamodels and the baseline on them."""
    from audit.datamodels import difference_of_means, evaluate as score

    store = RunStore.open(run_dir, writable=False)
    dm = load_datamodels(run_dir)
    ds = dataset_of(store)
    c = store.config
    eval_config = RunConfig(dataset=c.dataset, fingerprint=c.fingerprint, n_train=c.n_train, n_test=c.n_test,
                            alpha=c.alpha, n_models=n_subsets * repeats, seed=c.seed, stream=STREAM_EVAL,
                            repeats=repeats, block_size=c.block_size, trainer=c.trainer,
                            dataset_options=c.dataset_options)
    eval_store = RunStore.open_or_create(store.path / f"eval_r{repeats}", eval_config)
    _train_store(eval_store, ds, progress=progress)
    n_eval = n_subsets * repeats  # an earlier, larger evaluation: reuse its first n_eval models
    done = np.asarray(eval_store.done[:n_eval]).reshape(n_subsets, repeats)
    margins = np.asarray(eval_store.margins[:n_eval]).reshape(n_subsets, repeats, c.n_targets)
    keep = done.all(1) & np.isfinite(margins).all(axis=(1, 2))
    if keep.sum() < 5:
        raise AuditError(f"only {int(keep.sum())} held-out subsets trained without diverging; evaluation needs 5+")
    masks_eval = np.asarray(eval_store.masks[:n_eval]).reshape(n_subsets, repeats, c.n_train)[keep, 0]
    rows = store.finished_rows()
    baseline = difference_of_means(np.asarray(store.masks[rows]), np.asarray(store.margins[rows]), c.n_train)
    result, per_target = score(dm, masks_eval, margins[keep].mean(1), c.n_train, baseline_weights=baseline,
                               margins_replicates=margins[keep] if repeats > 1 else None)
    result.update({"n_subsets": int(keep.sum()), "n_subsets_requested": n_subsets, "repeats": repeats,
                   "n_fit_models": int(len(rows))})
    per_target.update(_scatter_sample(dm, masks_eval, margins[keep].mean(1), c.n_train, c.n_targets))
    write_json(store.path / "evaluation.json", result)
    save_npz(store.path / "evaluation_targets.npz", **per_target)
    return result
