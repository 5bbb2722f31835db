"""Counterfactual prediction: does the datamodel predict what removing a set of training examples does?

Paper §4.1.2, Fig. 8, App. F.1. For a class-balanced sample of test targets (the support audits'
:func:`~audit.audits.support.sample_targets`), a *heuristic* chooses a removed set S of k training
examples:

- ``top``: the k largest datamodel weights of the target; ``bottom``: the k most negative;
- ``random``: k uniformly random training examples (a draw per target and seed);
- ``random_same_class``: k random training examples of the target's class (the brittleness audit's
  ``random`` ranking, the same draw);
- ``representation``: the k nearest training examples in the reference models' penultimate
  features (the brittleness audit's ``representation`` ranking); left out, with the reason in the
  result, when the run has no reference features (RUN/reference.npz, made by `audit brittleness`).

Sizes k: the support audits' grid (:func:`~audit.audits.support.default_k_grid`: the paper's
10..1280 scaled to the training set, or powers of two up to ~5% of a small one) cut to its six
smallest sizes: 2, 4, ..., 64 on digits (1,297 training examples), 10..320 on CIFAR-10. Sharing the
grid (and the targets, seed and replicates) with the brittleness audit means its retrained models
already answer the top-k, representation and same-class rows.

*Predicted effect* = Σ_{i∈S} w_i, what removing S lowers the linear datamodel's margin by; *actual
effect* = the mean margin of T full-data models (the control, as in App. F.1: the brittleness
audit's unedited models) minus the mean margin of T models trained on the full training set without
S. The audit reports the Spearman and Pearson correlations of predicted against actual effect over
every (target, heuristic, k) point and per heuristic.

Retraining goes through ``audit.retrain``: a model some job dir under RUN/retrain/ has already
finished (this audit's or another's, same edit, seed and trainer) is not trained again
(:func:`audit.retrain.run_rows`); the rest is one resumable plan, locally or on Ray.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from pydantic import Field

from audit import pipeline
from audit.audits import baselines
from audit.audits.support import (check_k_grid, default_k_grid as support_grid, default_replicates, retrain_rate,
                                  sample_targets)
from audit.contract import (Block, Cost, Line, Metric, Result, Step, Table, file_stamp, read_result, require,
                            setting)
from audit.data.dataset import Dataset
from audit.errors import AuditError
from audit.execution import ENGINES, address_setting, engine_setting
from audit.jsonio import write_csv, write_json
from audit.progress import SILENT, Progress
from audit.reference import REFERENCE_FILE, Reference, load_reference
from audit.retrain import REMOVE, finished_margins, RetrainPlan, run_rows
from audit.seeding import STREAM_COUNTERFACTUAL
from audit.store import RunStore
from audit.training.registry import trainer_from_config

HEURISTICS = ("top", "bottom", "random", "random_same_class", "representation")
N_SIZES = 6  # sizes of removed sets per heuristic, as in the paper's Fig. 8
NO_REFERENCE = ("the run has no reference features (RUN/reference.npz); `audit brittleness RUN` trains the "
                "reference models, then run this audit again")


def default_k_grid(n_train: int) -> list[int]:
    """The six smallest sizes of the support audits' grid for ``n_train`` training examples (module docstring)."""
    return support_grid(n_train)[:N_SIZES]


@dataclass(frozen=True)
class CounterfactualConfig:
    """Settings of the counterfactual audit (targets, replicates and seed as the support audits', so their
    retrained models are shared)."""

    n: int = setting(100, "--n", "test targets, class-balanced sample (fixed seed)", aliases=("--audit-targets",))
    T: int | None = setting(None, "--T", "models retrained per grid point (default sized for the dataset)",
                            aliases=("--audit-T",))
    k_grid: tuple[int, ...] | None = setting(None, "--k-grid", "comma-separated sizes of the removed sets (default: "
                                                               "the support grid's six smallest)",
                                             command_only=True, parse="ints")
    heuristics: tuple[str, ...] = setting(HEURISTICS, "--heuristics", "how the removed sets are chosen: "
                                                                      + ", ".join(HEURISTICS), parse="names")
    seed: int = setting(0, "--seed", "seed of the subsets, initialisations and data orders (and of the audits' "
                                     "target samples; >= 0)", minimum=0)
    engine: str = engine_setting()
    address: str | None = address_setting()


# ----- the removed sets --------------------------------------------------------------------
def removal_lists(heuristic: str, weights: np.ndarray, ref: Reference | None, y_train: np.ndarray,
                  targets: np.ndarray, y_targets: np.ndarray, K: int, seed: int) -> np.ndarray:
    """``[n_targets, K]`` training indices per target, in the order the heuristic adds them (-1 padded);
    the removed set of size k is a row's first k entries. ``weights``: the targets' datamodel rows."""
    n_train = len(y_train)
    if heuristic == "top":
        return np.argsort(-np.asarray(weights, np.float32), axis=1, kind="stable")[:, :K].astype(np.int64)
    if heuristic == "bottom":
        return np.argsort(np.asarray(weights, np.float32), axis=1, kind="stable")[:, :K].astype(np.int64)
    if heuristic == "random":  # one draw per (seed, target): the same set whichever other targets are sampled
        return np.stack([np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(STREAM_COUNTERFACTUAL, int(t))))
                         .choice(n_train, size=K, replace=False) for t in targets]).astype(np.int64)
    if heuristic == "random_same_class":  # the brittleness audit's "random" ranking, same draw
        return np.asarray(baselines.random_same_class(y_train, y_targets, K, seed), dtype=np.int64)
    if heuristic == "representation":
        if ref is None:
            raise AuditError(NO_REFERENCE)
        _, idx = baselines.nearest_neighbours(ref.train_features(n_train), ref.test_features(n_train)[targets], K)
        return np.asarray(idx, dtype=np.int64)
    raise AuditError(f"unknown heuristic '{heuristic}': choose among {', '.join(HEURISTICS)}")


def predicted_effects(weights: np.ndarray, lists: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """Σ of each target's weights over the first k entries of its list, for every k: ``[n_t, K], -> [n_t, len(ks)]``."""
    w = np.asarray(weights, dtype=np.float64)
    picked = np.where(lists >= 0, np.take_along_axis(w, np.maximum(lists, 0), axis=1), 0.0)
    csum = np.concatenate([np.zeros((len(w), 1)), np.cumsum(picked, axis=1)], axis=1)
    return csum[:, list(ks)]


def correlation(pred: np.ndarray, actual: np.ndarray) -> "Correlation":
    """Spearman and Pearson of predicted against actual effect over the points where both are finite
    (None below three points or when either side is constant)."""
    pred, actual = np.asarray(pred, np.float64), np.asarray(actual, np.float64)
    ok = np.isfinite(pred) & np.isfinite(actual)
    p, a = pred[ok], actual[ok]
    if len(p) < 3 or np.ptp(p) == 0 or np.ptp(a) == 0:
        return Correlation(n_points=int(ok.sum()))
    from scipy import stats  # with the command line it would cost half a second

    return Correlation(n_points=int(ok.sum()), spearman=float(stats.spearmanr(p, a).statistic),
                       pearson=float(stats.pearsonr(p, a).statistic))


# ----- the typed result ------------------------------------------------------------------------
class Correlation(Result):
    n_points: int
    spearman: float | None = None
    pearson: float | None = None


class CounterfactualPoint(Result):
    """One (target, heuristic, k): the removed set's predicted and actual effect on the target's margin."""

    target: int
    label: int
    label_name: str
    heuristic: str
    k: int
    size: int  # examples actually removed (fewer than k when a class has fewer)
    predicted: float
    actual: float | None = None
    full_margin: float | None = None
    margin_without: float | None = None
    n_models: int  # retrained models (of T) with a finite margin


class CounterfactualResult(Result):
    """audits/counterfactual.json."""

    n_targets: int
    T: int
    k_grid: list[int]
    heuristics: list[str]  # those that ran
    skipped: dict[str, str] = {}  # heuristic -> why it did not run
    seed: int
    overall: Correlation
    per_heuristic: dict[str, Correlation]
    full_data_accuracy: float | None = None
    models_trained_now: int
    models_reused: int  # rows answered by models already trained (by this audit before, or by brittleness)
    n_rows: int
    seconds: float
    points: list[CounterfactualPoint]
    json_path: str = Field("", alias="json")
    csv_path: str = Field("", alias="csv")


POINT_COLUMNS = ["target", "label", "label_name", "heuristic", "k", "size", "predicted", "actual", "full_margin",
                 "margin_without", "n_models"]


# ----- the audit ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Requests:
    """The rows an audit asks the retraining for, and what it needs to read their margins back."""

    targets: np.ndarray
    heuristics: list[str]
    skipped: dict[str, str]
    ks: list[int]  # 0 (the full-data control) then the grid
    T: int
    lists: np.ndarray  # [n_t, n_h, K]
    weights: np.ndarray  # [n_t, n_train] the targets' datamodel rows
    rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # list, k, replicate, target

    @property
    def n_rows(self) -> int:
        return len(self.rows[0])


def requests(store: RunStore, dm: Any, ds: Dataset, config: CounterfactualConfig) -> Requests:
    """Check the settings and build every (target, heuristic, k, replicate) row, plus the full-data rows."""
    heuristics = list(dict.fromkeys(config.heuristics))
    unknown = [h for h in heuristics if h not in HEURISTICS]
    if not heuristics or unknown:
        raise AuditError(f"heuristics must be among {', '.join(HEURISTICS)} (got {', '.join(unknown or heuristics) or 'none'})")
    if config.engine not in ENGINES:
        raise AuditError(f"unknown engine '{config.engine}': use local or ray")
    c = store.config
    T = default_replicates(c.n_train) if config.T is None else int(config.T)
    if T < 1:
        raise AuditError(f"T (models per grid point) must be at least 1 (got {T})")
    grid = check_k_grid(default_k_grid(c.n_train) if config.k_grid is None else config.k_grid, c.n_train)
    tgt = sample_targets(ds.y_test, config.n, config.seed)
    ref = load_reference(store.path) if "representation" in heuristics else None
    skipped = {"representation": NO_REFERENCE} if "representation" in heuristics and ref is None else {}
    heuristics = [h for h in heuristics if h not in skipped]
    if not heuristics:
        raise AuditError(f"no heuristic can run: {NO_REFERENCE}")
    weights = np.asarray(dm.weights[c.n_train + tgt], dtype=np.float32)
    y_t = ds.y_test[tgt]
    K = grid[-1]
    lists = np.stack([removal_lists(h, weights, ref, ds.y_train, tgt, y_t, K, config.seed) for h in heuristics], axis=1)
    ks = [0] + grid
    n_t, n_h = len(tgt), len(heuristics)
    ti, hi, gi, ri = (a.ravel() for a in np.meshgrid(np.arange(n_t), np.arange(n_h), np.arange(len(ks)), np.arange(T),
                                                     indexing="ij"))
    rows = (ti * n_h + hi, np.asarray(ks)[gi], ri, c.n_train + tgt[ti])
    return Requests(targets=tgt, heuristics=heuristics, skipped=skipped, ks=ks, T=T, lists=lists, weights=weights,
                    rows=rows)


def run_counterfactual(run_dir: Path | str, config: CounterfactualConfig = CounterfactualConfig(), *,
                       dataset: Dataset | None = None, block_size: int | None = None,
                       progress: Progress = SILENT) -> CounterfactualResult:
    """Retrain what is missing, compare predicted and actual effects, save audits/counterfactual.{json,csv}."""
    start = time.perf_counter()
    store, dm, ds = pipeline.open_fitted(Path(run_dir), dataset)
    c = store.config
    req = requests(store, dm, ds, config)
    n_t, n_h, K = req.lists.shape
    trainer = c.trainer if config.engine == "ray" else trainer_from_config(c.trainer)  # Ray: workers build it
    label = np.full(n_t * n_h, REMOVE, dtype=np.int64)
    margins, trained, reused = run_rows(
        store.path / "retrain", "counterfactual", req.lists.reshape(n_t * n_h, K), label, *req.rows, ds, trainer,
        seed=config.seed, trainer_config=c.trainer, fingerprint=c.fingerprint,
        block_size=int(block_size or min(c.block_size, 64)), progress=progress,
        options={"targets": req.targets, "T": req.T, "k_grid": req.ks[1:], "heuristics": req.heuristics,
                 "seed": config.seed}, description="retraining (counterfactual)", engine=config.engine,
        address=config.address)
    curves = margins.reshape(n_t, n_h, len(req.ks), req.T)
    counts = np.isfinite(curves).sum(axis=3)
    with np.errstate(invalid="ignore"):
        means = np.where(counts > 0, np.nansum(curves, axis=3) / np.maximum(counts, 1), np.nan)
    full = means[:, 0, 0]  # the unedited control models, shared by every heuristic
    y_t = ds.y_test[req.targets]
    points, pred_all, act_all = [], [], []
    per: dict[str, Correlation] = {}
    for h, name in enumerate(req.heuristics):
        pred = predicted_effects(req.weights, req.lists[:, h], req.ks[1:])
        actual = full[:, None] - means[:, h, 1:]
        per[name] = correlation(pred, actual)
        pred_all.append(pred.ravel()), act_all.append(actual.ravel())
        for t in range(n_t):
            for g, k in enumerate(req.ks[1:]):
                points.append(CounterfactualPoint(
                    target=int(req.targets[t]), label=int(y_t[t]), label_name=ds.classes[int(y_t[t])], heuristic=name,
                    k=int(k), size=int((req.lists[t, h, :k] >= 0).sum()), predicted=float(pred[t, g]),
                    actual=_f(actual[t, g]), full_margin=_f(full[t]), margin_without=_f(means[t, h, g + 1]),
                    n_models=int(counts[t, h, g + 1])))
    audits = store.path / "audits"
    result = CounterfactualResult(
        n_targets=n_t, T=req.T, k_grid=req.ks[1:], heuristics=req.heuristics, skipped=req.skipped, seed=config.seed,
        overall=correlation(np.concatenate(pred_all), np.concatenate(act_all)), per_heuristic=per,
        full_data_accuracy=float(np.mean(full[np.isfinite(full)] > 0)) if np.isfinite(full).any() else None,
        models_trained_now=int(trained), models_reused=int(reused), n_rows=req.n_rows,
        seconds=round(time.perf_counter() - start, 2), points=points,
        json=str(audits / "counterfactual.json"), csv=str(audits / "counterfactual.csv"))
    write_csv(audits / "counterfactual.csv", (p.to_json() for p in points), POINT_COLUMNS)
    write_json(audits / "counterfactual.json", result.to_json())
    return result


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _r(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


# ----- check -------------------------------------------------------------------------------------
def counterfactual_spearman(run_dir: Path, path: Path, p: Mapping[str, Any]) -> tuple[float | None, dict]:
    """The overall Spearman correlation of predicted and actual effects (audits/counterfactual.json)."""
    what = f"audit counterfactual {run_dir}"
    data = read_result(path, what)
    overall = require(data, ("overall",), path, what)
    value = overall.get("spearman") if isinstance(overall, dict) else None
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise AuditError(f"{path} has a non-numeric overall.spearman; run `{what}` again")
    return (None if value is None else float(value)), {"n_points": overall.get("n_points"),
                                                       "heuristics": data.get("heuristics")}


# ----- the step ------------------------------------------------------------------------------------
class CounterfactualStep(Step[CounterfactualConfig, CounterfactualResult]):
    """Counterfactual prediction: datamodel-predicted vs actual effect of removing training sets (retrains)."""

    name, title = "counterfactual", "Counterfactual prediction: removing training sets"
    config_type, result_type = CounterfactualConfig, CounterfactualResult
    files = {"result": "audits/counterfactual.json", "table": "audits/counterfactual.csv", "retrain": "retrain"}
    needs = (pipeline.FIT,)
    retrains = True
    in_run = False  # on digits it retrains ~2,400 models beyond the support audits' (README, "Counterfactual prediction")
    metrics = (Metric("min_counterfactual_spearman", "counterfactual prediction", "min", "correlation",
                      counterfactual_spearman, {},
                      lambda p: "Spearman of predicted vs actual effect of removing training sets (all heuristics)",
                      "audit counterfactual RUN"),)

    def compute(self, run_dir: Path, config: CounterfactualConfig, *, dataset: Dataset | None = None,
                progress: Progress = SILENT) -> CounterfactualResult:
        return run_counterfactual(run_dir, config, dataset=dataset, progress=progress)

    def input_digests(self, run_dir: Path) -> dict:
        """The fit's digest plus the reference models' file (its stamp): the representation heuristic's sets come
        from those features, so reference models trained (or retrained) after the step make it out of date."""
        return {**super().input_digests(run_dir), "reference": file_stamp(Path(run_dir) / REFERENCE_FILE)}

    def cost_detail(self, result: CounterfactualResult) -> str:
        return f"{result.models_trained_now:,} models retrained ({result.models_reused:,} rows reused)"

    def summary(self, r: CounterfactualResult) -> list[Block]:
        rows = [(h, str(c.n_points), _r(c.spearman), _r(c.pearson)) for h, c in r.per_heuristic.items()]
        rows.append(("all", str(r.overall.n_points), _r(r.overall.spearman), _r(r.overall.pearson)))
        out: list[Block] = [
            Table(f"counterfactual prediction: {r.n_targets} test targets, removed sets of k = "
                  f"{', '.join(map(str, r.k_grid))}, T={r.T} models each",
                  ("heuristic", "points", "Spearman", "Pearson"), tuple(rows)),
            Line("predicted effect: the sum of the removed examples' datamodel weights; actual: the full-data models' "
                 "mean margin minus that of the models retrained without them (1 = the datamodel ranks the effects "
                 "perfectly)")]
        for h, why in r.skipped.items():
            out.append(Line(f"{h} left out: {why}"))
        out.append(Line(f"full-data accuracy on the targets {_r(r.full_data_accuracy)}; {r.models_trained_now} models "
                        f"trained now, {r.models_reused} of {r.n_rows} rows answered by models already trained; "
                        f"{r.seconds:.0f}s"))
        return out

    def cost(self, run_dir: Path | str, config: CounterfactualConfig | None = None) -> Cost | None:
        """The models still to train: the plan's rows less those already trained by this or another audit."""
        config = config or CounterfactualConfig()
        run_dir = Path(run_dir)
        store, dm, ds = pipeline.open_fitted(run_dir)
        c = store.config
        req = requests(store, dm, ds, config)
        n_t, n_h, K = req.lists.shape
        plan = RetrainPlan.build(req.lists.reshape(n_t * n_h, K), np.full(n_t * n_h, REMOVE), *req.rows)
        found = finished_margins(store.path / "retrain", seed=config.seed, trainer=c.trainer, fingerprint=c.fingerprint)
        keys = plan.job_keys()
        todo = {plan.row_job[row] for row, t in enumerate(plan.row_target.tolist())
                if (keys[plan.row_job[row]], t) not in found}
        rate, slowdown, kind = retrain_rate(run_dir, c.alpha)
        return Cost(models=len(todo), rate=rate, slowdown=slowdown, measured_on=kind,
                    detail=f"{n_t} test targets x {n_h} heuristics x {len(req.ks) - 1} sizes x T={req.T}, plus the "
                           f"T full-data models, less {plan.n_jobs - len(todo):,} already trained",
                    cheaper="--n, --T or --heuristics")


COUNTERFACTUAL = CounterfactualStep()
