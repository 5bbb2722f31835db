"""The steps of an audit run as library calls: train, fit, evaluate.

Commands parse options and print; everything here takes paths and values, returns
results, and saves what it computes as JSON (and arrays) in the run directory.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from audit.contract import (
    Block,
    Line,
    Metric,
    Param,
    Result,
    Step,
    Table,
    digest_of,
    file_stamp,
    finite,
    read_result,
    require,
    setting,
    settings_of,
    unreadable,
)
from audit.data import SPEC_HELP, Dataset, dataset_kind, dataset_name, load_dataset
from audit.data.planting import LABEL_PLANT_OPTIONS, label_plant_options
from audit.datamodels import Datamodels, evaluation_targets, fit_datamodels, streamed_evaluate
from audit.errors import AuditError
from audit.execution import address_setting, engine_setting, train_local, train_ray
from audit.jsonio import read_json, save_npz, write_json
from audit.progress import SILENT, Progress
from audit.release import ReleaseModels, is_imported, release_models, release_weights, targets_with_weights
from audit.scores import ScoreQuality, evaluate_scores
from audit.scores import names as score_names
from audit.store import RUN_JSON, STREAM_EVAL, RunConfig, RunStore
from audit.training.registry import (
    DEFAULT_TRAINER,
    check_trainer_dataset,
    default_block_size,
    make_trainer,
    trainer_config,
    trainer_from_config,
)

DATAMODELS_FILE = "datamodels.npz"
TRAIN_JSON, FIT_JSON = "train.json", "fit.json"
EVALUATION_JSON, EVALUATION_TARGETS = "evaluation.json", "evaluation_targets.npz"


# ----- settings of the steps (the single home of their defaults) -------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Settings of the train step (the subset models of the run)."""

    n_models: int = setting(5000, "--n-models", "subset models in the run", aliases=("-m",))
    alpha: float = setting(0.5, "--alpha", "fraction of the training set each model sees")
    seed: int = setting(0, "--seed", "seed of the subsets, initialisations and data orders (and of the audits' "
                                     "target samples; >= 0)", minimum=0)
    trainer: str | None = setting(None, "--trainer", "mlp, cnn, resnet9 or resnet18 (default per dataset)")
    options: tuple[str, ...] = setting((), "--option", "trainer setting NAME=VALUE (repeatable)", aliases=("-o",),
                                       parse="options")
    block_size: int | None = setting(None, "--block-size", "models trained together")
    engine: str = engine_setting()
    address: str | None = address_setting()
    year: int | None = setting(None, "--year", "FMoW: keep images from this year (default 2012)")
    plant_labels: float | None = setting(None, "--plant-labels", "flip this fraction of the training labels to "
                                         "another class (seeded by --seed; recorded in run.json) to measure the "
                                         "label-error audit against a known answer; default run runs/<dataset>-"
                                         "labelsF")

    def check(self) -> None:
        """One clear error for settings no run can have (before anything is loaded or written)."""
        check_plant_labels(self.plant_labels)


def check_plant_labels(fraction: float | None) -> None:
    if fraction is not None and not 0.0 < fraction < 1.0:  # NaN fails too
        raise AuditError(f"--plant-labels {fraction}: give the fraction of training labels to flip, strictly "
                         "between 0 and 1 (e.g. 0.05)")


@dataclass(frozen=True)
class FitConfig:
    """Settings of the fit step (LASSO datamodels)."""

    device: str = setting("auto", "--device", "fitting device: cpu, cuda or auto")
    n_lambdas: int = setting(24, "--n-lambdas", "points on the lambda path")
    val_fraction: float = setting(0.1, "--val-fraction", "models held out to choose lambda")
    selection: str = setting("min", "--selection", "lambda rule: min (lowest validation MSE) or 1se (largest "
                                                   "lambda within one standard error of it)")
    memory_gb: float | None = setting(None, "--memory-gb", "memory the streamed fit may hold, GiB (default: "
                                      "half of the memory available and at most a quarter of the machine's, or "
                                      "half a GPU's free memory)", volatile=True)


EVAL_TARGETS = 2000  # per group: all of digits' targets; a sample of larger ones (SE of a mean LDS ≈ 0.004)


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of the evaluate step (held-out models)."""

    n_subsets: int = setting(200, "--n-subsets", "held-out subsets to train", aliases=("--eval-subsets",))
    repeats: int = setting(1, "--repeats", "models per held-out subset, margins averaged", aliases=("-r",))
    memory_gb: float | None = setting(None, "--memory-gb", "memory the streamed evaluation may hold, GiB "
                                      "(default: half of the memory available, at most a quarter of the "
                                      "machine's)", volatile=True)
    lds_targets: int = setting(EVAL_TARGETS, "--lds-targets", "targets scored per group (train, test): a group with more "
                           "gets a seeded random sample of this many, its mean LDS a standard error "
                           "(0: every target; the baseline costs models x N_train per target)", minimum=0)
PATH_KINDS = ("npz", "cifar10", "fmow", "folder", "csv")  # dataset specs whose argument is a file or folder


def default_run_dir(spec: str, runs_root: Path | str = "runs", plant_labels: float | None = None) -> Path:
    """``runs/<dataset name>``: where a dataset's run lives unless told otherwise; with planted label
    errors ``runs/<dataset name>-labels<fraction>`` (other data, another run)."""
    check_plant_labels(plant_labels)
    suffix = f"-labels{plant_labels:g}" if plant_labels is not None else ""
    return Path(runs_root) / (dataset_name(spec) + suffix)


def resolve_run(target: str, run: Path | None = None) -> Path:
    """A command's TARGET is a run directory or a dataset spec (-> its default run dir)."""
    if run is not None:
        return Path(run)
    if (Path(target) / RUN_JSON).exists():
        return Path(target)
    if ":" not in target and Path(target).is_dir():
        raise AuditError(f"{target} is not a run directory (no {RUN_JSON}); run `audit train` first")
    if ":" not in target and ("/" in target or os.sep in target or target.startswith(".")) and not Path(target).exists():
        raise AuditError(f"{target} does not exist: give a run directory made by `audit train`, or a dataset spec "
                         f"({SPEC_HELP})")
    return default_run_dir(target)


def absolute_spec(spec: str) -> str:
    """``kind:PATH`` with PATH made absolute, so run.json finds the data from any folder."""
    kind, sep, arg = spec.partition(":")
    if kind not in PATH_KINDS or not arg:
        return spec
    path, q, options = arg.partition("?")  # folder:DIR?size=32x32: the options stay as they are
    return f"{kind}:{Path(path).expanduser().absolute()}{q}{options}"


def dataset_of(store: RunStore) -> Dataset:
    """Reload the run's dataset and refuse one whose contents changed."""
    spec = store.config.dataset
    kind, _, arg = spec.partition(":")
    arg = arg.partition("?")[0]
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
def train(spec: str, run_dir: Path, *, n_models: int = TrainConfig.n_models, alpha: float = TrainConfig.alpha,
          seed: int = TrainConfig.seed,
          trainer: str | None = None, trainer_options: dict | None = None, block_size: int | None = None,
          engine: str = "local", address: str | None = None, dataset_options: dict | None = None,
          dataset: Dataset | None = None, progress: Progress = SILENT) -> dict:
    """Create or resume a run and train its pending models. Returns the run summary."""
    spec = absolute_spec(spec)
    if block_size is not None and block_size < 1:
        raise AuditError(f"--block-size must be at least 1 (got {block_size})")
    ds = dataset or load_dataset(spec, progress=progress, **(dataset_options or {}))
    name = trainer or DEFAULT_TRAINER[dataset_kind(spec)]
    if engine == "local":  # fail fast (resnet9/18 without CUDA) before the run directory exists
        make_trainer(name, **(trainer_options or {}))
    check_trainer_dataset(name, ds, trainer_options)  # e.g. the cnn trainer on flat features
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
    _merge_json(store.path / TRAIN_JSON, summary, key=f"{store.path.name}")
    return summary


def _merge_json(path: Path, summary: dict, key: str) -> None:
    """Keep the latest training summary; accumulate total training seconds across resumes."""
    old = read_json(path) if path.exists() else {}
    summary["total_seconds"] = round(float(old.get("total_seconds", 0.0)) + summary["seconds"], 2)
    write_json(path, summary)


# ----- fit -------------------------------------------------------------------------
def fit(run_dir: Path, *, device: str = "cpu", progress: Progress = SILENT, **options) -> dict:
    """Fit LASSO datamodels for every target on the run's finished models."""
    store = RunStore.open(run_dir, writable=False)
    rows = store.finished_rows()
    if len(rows) < 20:
        raise AuditError(f"{run_dir} has {len(rows)} finished models; train at least 20 (ideally thousands) "
                         f"before fitting")
    start = time.perf_counter()
    dm = fit_datamodels(store.masks, store.margins, store.config.n_train, rows=rows,
                        device=_device(device), progress=progress, **options)
    seconds = time.perf_counter() - start
    dm.save(store.path / DATAMODELS_FILE)
    summary = {"n_models": int(len(rows)), "n_targets": store.config.n_targets, "seconds": round(seconds, 2),
               "device": _device(device), "mean_nonzero_weights": float((dm.weights != 0).sum(1).mean()),
               "median_lambda_ratio": float(np.median(dm.lam_ratio)), "mean_val_mse": float(np.mean(dm.val_mse)),
               "options": options}
    write_json(store.path / FIT_JSON, summary)
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
    """The run's datamodels: its fitted datamodels.npz, else (an imported run) the release's weights."""
    path = Path(run_dir) / DATAMODELS_FILE
    if not path.exists() and is_imported(run_dir):
        return _release_datamodels(Path(run_dir))
    if not path.exists():
        raise AuditError(f"{run_dir} has no {DATAMODELS_FILE}; run `audit fit {run_dir}` first")
    try:
        return Datamodels.load(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise AuditError(f"{path} is unreadable ({type(exc).__name__}: {exc}); run `audit fit {run_dir}` again") from None


def _release_datamodels(run_dir: Path) -> Datamodels:
    c = RunStore.read_config(run_dir)
    published = release_weights(run_dir, c.n_train, c.n_test)
    if published is None:
        raise AuditError(f"{run_dir} was imported without the release's datamodels/ files; run `audit fit {run_dir}` "
                         f"on its training data, or import the release again with its .pt files")
    weights, bias, lam = published
    nan = np.full(len(bias), np.nan, np.float32)
    return Datamodels(weights=weights, bias=bias, lam=lam, val_mse=nan, lam_ratio=nan,
                      n_models_fit=c.n_models, n_train=c.n_train, info={"source": "release"})


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
def eval_run_dir(run_dir: Path | str, repeats: int) -> Path:
    """``RUN/eval_r<repeats>``: the held-out models of `audit evaluate` (a run directory of their own)."""
    return Path(run_dir) / f"eval_r{int(repeats)}"


def _scatter_sample(dm, masks_eval: np.ndarray, measured: np.ndarray, n_train: int, n_targets: int,
                    per_group: int = 4) -> dict[str, np.ndarray]:
    """Predicted vs measured margins on the held-out models for a few train and test targets
    (for plots): ``scatter_targets`` [k], ``scatter_pred`` / ``scatter_measured`` [m, k], and
    ``scatter_valid`` [m, k] (a train target is only scored on models that exclude it)."""
    targets = np.r_[np.linspace(0, n_train - 1, per_group), np.linspace(n_train, n_targets - 1, per_group)]
    targets = np.unique(targets.astype(int))
    weighted = targets_with_weights(dm.weights, n_targets)
    if weighted is not None:  # a split imported without weights has no dots
        targets = targets[np.isin(targets, weighted)]
    pred = masks_eval.astype(np.float32) @ dm.weights[targets].T + dm.bias[targets]
    valid = np.ones((len(masks_eval), len(targets)), bool)
    is_train = targets < n_train
    valid[:, is_train] = ~masks_eval[:, targets[is_train]]
    return {"scatter_targets": targets, "scatter_pred": pred.astype(np.float32),
            "scatter_measured": measured[:, targets].astype(np.float32), "scatter_valid": valid}


def evaluate(run_dir: Path, *, n_subsets: int = EvaluateConfig.n_subsets, repeats: int = EvaluateConfig.repeats,
             memory_gb: float | None = None, targets: int = EvaluateConfig.lds_targets,
             progress: Progress = SILENT) -> dict:
    """Train held-out models (``repeats`` per subset), then score datamodels and the baseline on them
    (up to ``targets`` per group: :func:`audit.datamodels.evaluation_targets`)."""
    store = RunStore.open(run_dir, writable=False)
    dm = load_datamodels(run_dir)
    c = store.config
    sample = evaluation_targets(c.n_train, c.n_targets, targets, seed=c.seed)
    if is_imported(store.path):  # the release's evaluation models: nothing to train
        return _evaluate_on(store, dm, release_models(store.path, c.n_train, c.n_test), memory_gb, sample, progress)
    ds = dataset_of(store)
    eval_config = RunConfig(dataset=c.dataset, fingerprint=c.fingerprint, n_train=c.n_train, n_test=c.n_test,
                            alpha=c.alpha, n_models=n_subsets * repeats, seed=c.seed, stream=STREAM_EVAL,
                            repeats=repeats, block_size=c.block_size, trainer=c.trainer,
                            dataset_options=c.dataset_options)
    eval_store = RunStore.open_or_create(eval_run_dir(store.path, repeats), eval_config)
    _train_store(eval_store, ds, progress=progress)
    n_eval = n_subsets * repeats  # an earlier, larger evaluation: reuse its first n_eval models
    done = np.asarray(eval_store.done[:n_eval]).reshape(n_subsets, repeats)
    margins = np.asarray(eval_store.margins[:n_eval]).reshape(n_subsets, repeats, c.n_targets)
    keep = done.all(1) & np.isfinite(margins).all(axis=(1, 2))
    if keep.sum() < 5:
        raise AuditError(f"only {int(keep.sum())} held-out subsets trained without diverging; evaluation needs 5+")
    masks_eval = np.asarray(eval_store.masks[:n_eval]).reshape(n_subsets, repeats, c.n_train)[keep, 0]
    rows = store.finished_rows()
    result, per_target = streamed_evaluate(dm, masks_eval, margins[keep].mean(1), c.n_train, store.masks,
                                           store.margins, rows, margins_replicates=margins[keep] if repeats > 1
                                           else None, memory_gb=memory_gb, targets=sample, progress=progress)
    result.update({"n_subsets": int(keep.sum()), "n_subsets_requested": n_subsets, "repeats": repeats,
                   "n_fit_models": int(len(rows))})
    result["scores"] = evaluate_scores(store.path, masks_eval, margins[keep].mean(1), c.n_train, c.n_test, sample)
    per_target.update(_scatter_sample(dm, masks_eval, margins[keep].mean(1), c.n_train, c.n_targets))
    write_json(store.path / EVALUATION_JSON, result)
    save_npz(store.path / EVALUATION_TARGETS, **per_target)
    return result


def _evaluate_on(store: RunStore, dm: Datamodels, models: ReleaseModels, memory_gb: float | None,
                 sample: np.ndarray | None, progress: Progress) -> dict:
    """Score an imported run's datamodels on the release's evaluation models (the last rows), against
    difference of means from its training models; streamed from the memory maps."""
    c = store.config
    n_eval = len(models.eval_masks)
    if not len(models.masks):
        raise AuditError(f"{store.path} was imported without the release's data/ files (masks and margins), which "
                         f"evaluate needs: import the release again with them into a new --run")
    if n_eval < 5:
        raise AuditError(f"{store.path} was imported with {n_eval} evaluation models and its release has no "
                         f"others; import it again with --eval-models 5 or more (the release has 10,000)")
    rows = np.arange(len(models.masks))
    weighted = targets_with_weights(dm.weights, c.n_targets)  # an import of one split's weights: score that split
    dm_sample = sample if weighted is None else weighted if sample is None else np.intersect1d(sample, weighted)
    result, per_target = streamed_evaluate(dm, models.eval_masks, models.eval_margins, c.n_train, models.masks,
                                           models.margins, rows, memory_gb=memory_gb, targets=dm_sample,
                                           progress=progress)
    result.update({"n_subsets": n_eval, "n_subsets_requested": n_eval, "repeats": 1, "n_fit_models": len(rows)})
    if weighted is not None:
        _mark_missing_split(result, weighted, c.n_train, c.n_targets)
    if score_names(store.path):  # imported attribution scores, on the same evaluation models
        result["scores"] = evaluate_scores(store.path, np.asarray(models.eval_masks, dtype=bool),
                                           models.eval_margins, c.n_train, c.n_test, sample)  # a column block at a time
    dots = min(n_eval, 2000)  # the scatter plot's dots: the first evaluation models
    per_target.update(_scatter_sample(dm, np.asarray(models.eval_masks[:dots], bool), models.eval_margins[:dots],
                                      c.n_train, c.n_targets))
    write_json(store.path / EVALUATION_JSON, result)
    save_npz(store.path / EVALUATION_TARGETS, **per_target)
    return result


def _mark_missing_split(result: dict, weighted: np.ndarray, n_train: int, n_targets: int) -> None:
    """An evaluation of a run imported with one split's weights: the other group is marked ``no_weights``,
    "all" says which split it ``only`` covers, and ``random_sample`` says whether a group is a random
    sample of the targets that have weights (not of every target)."""
    has = {"train": bool(np.any(weighted < n_train)), "test": bool(np.any(weighted >= n_train))}
    sizes = {"train": n_train, "test": n_targets - n_train}
    avail = {g: sizes[g] if has[g] else 0 for g in sizes}
    avail["all"] = avail["train"] + avail["test"]
    for name in ("all", "train", "test"):
        group = result[name]
        group["random_sample"] = bool(group["n_targets"] < avail[name])
        if name != "all" and not has[name]:
            group["no_weights"] = True
    result["all"]["only"] = next(g for g in ("train", "test") if has[g])
    result["weights_missing"] = [g for g in ("train", "test") if not has[g]]
    result["sampled"] = any(result[g]["random_sample"] for g in ("train", "test"))


# ----- the steps (audit.contract) --------------------------------------------------------------
class TrainResult(Result):
    """train.json: the run's models."""

    n_models: int
    trained: int
    diverged: int
    pending: int
    test_accuracy: float | None = None
    trained_now: int = 0
    seconds: float = 0.0
    models_per_second: float | None = None
    total_seconds: float = 0.0
    alpha: float
    dataset: str


class TrainStep(Step[TrainConfig, TrainResult]):
    """Create or resume the run and train its pending subset models."""

    name, title = "train", "Subset models"
    config_type, result_type = TrainConfig, TrainResult
    files = {"result": TRAIN_JSON}

    def __init__(self, spec: str | None = None) -> None:
        self.spec = spec  # the dataset spec of a new run (None: the run's own)

    def for_dataset(self, spec: str) -> "TrainStep":
        return TrainStep(spec)

    def compute(self, run_dir: Path, config: TrainConfig, *, dataset: Dataset | None = None,
                progress: Progress = SILENT) -> TrainResult:
        config.check()
        if is_imported(run_dir):
            raise AuditError(f"{run_dir} was imported from a published release: its models are the release's, "
                             f"so it trains none; use `audit train` with another --run to train models of your own")
        spec = self.spec or RunStore.open(run_dir, writable=False).config.dataset
        s = train(spec, run_dir, n_models=config.n_models, alpha=config.alpha, seed=config.seed,
                  trainer=config.trainer, trainer_options=parse_trainer_options(config.options),
                  block_size=config.block_size, engine=config.engine, address=config.address,
                  dataset_options=self.dataset_options(run_dir, config) or None, dataset=dataset, progress=progress)
        return TrainResult.from_json(s)

    def dataset_options(self, run_dir: Path, config: TrainConfig) -> dict:
        """The run's dataset options: the year, and the planted label errors (``--plant-labels``). A run made
        with planted labels keeps them when the flag is left out; another fraction is an error."""
        options: dict = {"year": config.year} if config.year else {}
        recorded = RunStore.open(run_dir, writable=False).config.dataset_options if (run_dir / RUN_JSON).exists() \
            else {}
        planted = {k: v for k, v in recorded.items() if k in LABEL_PLANT_OPTIONS}
        if config.plant_labels is None:
            return {**options, **planted}
        wanted = label_plant_options(config.plant_labels, config.seed)
        if (run_dir / RUN_JSON).exists() and planted != wanted:
            was = f"--plant-labels {planted['plant_labels']:g}" if planted else "no planted labels"
            raise AuditError(f"{run_dir} was made with {was}, not --plant-labels {config.plant_labels:g} (seed "
                             f"{config.seed}); use those settings or another --run")
        return {**options, **wanted}

    def state(self, run_dir: Path) -> str | None:
        """The run's settings and which models are finished: retraining or growing makes a new state."""
        if not (run_dir / RUN_JSON).exists():
            return None
        store = RunStore.open(run_dir, writable=False)
        c = store.config
        determined = {k: v for k, v in asdict(c).items() if k not in ("created", "versions")}
        return digest_of(determined, _rows_digest(store))

    def is_current(self, run_dir: Path | str, config: TrainConfig | None = None) -> bool:
        """Every model the run asks for (at least ``config.n_models``) is trained, as recorded."""
        run_dir = Path(run_dir)
        config = config or TrainConfig()
        if not (run_dir / RUN_JSON).exists():
            return False
        store = RunStore.open(run_dir, writable=False)
        if is_imported(run_dir):  # the release's models, whatever --n-models says
            rec = self.record(run_dir)
            return rec is not None and rec.inputs.get(self.name) == self.state(run_dir)
        if store.config.n_models < config.n_models or not np.asarray(store.done).all():
            return False
        if config.plant_labels is not None and \
                {k: v for k, v in store.config.dataset_options.items() if k in LABEL_PLANT_OPTIONS} \
                != label_plant_options(config.plant_labels, config.seed):
            return False  # computing it says why it cannot be this run
        rec = self.record(run_dir)
        return rec is not None and rec.inputs.get(self.name) == self.state(run_dir)

    def digest(self, config: TrainConfig, inputs) -> str:
        return digest_of(self.name, dict(inputs))  # the run's own settings (in its state) decide, not the options

    def current_digest(self, run_dir: Path) -> str | None:
        """The models as they are now (the root of every other step's digest; no record needed)."""
        state = self.state(Path(run_dir))
        return None if state is None else self.digest(TrainConfig(), {self.name: state})

    def summary(self, result: TrainResult) -> list[Block]:
        acc = result.test_accuracy
        return [Line(f"trained {result.trained} models ({result.diverged} diverged)"
                     + (f", test accuracy at α={result.alpha} {acc:.3f}" if acc is not None else ""))]


    def seconds(self, result: TrainResult) -> float | None:
        return result.total_seconds

    def skipped(self, result: TrainResult) -> TrainResult:
        return result.model_copy(update={"trained_now": 0})

    def cost_detail(self, result: TrainResult) -> str:
        rate = result.models_per_second
        return f"{rate:,.2f} models/s in the last session" if rate else ""

TRAIN = TrainStep()


def _rows_digest(store: RunStore) -> str:
    """Which models are done. A row is written once, before its done flag, so this also fixes which
    of them diverged: hashing the done flags ([n_models] bools) stands for the finished rows without
    reading the [n_models, n_targets] margins."""
    return hashlib.sha256(np.packbits(np.asarray(store.done, dtype=bool)).tobytes()).hexdigest()[:16]


def parse_trainer_options(pairs: Sequence[str] | None) -> dict:
    """``["epochs=10", "lr=0.1"]`` -> ``{"epochs": 10, "lr": 0.1}`` (ints, floats, bools, strings)."""
    out: dict = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise AuditError(f"option '{pair}' must look like NAME=VALUE")
        value: object = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                pass
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        out[key.strip().replace("-", "_")] = value
    return out


class FitResult(Result):
    """fit.json: what the datamodels were fitted on."""

    n_models: int
    n_targets: int
    seconds: float
    device: str
    mean_nonzero_weights: float
    median_lambda_ratio: float
    mean_val_mse: float
    splits: list[str] | None = None  # an import of published weights: the splits whose .pt it has

    def targets_text(self) -> str:
        """'1,797', or '60 (test targets' weights only)' for an import of one split's published weights."""
        one = self.splits is not None and len(self.splits) == 1
        return f"{self.n_targets:,}" + (f" ({self.splits[0]} targets' weights only)" if one else "")


class FitStep(Step[FitConfig, FitResult]):
    """One LASSO datamodel per target on the run's finished models."""

    name, title = "fit", "Datamodels"
    config_type, result_type = FitConfig, FitResult
    files = {"result": FIT_JSON, "datamodels": DATAMODELS_FILE}
    needs = (TRAIN,)

    def compute(self, run_dir: Path, config: FitConfig, *, dataset: Dataset | None = None,
                progress: Progress = SILENT) -> FitResult:
        s = fit(run_dir, device=config.device, n_lambdas=config.n_lambdas, val_fraction=config.val_fraction,
                selection=config.selection, memory_gb=config.memory_gb, progress=progress)
        return FitResult.from_json(s)

    def summary(self, result: FitResult) -> list[Block]:
        return [Line(f"fitted datamodels for {result.n_targets} targets on {result.n_models} models "
                     f"({result.seconds:.1f}s on {result.device}; mean non-zero weights "
                     f"{result.mean_nonzero_weights:.1f})")]

    def config_of(self, run_dir: Path | str) -> FitConfig:
        """The settings the run's datamodels were fitted with (its record, else fit.json's options)."""
        rec = self.record(run_dir)
        names = {f.name for f in settings_of(FitConfig)}
        if rec is not None:
            return FitConfig(**{k: v for k, v in rec.config.items() if k in names})
        try:
            options = read_json(self.path(run_dir)).get("options") or {}
        except (OSError, ValueError, AttributeError):
            options = {}
        return FitConfig(**{k: v for k, v in options.items() if k in names})

    def current_digest(self, run_dir: Path) -> str | None:
        """As for every step; an older run's datamodels (no record, but fitted on the run's finished
        models) are identified by their fit.json, so the audits after them can be current too."""
        digest = super().current_digest(run_dir)
        if digest is None and self.record(run_dir) is None and self.path(run_dir).exists() \
                and self.legacy_current(Path(run_dir), self.config_of(run_dir)):
            return digest_of("fitted before step records", file_stamp(self.path(run_dir)))
        return digest

    def legacy_current(self, run_dir: Path, config: FitConfig) -> bool:
        """An older run's datamodels count when fit.json says they were fitted on the run's finished models."""
        if not self.path(run_dir, "datamodels").exists():
            return False
        try:
            n = read_json(self.path(run_dir)).get("n_models")
        except (OSError, ValueError, AttributeError):
            return False
        return n == len(RunStore.open(run_dir, writable=False).finished_rows())


    def cost_detail(self, result: FitResult) -> str:
        return f"on {result.device}, {result.n_models:,} models"

FIT = FitStep()


class GroupQuality(Result):
    n_targets: int
    lds_mean: float | None = None
    lds_median: float | None = None
    mse_mean: float | None = None
    n_lds: int | None = None  # targets with a defined LDS (a constant margin has none)
    baseline_lds_mean: float | None = None
    baseline_lds_median: float | None = None
    baseline_n_lds: int | None = None
    lds_se: float | None = None  # standard error of lds_mean over the targets (what a sample leaves uncertain)
    baseline_lds_se: float | None = None
    n_targets_total: int | None = None  # the group's targets; more than n_targets when a sample was scored
    # an import of one split's weights: the other split's group has none; "all" covers only one split
    no_weights: bool = False
    only: str | None = None
    random_sample: bool | None = None  # None: a sample whenever fewer than the group's targets were scored

    @property
    def sampled(self) -> bool:
        """Scored on a seeded random sample of the group's targets (its mean has a standard error)."""
        if self.random_sample is not None:
            return self.random_sample
        return self.n_targets_total is not None and self.n_targets_total > self.n_targets

    def targets_text(self) -> str:
        """'5,000' or, for a sample, '5,000 of 50,000'; says so when the run has no weights for the group
        or "all" holds only one split's targets."""
        if self.no_weights:
            return "none (no weights imported)"
        total = self.n_targets_total
        text = f"{self.n_targets:,} of {total:,}" if total is not None and total > self.n_targets else f"{self.n_targets:,}"
        if self.only is not None:
            other = "test" if self.only == "train" else "train"
            text += f" ({self.only} targets only: no {other} weights imported)"
        return text

    def lds_text(self, baseline: bool = False) -> str:
        """The mean LDS, with its standard error when the group was sampled."""
        mean, se = (self.baseline_lds_mean, self.baseline_lds_se) if baseline else (self.lds_mean, self.lds_se)
        text = _f3(mean)
        return f"{text} ± {se:.3f}" if self.sampled and se is not None and math.isfinite(se) and text != "-" else text


@dataclass(frozen=True)
class Scatter:
    """Predicted vs measured margins on the held-out models for a few targets (evaluation_targets.npz)."""

    targets: np.ndarray  # int [k] target indices (train first, then test)
    pred: np.ndarray  # [m, k]
    measured: np.ndarray  # [m, k]
    valid: np.ndarray  # bool [m, k]: a train target's dots are the models whose subset left it out


@dataclass(frozen=True)
class TargetQuality:
    """evaluation_targets.npz: per-target LDS (datamodels, difference of means) and MSE, and the scatter sample."""

    lds: np.ndarray | None
    baseline_lds: np.ndarray | None
    mse: np.ndarray | None
    scatter: Scatter | None


class EvaluateResult(Result):
    """evaluation.json: LDS and MSE on held-out models, against difference of means."""

    all: GroupQuality
    train: GroupQuality
    test: GroupQuality
    n_subsets: int
    n_subsets_requested: int
    repeats: int
    n_fit_models: int
    noise_floor_mse: float | None = None
    scores: dict[str, ScoreQuality] = {}  # the run's score matrices (audit.scores), by name


class EvaluateStep(Step[EvaluateConfig, EvaluateResult]):
    """Datamodel quality on held-out models (LDS, MSE) against difference of means."""

    name, title = "evaluate", "Datamodel quality"
    config_type, result_type = EvaluateConfig, EvaluateResult
    files = {"result": EVALUATION_JSON, "targets": EVALUATION_TARGETS}
    needs = (FIT,)
    retrains = True
    metrics = (Metric("min_lds", "datamodel LDS", "min", "lds", lambda run_dir, path, p: lds_value(run_dir, path, p),
                      {"lds_group": Param("choice", "test", "target group for min_lds", ("all", "train", "test"))},
                      lambda p: f"mean LDS ({p['lds_group']} targets)", "audit evaluate RUN"),)

    def compute(self, run_dir: Path, config: EvaluateConfig, *, dataset: Dataset | None = None,
                progress: Progress = SILENT) -> EvaluateResult:
        return EvaluateResult.from_json(evaluate(run_dir, n_subsets=config.n_subsets, repeats=config.repeats,
                                                 memory_gb=config.memory_gb, targets=config.lds_targets,
                                                 progress=progress))

    def summary(self, r: EvaluateResult) -> list[Block]:
        rows = []
        for group in ("all", "train", "test"):
            g: GroupQuality = getattr(r, group)
            rows.append((f"datamodels ({group})", g.targets_text(), g.lds_text(), _f3(g.mse_mean)))
            rows.append((f"difference of means ({group})", g.targets_text(), g.lds_text(baseline=True), ""))
            rows.extend((f"{q.name} ({group})", str(sg.n_targets), _f3(sg.lds_mean), "")
                        for q in r.scores.values() if (sg := getattr(q, group)) is not None)
        out: list[Block] = [Table(f"datamodel quality on {r.n_subsets} held-out subsets x {r.repeats} repeats",
                                  ("estimator", "targets", "mean LDS (Spearman)", "mean MSE"), tuple(rows))]
        if r.noise_floor_mse is not None:
            out.append(Line(f"noise floor (OPT) MSE with {r.repeats} repeats: {r.noise_floor_mse:.3f}"))
        if r.train.sampled or r.test.sampled:
            out.append(Line("LDS over a seeded random sample of targets per group (± one standard error); "
                            "--lds-targets N scores more, --lds-targets 0 every target"))
        return out

    def targets(self, run_dir: Path | str) -> TargetQuality | None:
        """The per-target scores (None when not evaluated); AuditError when the file is unreadable or inconsistent."""
        path = self.path(run_dir, "targets")
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: np.asarray(z[k]) for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise unreadable(path, "audit evaluate", exc) from None
        scatter = None
        if all(f"scatter_{k}" in arrays for k in ("targets", "pred", "measured")):
            pred = arrays["scatter_pred"]
            valid = arrays.get("scatter_valid", np.ones(pred.shape, bool)).astype(bool)
            scatter = Scatter(arrays["scatter_targets"].astype(np.int64), pred, arrays["scatter_measured"], valid)
            if pred.ndim != 2 or pred.shape != scatter.measured.shape or pred.shape != valid.shape \
                    or pred.shape[1] != len(scatter.targets):
                raise AuditError(f"{path} has scatter arrays of mismatched shapes; run `audit evaluate` again")
        return TargetQuality(arrays.get("lds"), arrays.get("baseline_lds"), arrays.get("mse"), scatter)

    def legacy_current(self, run_dir: Path, config: EvaluateConfig) -> bool:
        """An older run's evaluation counts when it scores the current datamodels on as many subsets."""
        path, dm = self.path(run_dir), FIT.path(run_dir, "datamodels")
        if not dm.exists() or path.stat().st_mtime < dm.stat().st_mtime:
            return False
        try:
            ev = read_json(path)
            fit_models = read_json(FIT.path(run_dir)).get("n_models") if FIT.path(run_dir).exists() else None
        except (OSError, ValueError):
            return False
        return (ev.get("n_fit_models") == fit_models
                and ev.get("n_subsets_requested", config.n_subsets) == config.n_subsets)


    def seconds(self, result: EvaluateResult) -> float | None:
        return None  # the evaluation's cost is in its step record only

    def cost_detail(self, result: EvaluateResult) -> str:
        return f"{result.n_subsets:,} held-out subsets"

EVALUATE = EvaluateStep()


def _f3(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3f}"


def lds_value(run_dir: Path, path: Path, p: Mapping[str, Any]) -> tuple[float | None, dict]:
    """Mean LDS (Spearman, held-out models) of a target group from evaluation.json."""
    what = f"audit evaluate {run_dir}"
    data = read_result(path, what)
    group = require(data, (p["lds_group"],), path, what)
    value = require(group, ("lds_mean",), path, what)
    details = {"group": p["lds_group"], "n_targets": group.get("n_targets") if isinstance(group, dict) else None,
               "baseline_lds_mean": group.get("baseline_lds_mean") if isinstance(group, dict) else None}
    if isinstance(group, dict) and group.get("no_weights"):
        details["note"] = "the run was imported without these targets' weights"
    elif isinstance(group, dict) and group.get("only"):
        details["note"] = f"the run was imported with the {group['only']} targets' weights only: the mean is theirs"
    return finite(value), details

