"""Data support (brittleness) and label-flip support of test predictions (paper §4.1.1, App. F.3/F.4).

For a test target, a *ranking* orders the training examples (datamodel weights, or a
baseline). The search retrains T models on the full training set with the top k of the
ranking removed (``mode='remove'``) or relabelled to the target's most likely wrong class
(``mode='relabel'``), for every k of a grid, and records the target's mean margin. An
isotonic (decreasing) fit of mean margin against k gives the zero crossing k*; retraining
with the top ⌈1.2·k*⌉ edited *certifies* the support when the mean margin there is < 0.

The pure pieces (heuristic, isotonic crossing, certification rule, summaries) are plain
functions; ``run_brittleness`` wires them to the run directory and to ``audit.retrain``.
"""

from __future__ import annotations

import math
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
from pydantic import Field, StrictBool, StrictInt, ValidationError

from audit import pipeline
from audit import scores
from audit.audits import baselines
from audit.contract import (Block, Cost, Finding, Line, Metric, Param, Result, Step, Table, read_result, require,
                            setting)
from audit.data.dataset import Dataset
from audit.errors import AuditError
from audit.release import require_finite_rows, weight_rows
from audit.execution import ENGINES, address_setting, engine_setting
from audit.jsonio import read_json, write_csv, write_json
from audit.progress import SILENT, Progress
from audit.reference import reference_models, user_features
from audit.retrain import PLAN_JSON, REMOVE, RetrainPlan, run_plan
from audit.seeding import STREAM_TARGETS, sample_rng
from audit.training.registry import trainer_from_config

MODES = ("remove", "relabel")
METHODS = ("datamodels", "representation", "random")
DATAMODEL_RANKINGS = ("auto", "weights", "embedding")  # how the datamodels rank (``datamodel_ranking_for``)
DATAMODEL_RANKING_HELP = ("how the datamodels rank training examples: weights (largest first), embedding (nearest "
                          "datamodel rows, cosine) or auto (weights to remove, embedding to relabel, both in turn "
                          "for leakage; in `audit run` one value serves every audit)")
NEIGHBOUR_CHUNK_BYTES = 2**28  # train rows of datamodel weights read at once by the embedding neighbours
QUERY_CHUNK_BYTES = 2**30  # target rows whose embedding neighbours are searched at once
RANKING_WORDS = {"weights": "their largest weights", "embedding": "their nearest datamodel embeddings (cosine)",
                 "both": "their nearest datamodel embeddings and largest weights, in turn"}
PAPER_GRID = (10, 20, 40, 80, 160, 320, 640, 1280)  # for CIFAR-10's 50,000 training examples
PAPER_N_TRAIN = 50_000
VERIFY_FACTOR = 1.2
NOT_FOUND = -1  # heuristic: the positive weights never add up to the predicted margin


# ----- options ---------------------------------------------------------------------------
def default_k_grid(n_train: int) -> list[int]:
    """A geometric grid of edit sizes sized for the training set.

    From 10,000 examples up: the paper's grid (10..1280 for CIFAR-10's 50k) scaled to
    ``n_train``. Below that the scaled grid would stop at a few examples, and CPU models on
    small data are less brittle than a ResNet on CIFAR: powers of two from 2 up to ~5% of
    the training set (digits, 1,297: 2..64, about half of a class; the paper's 1280 is a
    quarter of a CIFAR-10 class). The grid should stay well below a class: near a whole
    class every same-class ranking (the baselines) removes the class and flips the target,
    which says nothing about brittleness (measured on digits: README, "Brittleness audits").
    """
    scale = n_train / PAPER_N_TRAIN
    if scale >= 0.2:
        grid = sorted({max(1, int(round(k * scale))) for k in PAPER_GRID})
    else:
        top = max(1, int(np.floor(np.log2(max(2.0, 0.05 * n_train)))))
        grid = [2 ** i for i in range(1, top + 1)]
    return [k for k in grid if k < n_train]


def default_replicates(n_train: int) -> int:
    """Models per grid point: 2 for CPU-sized data (the small MLPs' margins vary little between
    seeds, and the isotonic fit pools neighbouring grid points), 8 beyond."""
    return 2 if n_train <= 10_000 else 8


def check_k_grid(k_grid: Sequence[int], n_train: int) -> list[int]:
    grid = [int(k) for k in k_grid]
    if not grid or any(k < 1 for k in grid) or grid != sorted(set(grid)):
        raise AuditError(f"the k grid must be increasing positive integers (got {list(k_grid)})")
    if grid[-1] >= n_train:
        raise AuditError(f"the k grid reaches {grid[-1]}; edit fewer than the {n_train} training examples (the "
                         f"largest k must leave some to train on)")
    return grid


def sample_targets(y_test: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` test indices, class-balanced (round-robin over classes), drawn with a fixed seed; sorted."""
    y_test = np.asarray(y_test)
    check_n(n)
    if n >= len(y_test):
        return np.arange(len(y_test))
    rng = sample_rng(seed, STREAM_TARGETS)
    classes = np.unique(y_test)
    pools = [list(rng.permutation(np.flatnonzero(y_test == c))) for c in rng.permutation(classes)]
    picked: list[int] = []
    depth = 0
    while len(picked) < n:
        for pool in pools:
            if depth < len(pool) and len(picked) < n:
                picked.append(int(pool[depth]))
        depth += 1
    return np.sort(np.asarray(picked, dtype=np.int64))


def check_n(n: int) -> None:
    if n < 1:
        raise AuditError(f"the number of targets must be at least 1 (got {n})")


def check_search(run_dir: Path | str, n_train: int, n_test: int, *, methods: Sequence[str], T: int | None,
                 k_grid: Sequence[int] | None, n: int, targets: Sequence[int] | None) -> tuple[int, list[int], int]:
    """The search's settings checked against the run, before anything is shown or trained: ``(T, k grid, number
    of targets)``; one line for the first that no search of this run can use."""
    scores.check_methods(run_dir, methods, METHODS)
    T = default_replicates(n_train) if T is None else int(T)
    if T < 1:
        raise AuditError(f"T (models per grid point) must be at least 1 (got {T})")
    grid = check_k_grid(default_k_grid(n_train) if k_grid is None else k_grid, n_train)
    if targets is not None:
        return T, grid, len(check_targets(targets, n_test))
    check_n(n)
    return T, grid, min(n_test, n)


def check_targets(targets: Sequence[int], n_test: int) -> np.ndarray:
    t = np.asarray(list(targets), dtype=np.int64)
    if len(t) == 0:
        raise AuditError("--targets is empty; name test indices like 3,17,42")
    bad = t[(t < 0) | (t >= n_test)]
    if len(bad):
        raise AuditError(f"target {int(bad[0])} is not a test index (there are {n_test} test examples: 0..{n_test - 1})")
    if len(np.unique(t)) != len(t):
        raise AuditError("--targets names a test index twice")
    return t


# ----- rankings and the heuristic --------------------------------------------------------
def datamodel_ranking(weights: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` training indices by weight (largest first, ties by index): ``[n_t, n_train] -> [n_t, k]``."""
    weights = np.asarray(weights, dtype=np.float32)
    return np.argsort(-weights, axis=1, kind="stable")[:, :k].astype(np.int64)


def embedding_cosine_blocks(weights: Any, rows: np.ndarray, n_train: int, chunk: int | None = None,
                            progress: Progress = SILENT) -> Iterator[tuple[int, np.ndarray]]:
    """The cosine of each target's datamodel embedding with every training example's, a block of training
    examples at a time: ``(start, [len(rows), block])``.

    ``weights`` holds every target's datamodel row, train targets first (``[n_train + n_test, n_train]``, an
    array or a memory map); ``rows`` are the targets' row numbers. A row scaled to unit length is the target's
    datamodel embedding (paper §4.3, as ``audit embed``; all-zero rows stay zero, cosine 0): two images are
    close when the same training examples raise and lower their predictions. Training example ``i``'s
    embedding is its own row (train target ``i``). The train rows are read ``chunk`` at a time (default:
    about 256 MB of float32), so the [n_train, n_train] block (10 GB for CIFAR-10) is never in memory.
    """
    weights = weight_rows(weights)
    chunk = chunk or max(1, NEIGHBOUR_CHUNK_BYTES // (4 * n_train))
    rows = np.asarray(rows, dtype=np.int64)
    query = np.asarray(weights[rows], dtype=np.float32)
    require_finite_rows(query, rows)
    query = baselines.normalise_rows(query, "datamodel weights")
    with progress.task("nearest datamodel embeddings", total=n_train, unit="rows") as bar:
        for start in range(0, n_train, chunk):
            block = np.asarray(weights[start:min(start + chunk, n_train)], dtype=np.float32)
            require_finite_rows(block, np.arange(start, start + len(block)))
            block = baselines.normalise_rows(block, "datamodel weights")
            yield start, np.ascontiguousarray(query @ block.T, dtype=np.float32)
            bar.advance(len(block))


def nearest_embeddings(weights: Any, rows: np.ndarray, n_train: int, k: int, chunk: int | None = None,
                       query_rows: int | None = None, progress: Progress = SILENT) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` training examples nearest each target in datamodel-embedding space (cosine,
    :func:`embedding_cosine_blocks`): ``(cosines, indices)``, each ``[len(rows), k]``, equal cosines in index
    order. The best ``k`` are kept with faiss's ``ResultHeap``; the targets are taken ``query_rows`` at a time
    (default: about 1 GB of float32 rows), each batch reading the train rows once."""
    import faiss

    rows = np.asarray(rows, dtype=np.int64)
    k = min(int(k), n_train)
    query_rows = query_rows or max(1, QUERY_CHUNK_BYTES // (4 * n_train))
    cos = np.zeros((len(rows), k), np.float32)
    idx = np.full((len(rows), k), -1, np.int64)
    for q0 in range(0, len(rows), query_rows):
        part = rows[q0:q0 + query_rows]
        heap = faiss.ResultHeap(len(part), k, keep_max=True)
        for start, block in embedding_cosine_blocks(weights, part, n_train, chunk, progress):
            ids = np.broadcast_to(np.arange(start, start + block.shape[1], dtype=np.int64), block.shape)
            heap.add_result(block, np.ascontiguousarray(ids))
        heap.finalize()
        order = np.lexsort((heap.I, -heap.D), axis=-1)  # equal cosines (all-zero rows) in index order, as the weights'
        idx[q0:q0 + len(part)] = np.take_along_axis(heap.I, order, axis=1)
        cos[q0:q0 + len(part)] = np.take_along_axis(heap.D, order, axis=1)
    return cos, idx


def datamodel_neighbours(weights: Any, rows: np.ndarray, n_train: int, k: int, chunk: int | None = None,
                         progress: Progress = SILENT) -> np.ndarray:
    """Top-``k`` training examples nearest each target in datamodel-embedding space: ``[len(rows), k]``
    (:func:`nearest_embeddings`' indices)."""
    return nearest_embeddings(weights, rows, n_train, k, chunk=chunk, progress=progress)[1]


def datamodel_top(weights: Any, rows: np.ndarray, n_train: int, k: int, ranking: str,
                  y_train: np.ndarray | None = None, wrong: np.ndarray | None = None) -> np.ndarray:
    """The datamodel ranking's first ``k`` training examples for the targets in ``rows`` (every datamodel row in
    ``weights``, train targets first): by largest weight or nearest embedding (``ranking``); relabelling to
    ``wrong`` (a class per target) skips the examples already of that class, -1 padded. ``[len(rows), k]``."""
    wide = k if wrong is None else min(n_train, 2 * k)
    if ranking == "embedding":
        lists = datamodel_neighbours(weights, rows, n_train, wide)
    else:
        lists = datamodel_ranking(np.asarray(weights[np.asarray(rows, dtype=np.int64)], dtype=np.float32), wide)
    return lists if wrong is None else without_no_op_flips(lists, y_train, wrong, k)


def predicted_full_margin(weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The datamodel's margin with every training example present: bias + sum(weights)."""
    return np.asarray(bias, dtype=np.float64) + np.asarray(weights, dtype=np.float64).sum(axis=1)


def heuristic_support(weights: np.ndarray, bias: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Smallest k whose k largest weights add up to the predicted full-data margin.

    0 where the predicted margin is already ≤ 0; ``NOT_FOUND`` (-1) where even all the
    positive weights do not reach it. Returns int64 ``[n_targets]``.
    """
    weights = weight_rows(weights)  # read a chunk of rows at a time
    out = np.empty(len(weights), dtype=np.int64)
    for start in range(0, len(weights), chunk):
        w = np.asarray(weights[start:start + chunk], dtype=np.float64)
        margin = np.asarray(bias[start:start + chunk], dtype=np.float64) + w.sum(axis=1)
        csum = np.cumsum(-np.sort(-w, axis=1), axis=1)
        reached = csum >= margin[:, None]
        k = np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, NOT_FOUND)
        out[start:start + chunk] = np.where(margin <= 0, 0, k)
    return out


# ----- the isotonic zero crossing and the certification rule ----------------------------
def isotonic_fit(ks: Sequence[float], mean_margins: Sequence[float], weights: Sequence[float] | None = None) -> np.ndarray:
    """Decreasing isotonic regression of mean margin against k (scikit-learn)."""
    from sklearn.isotonic import IsotonicRegression

    ks = np.asarray(ks, dtype=np.float64)
    y = np.asarray(mean_margins, dtype=np.float64)
    return IsotonicRegression(increasing=False).fit(ks, y, sample_weight=weights).predict(ks)


def zero_crossing(ks: Sequence[float], fitted: Sequence[float]) -> float | None:
    """First k where a decreasing curve reaches ≤ 0, linearly interpolated; None if it never does."""
    ks = np.asarray(ks, dtype=np.float64)
    f = np.asarray(fitted, dtype=np.float64)
    below = np.flatnonzero(f <= 0)
    if len(below) == 0:
        return None
    i = int(below[0])
    if i == 0:
        return float(ks[0])
    k0, k1, f0, f1 = ks[i - 1], ks[i], f[i - 1], f[i]
    return float(k0 + f0 * (k1 - k0) / (f0 - f1))


def estimate_support(ks: Sequence[int], mean_margins: Sequence[float], counts: Sequence[float] | None = None,
                     full_margin: float | None = None) -> tuple[float | None, np.ndarray]:
    """k* from a margin curve: 0 when the full-data mean margin is < 0, else the isotonic zero crossing.

    ``ks``/``mean_margins`` may include k=0 (the full-data point); grid points with no
    finite margin (every replicate diverged) are dropped. Returns (k*, fitted curve).
    """
    ks = np.asarray(ks, dtype=np.float64)
    y = np.asarray(mean_margins, dtype=np.float64)
    w = np.ones_like(y) if counts is None else np.asarray(counts, dtype=np.float64)
    ok = np.isfinite(y) & (w > 0)
    fitted = np.full_like(y, np.nan)
    if full_margin is not None and full_margin < 0:
        if ok.any():
            fitted[ok] = isotonic_fit(ks[ok], y[ok], w[ok])
        return 0.0, fitted
    if not ok.any():
        return None, fitted
    fitted[ok] = isotonic_fit(ks[ok], y[ok], w[ok])
    return zero_crossing(ks[ok], fitted[ok]), fitted


def verification_k(k_star: float) -> int:
    """⌈1.2·k*⌉ (0 for k* = 0), the edit size that is retrained to certify k*."""
    return int(math.ceil(VERIFY_FACTOR * k_star - 1e-9))


def is_certified(mean_margin: float) -> bool:
    """The verification counts when the target's mean margin is below zero there."""
    return bool(np.isfinite(mean_margin) and mean_margin < 0)


# ----- summaries -------------------------------------------------------------------------
def support_cdf(sizes: Sequence[float], ks: Sequence[int]) -> list[dict]:
    """Fraction of targets whose support size is ≤ k, for each k (sizes: inf = not found)."""
    s = np.asarray(sizes, dtype=np.float64)
    return [{"k": int(k), "fraction": float((s <= k).mean()) if len(s) else None} for k in ks]


def median_label(value: float, max_k: int) -> str:
    """A median support for people: the number, or '> max k' when it lies beyond the grid."""
    return f"> {max_k}" if not np.isfinite(value) else f"{value:g}"


def summarize_method(records: list[dict], method: str, max_k: int, cdf_ks: Sequence[int]) -> dict:
    """Per-method summary: fraction certified, median certified support / k*, CDF of support sizes.

    A target's certified support is the edit size that was verified (⌈1.2·k*⌉, 0 for targets
    already wrong); targets not certified count as infinite (support beyond the grid).
    """
    res = [r["methods"][method] for r in records]
    certified = np.array([r["certified"] for r in res], dtype=bool)
    sizes = np.array([r["certified_support"] if r["certified"] else np.inf for r in res], dtype=np.float64)
    kstar = np.array([np.inf if r["k_star"] is None else r["k_star"] for r in res], dtype=np.float64)
    med_size = float(np.median(sizes)) if len(sizes) else float("nan")
    med_kstar = float(np.median(kstar)) if len(kstar) else float("nan")
    return {
        "n_targets": len(res),
        "fraction_certified": float(certified.mean()) if len(res) else None,
        "median_certified_support": med_size,
        "median_certified_support_label": median_label(med_size, max_k),
        "median_k_star": med_kstar,
        "median_k_star_label": median_label(med_kstar, max_k),
        "fraction_no_crossing": float(np.mean([r["k_star"] is None for r in res])) if len(res) else None,
        "cdf": support_cdf(sizes, cdf_ks),
    }


def ranking_verdict(per_method: dict[str, dict], mode: str) -> dict | None:
    """Which ranking found the smaller supports, in a sentence a user can act on (None without datamodels
    or without a ranking to compare them with).

    Ranking a does better than b when it certifies more targets by more than twice the binomial standard
    error of the difference, or as many within that error, and has a median certified support no larger,
    strictly better on one count (two medians beyond the grid are equal: nothing is known of either).
    Random is compared but never recommended. ``per_method``: the summaries of :func:`summarize_method`.
    """
    if "datamodels" not in per_method or len(per_method) < 2:
        return None
    task = "removal (brittleness)" if mode == "remove" else "label-flip"

    def frac(m: str) -> float:
        return float(per_method[m].get("fraction_certified") or 0.0)

    def median(m: str) -> float:
        return float(per_method[m]["median_certified_support"])

    def said(m: str) -> str:
        r = per_method[m]
        return (f"{m} certified {_f2(r.get('fraction_certified'))} of {r['n_targets']} targets "
                f"(median support {r['median_certified_support_label']})")

    def frac_cmp(a: str, b: str) -> int:
        na, nb = max(1, int(per_method[a]["n_targets"])), max(1, int(per_method[b]["n_targets"]))
        fa, fb = frac(a), frac(b)
        se = math.sqrt(fa * (1 - fa) / na + fb * (1 - fb) / nb)
        return 0 if abs(fa - fb) <= 2 * se else (1 if fa > fb else -1)

    def med_cmp(a: str, b: str) -> int:
        sa, sb = median(a), median(b)
        return 0 if sa == sb else (1 if sa < sb else -1)

    def better(a: str, b: str) -> bool:
        f, m = frac_cmp(a, b), med_cmp(a, b)
        return f >= 0 and m >= 0 and (f > 0 or m > 0)

    def noise(a: str, b: str) -> str:
        return " (the fractions certified differ by less than their sampling error; the medians decide)" \
            if frac_cmp(a, b) == 0 and frac(a) != frac(b) else ""

    others = [m for m in per_method if m != "datamodels"]
    if all(frac(m) == 0 for m in per_method):
        return {"best": None, "datamodels_lose": False,
                "text": f"No ranking certified a {task} support within the grid in this run: "
                        + ", ".join(said(m) for m in per_method) + "."}
    winners = sorted((m for m in others if m != "random" and better(m, "datamodels")),
                     key=lambda m: (-frac(m), median(m)))
    if winners:
        w = winners[0]
        return {"best": w, "datamodels_lose": True,
                "text": f"Datamodels lose to the {w} ranking on {task} support in this run: {said(w)}, "
                        f"{said('datamodels')}{noise(w, 'datamodels')}. On this data, trust the {w} ranking's "
                        f"support sets for this audit."}
    if "random" in others and better("random", "datamodels"):
        return {"best": None, "datamodels_lose": True,
                "text": f"Datamodels do worse than a random ranking on {task} support in this run: {said('random')}, "
                        f"{said('datamodels')}{noise('random', 'datamodels')}. Their support sets are no evidence "
                        f"here; fit them on more models before reading this audit."}
    beaten = [m for m in others if better("datamodels", m)]
    if len(beaten) == len(others):
        rival = max(others, key=lambda m: (m != "random", frac(m), -median(m)))
        return {"best": "datamodels", "datamodels_lose": False,
                "text": f"Datamodels find the smallest {task} supports in this run: {said('datamodels')}, "
                        f"{'the best other ranking' if len(others) > 1 else 'against'} {said(rival)}"
                        f"{noise('datamodels', rival)}."}
    level = [m for m in others if m not in beaten]
    if level == ["random"]:
        return {"best": None, "datamodels_lose": False,
                "text": f"Datamodels are not clearly better than a random ranking on {task} support in this run: "
                        f"{said('datamodels')}, {said('random')}; read their support sets with care."}
    level = [m for m in level if m != "random"]
    close = any(frac_cmp("datamodels", m) == 0 and frac("datamodels") != frac(m) for m in level)
    why = ("the fractions certified differ by less than twice their sampling error: audit more targets (--n) to "
           "tell them apart" if close else "one certifies more targets, the other smaller supports")
    return {"best": None, "datamodels_lose": False,
            "text": f"Neither datamodels nor {' nor '.join(level)} is clearly ahead on {task} support in this run: "
                    f"{said('datamodels')}, " + ", ".join(said(m) for m in level)
                    + f" ({why}); compare their support sets target by target."}


def wrong_classes(mean_logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per target, the class other than ``y`` with the largest mean logit: ``[n, C], [n] -> [n]``."""
    logits = np.array(mean_logits, dtype=np.float64, copy=True)
    y = np.asarray(y, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(y):
        raise AuditError(f"mean logits {logits.shape} do not match {len(y)} targets")
    if logits.shape[1] < 2:
        raise AuditError("relabelling needs at least two classes")
    logits[np.arange(len(y)), y] = -np.inf
    return logits.argmax(axis=1).astype(np.int64)



@dataclass(frozen=True)
class SupportConfig:
    """Settings of the brittleness and mislabel audits (the support search)."""

    n: int = setting(100, "--n", "test targets, class-balanced sample (fixed seed)", aliases=("--audit-targets",))
    targets: tuple[int, ...] | None = setting(None, "--targets", "comma-separated test indices (instead of --n)",
                                              command_only=True, parse="ints")
    T: int | None = setting(None, "--T", "models retrained per grid point (default sized for the dataset)",
                            aliases=("--audit-T",))
    k_grid: tuple[int, ...] | None = setting(None, "--k-grid", "comma-separated k values (default: the paper's "
                                                               "grid, scaled)", command_only=True, parse="ints")
    methods: tuple[str, ...] = setting(METHODS, "--methods", "rankings to search: datamodels, representation, "
                                                              "random, and any score matrix of the run (audit "
                                                              "import-scores, audit gradients)", parse="names")
    datamodel_ranking: str = setting("auto", "--datamodel-ranking", DATAMODEL_RANKING_HELP)
    features: str | None = setting(None, "--features", "your own features [n_train + n_test, d] (.npy/.npz) for the "
                                                       "representation baseline instead of the reference models'")
    all_heuristic: bool = setting(False, "--all-heuristic", "also the heuristic support of every test example",
                                  command_only=True)
    seed: int = setting(0, "--seed", "seed of the subsets, initialisations and data orders (and of the audits' "
                                     "target samples; >= 0)", minimum=0)
    engine: str = engine_setting()
    address: str | None = address_setting()

    def check(self) -> None:
        """One line for a setting no search can use, before anything runs (``audit run`` calls it first)."""
        datamodel_ranking_for("remove", self.datamodel_ranking)


# ----- the search ------------------------------------------------------------------------
def run_brittleness(run_dir: Path | str, *, mode: str = "remove", n: int = SupportConfig.n,
                    targets: Sequence[int] | None = None,
                    T: int | None = None, k_grid: Sequence[int] | None = None,
                    methods: Sequence[str] = METHODS, seed: int = 0, all_heuristic: bool = False,
                    block_size: int | None = None, dataset=None, engine: str = "local", address: str | None = None,
                    features: Path | str | None = None, datamodel_ranking: str = "auto",
                    progress: Progress = SILENT) -> dict:
    """Run the support search for ``n`` class-balanced test targets (or ``targets``) and save it.

    ``mode='remove'`` writes RUN/audits/brittleness.{json,csv}; ``mode='relabel'`` writes
    RUN/audits/mislabel.{json,csv}. Retraining is resumable (RUN/retrain/...). Returns the
    summary dict (also the JSON's "summary"). ``engine='ray'`` trains the retraining blocks as Ray
    tasks (``address``: an existing cluster, None: a local instance); the results are the same.
    """
    start = time.perf_counter()
    if mode not in MODES:
        raise AuditError(f"unknown mode '{mode}': use remove or relabel")
    methods = list(dict.fromkeys(methods))
    dm_ranking = datamodel_ranking_for(mode, datamodel_ranking)
    if engine not in ENGINES:
        raise AuditError(f"unknown engine '{engine}': use local or ray")
    store, dm, ds = pipeline.open_fitted(run_dir, dataset)
    c = store.config
    T, grid, _ = check_search(store.path, c.n_train, c.n_test, methods=methods, T=T, k_grid=k_grid, n=n,
                              targets=targets)
    matrices = scores.pick(store.path, methods, METHODS, c.n_train, c.n_test)
    tgt = sample_targets(ds.y_test, n, seed) if targets is None else check_targets(targets, c.n_test)
    n_t, n_m, K = len(tgt), len(methods), min(c.n_train, verification_k(grid[-1]))
    rows_dm = c.n_train + tgt  # datamodel rows of the targets (train targets come first)
    weights = np.asarray(dm.weights[rows_dm], dtype=np.float32)
    bias = np.asarray(dm.bias[rows_dm], dtype=np.float32)

    # the trainer first: a run that cannot retrain (an imported one) says so before any reference model is made
    trainer = c.trainer if engine == "ray" else trainer_from_config(c.trainer)  # Ray: workers build it
    # rankings, one candidate list per (target, method)
    own = user_features(features, c.n_train, c.n_test) if features is not None else None  # --features
    need_ref = ("representation" in methods and own is None) or mode == "relabel"
    ref = reference_models(store, ds, progress=progress, engine=engine, address=address) if need_ref else None
    feats = own if own is not None else (ref.features if ref is not None else None)
    y_t = ds.y_test[tgt]
    wrong = wrong_classes(ref.mean_logits[c.n_train + tgt], y_t) if mode == "relabel" else None
    # relabelling an example that already carries the wrong class changes nothing: rank further instead
    wide = K if wrong is None else min(c.n_train, 2 * K)
    lists = np.full((n_t, n_m, K), -1, dtype=np.int64)
    for mi, method in enumerate(methods):
        ranked = scores.top_k(matrices[method].test_rows(tgt), wide) if method in matrices \
            else _ranking(method, weights, feats, ds, tgt, wide, seed,
                          embeddings=dm.weights if dm_ranking == "embedding" else None, progress=progress)
        lists[:, mi] = ranked if wrong is None else without_no_op_flips(ranked, ds.y_train, wrong, K)
    label = np.full((n_t, n_m), REMOVE, dtype=np.int64) if wrong is None else np.repeat(wrong[:, None], n_m, 1)

    bs = int(block_size or min(c.block_size, 64))
    common = dict(seed=seed, trainer_config=c.trainer, fingerprint=c.fingerprint, block_size=bs, engine=engine,
                  address=address)
    root = store.path / "retrain"
    name = "brittleness" if mode == "remove" else "mislabel"
    opts = {"mode": mode, "targets": tgt, "T": T, "k_grid": grid, "methods": methods, "seed": seed,
            "datamodel_ranking": dm_ranking}

    # phase 1: k = 0 (full data, shared by every target) and the grid
    ks = [0] + grid
    ti, mi, gi, ri = np.meshgrid(np.arange(n_t), np.arange(n_m), np.arange(len(ks)), np.arange(T), indexing="ij")
    ti, mi, gi, ri = ti.ravel(), mi.ravel(), gi.ravel(), ri.ravel()
    plan = RetrainPlan.build(lists.reshape(n_t * n_m, K), label.reshape(-1), ti * n_m + mi, np.asarray(ks)[gi], ri,
                             c.n_train + tgt[ti])
    margins, trained = run_plan(root, f"{name}-grid", plan, ds, trainer, options=opts, progress=progress,
                                description=f"retraining ({name}: grid)", **common)
    curves = margins.reshape(n_t, n_m, len(ks), T)
    counts = np.isfinite(curves).sum(axis=3)
    with np.errstate(invalid="ignore"):
        means = np.where(counts > 0, np.nansum(np.nan_to_num(curves, nan=0.0), axis=3) / np.maximum(counts, 1), np.nan)
    full = means[:, 0, 0]  # identical for every method (the same unedited models)

    # k* per (target, method), then phase 2: verify at ceil(1.2 k*) where the grid has no such point
    kstar = np.full((n_t, n_m), np.nan)
    fitted = np.full((n_t, n_m, len(ks)), np.nan)
    kv = np.full((n_t, n_m), -1, dtype=np.int64)
    for t in range(n_t):
        for m in range(n_m):
            k_, fitted[t, m] = estimate_support(ks, means[t, m], counts[t, m], full_margin=full[t])
            if k_ is not None:
                kstar[t, m], kv[t, m] = k_, min(K, verification_k(k_))
    verify = np.full((n_t, n_m), np.nan)
    on_grid = {k: i for i, k in enumerate(ks)}
    todo = [(t, m) for t in range(n_t) for m in range(n_m) if kv[t, m] >= 0 and int(kv[t, m]) not in on_grid]
    for t in range(n_t):
        for m in range(n_m):
            if kv[t, m] >= 0 and int(kv[t, m]) in on_grid:
                verify[t, m] = means[t, m, on_grid[int(kv[t, m])]]
    trained_verify = 0
    if todo:
        tt = np.repeat([t for t, _ in todo], T)
        mm = np.repeat([m for _, m in todo], T)
        rr = np.tile(np.arange(T), len(todo))
        vplan = RetrainPlan.build(lists.reshape(n_t * n_m, K), label.reshape(-1), tt * n_m + mm, kv[tt, mm], rr,
                                  c.n_train + tgt[tt])
        vmargins, trained_verify = run_plan(root, f"{name}-verify", vplan, ds, trainer, options=opts,
                                            progress=progress, description=f"retraining ({name}: verify)", **common)
        vm = vmargins.reshape(len(todo), T)
        with np.errstate(invalid="ignore"):
            vmean = np.nanmean(np.where(np.isfinite(vm), vm, np.nan), axis=1) if vm.size else vm
        for (t, m), v in zip(todo, vmean):
            verify[t, m] = v

    # records, summary, files
    heur = heuristic_support(weights, bias)
    pred = predicted_full_margin(weights, bias)
    records = []
    for t in range(n_t):
        rec = {"target": int(tgt[t]), "label": int(y_t[t]), "label_name": ds.classes[int(y_t[t])],
               "full_margin": _f(full[t]), "predicted_full_margin": _f(pred[t]),
               "heuristic_k": None if heur[t] == NOT_FOUND else int(heur[t]), "methods": {}}
        if wrong is not None:
            rec["wrong_class"] = int(wrong[t])
            rec["wrong_class_name"] = ds.classes[int(wrong[t])]
        for m, method in enumerate(methods):
            found = np.isfinite(kstar[t, m])
            cert = bool(found and is_certified(verify[t, m]))
            rec["methods"][method] = {
                "k_star": _f(kstar[t, m]) if found else None,
                "verify_k": int(kv[t, m]) if found else None,
                "verify_margin": _f(verify[t, m]) if found else None,
                "certified": cert,
                "certified_support": int(kv[t, m]) if cert else None,
                "edited": [int(j) for j in lists[t, m, :kv[t, m]] if j >= 0] if cert else None,
                "curve": {str(k): _f(means[t, m, i]) for i, k in enumerate(ks)},
                "fitted": {str(k): _f(fitted[t, m, i]) for i, k in enumerate(ks)},
            }
        records.append(rec)
    cdf_ks = sorted(set([0] + grid + [verification_k(grid[-1])]))
    per_method = {method: summarize_method(records, method, grid[-1], cdf_ks) for method in methods}
    summary = {
        "mode": mode, "n_targets": n_t, "T": T, "k_grid": grid, "max_k": grid[-1], "methods": methods, "seed": seed,
        "datamodel_ranking": dm_ranking,
        "representation_features": str(Path(features).absolute()) if features is not None else "reference models",
        "full_data_accuracy": float(np.mean(full > 0)),
        "per_method": per_method, "verdict": ranking_verdict(per_method, mode),
        "heuristic": _heuristic_summary(heur, cdf_ks),
        "models_trained_now": int(trained + trained_verify),
        "models_in_plan": int(plan.n_jobs + (vplan.n_jobs if todo else 0)),
        "seconds": round(time.perf_counter() - start, 2),
    }
    out = {"summary": summary, "targets": records}
    if all_heuristic:
        w_all = dm.weights[c.n_train:]
        h_all = heuristic_support(w_all, dm.bias[c.n_train:])
        out["heuristic_all"] = [None if h == NOT_FOUND else int(h) for h in h_all]
        summary["heuristic_all"] = _heuristic_summary(h_all, cdf_ks)
    audits = store.path / "audits"
    summary["json"] = str(audits / f"{name}.json")
    summary["csv"] = str(audits / f"{name}.csv")
    write_json(audits / f"{name}.json", out)
    columns, rows = _csv_rows(records, methods, wrong is not None)
    write_csv(audits / f"{name}.csv", rows, columns)
    return summary


def datamodel_ranking_for(mode: str, choice: str = "auto") -> str:
    """``weights``, ``embedding`` or ``both``: how the datamodels rank training examples in this audit
    (``mode``: ``remove`` or ``relabel`` for the support searches, ``leak`` for the leakage candidates).

    A datamodel weight estimates what *removing* the example does to the target, so removal ranks by the
    largest weights. Relabelling an example also adds a wrongly labelled point where it lies, which pulls
    the predictions of the images the models treat like it; the nearest datamodel embeddings (cosine of
    datamodel rows: images whose predictions the same training examples drive) rank that effect. Measured on
    digits (README, "Brittleness audits"): label flips certified 0.91 → 0.99 of 100 targets, median support
    9 → 4, against 1.00 and 3 for the representation ranking. A near-copy of a test image shows in both: its
    weight (the copy raises the image's margin) and its embedding (the same examples drive both), and each
    finds copies the other misses, so ``auto`` takes the two lists in turn for leakage (``both``; README,
    "Leakage").
    """
    if choice not in DATAMODEL_RANKINGS:
        raise AuditError(f"unknown --datamodel-ranking '{choice}': use {', '.join(DATAMODEL_RANKINGS)}")
    if choice != "auto":
        return choice
    return {"remove": "weights", "relabel": "embedding"}.get(mode, "both")


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None



def _heuristic_summary(h: np.ndarray, cdf_ks: Sequence[int]) -> dict:
    sizes = np.where(h == NOT_FOUND, np.inf, h).astype(np.float64)
    med = float(np.median(sizes)) if len(sizes) else float("nan")
    return {"n": int(len(h)), "median": med, "fraction_not_found": float((h == NOT_FOUND).mean()) if len(h) else None,
            "cdf": support_cdf(sizes, cdf_ks)}


def without_no_op_flips(lists: np.ndarray, y_train: np.ndarray, wrong: np.ndarray, k: int) -> np.ndarray:
    """Candidate lists ``[n_t, L]`` without the training examples already labelled with their target's
    wrong class (relabelling them to it changes nothing), first ``k`` kept, -1 padded: ``[n_t, k]``."""
    lists = np.asarray(lists, dtype=np.int64)
    keep = (lists >= 0) & (np.asarray(y_train)[np.maximum(lists, 0)] != np.asarray(wrong)[:, None])
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(lists, order, axis=1)
    out[~np.take_along_axis(keep, order, axis=1)] = -1
    if out.shape[1] < k:
        out = np.pad(out, ((0, 0), (0, k - out.shape[1])), constant_values=-1)
    return out


def _ranking(method: str, weights: np.ndarray, features: np.ndarray | None, ds, tgt: np.ndarray, K: int,
             seed: int, embeddings: Any = None, progress: Progress = SILENT) -> np.ndarray:
    """Candidate lists ``[n_targets, K]`` (-1 padded) for one method (``weights``: the targets' datamodel rows;
    ``features``: unit rows of every target, train first, for the representation baseline; ``embeddings``: every
    datamodel row when the datamodels rank by their nearest embeddings)."""
    if method == "datamodels":
        if embeddings is not None:
            return datamodel_neighbours(embeddings, ds.n_train + tgt, ds.n_train, K, progress=progress)
        return datamodel_ranking(weights, K)
    if method == "representation":
        n_train = ds.n_train
        _, idx = baselines.nearest_neighbours(features[:n_train], features[n_train:][tgt], K)
        return np.asarray(idx, dtype=np.int64)
    return np.asarray(baselines.random_same_class(ds.y_train, ds.y_test[tgt], K, seed), dtype=np.int64)


def _csv_rows(records: list[dict], methods: Sequence[str], relabel: bool) -> tuple[list[str], list[dict]]:
    columns = ["target", "label", "label_name"] + (["wrong_class", "wrong_class_name"] if relabel else [])
    columns += ["full_margin", "predicted_full_margin", "heuristic_k"]
    for m in methods:
        columns += [f"{m}_k_star", f"{m}_certified", f"{m}_verify_k", f"{m}_verify_margin", f"{m}_certified_support"]
    rows = []
    for r in records:
        row = {k: r.get(k) for k in columns if k in r}
        for m in methods:
            res = r["methods"][m]
            row.update({f"{m}_k_star": res["k_star"], f"{m}_certified": res["certified"],
                        f"{m}_verify_k": res["verify_k"], f"{m}_verify_margin": res["verify_margin"],
                        f"{m}_certified_support": res["certified_support"]})
        rows.append(row)
    return columns, rows


# ----- the steps (audit.contract) --------------------------------------------------------------
class CdfPoint(Result):
    """Share of targets whose support is at most ``k``."""

    k: int
    fraction: float | None = None


class MethodSupport(Result):
    n_targets: int
    fraction_certified: float | None = None
    median_certified_support: float
    median_certified_support_label: str
    median_k_star: float
    median_k_star_label: str
    fraction_no_crossing: float | None = None
    cdf: list[CdfPoint]


class HeuristicSupport(Result):
    n: int
    median: float
    fraction_not_found: float | None = None
    cdf: list[CdfPoint]


class RankingVerdict(Result):
    """Which ranking found the smaller supports (:func:`ranking_verdict`)."""

    best: str | None = None  # None: no ranking better on both counts
    datamodels_lose: bool
    text: str


class SupportResult(Result):
    """The "summary" of audits/brittleness.json (or mislabel.json)."""

    mode: str
    n_targets: int
    T: int
    k_grid: list[int]
    max_k: int
    methods: list[str]
    seed: int
    datamodel_ranking: Literal["weights", "embedding"] = "weights"  # files written before the setting: weights
    full_data_accuracy: float | None = None
    per_method: dict[str, MethodSupport]
    verdict: RankingVerdict | None = None  # None in files written before it, or with one ranking
    heuristic: HeuristicSupport
    heuristic_all: HeuristicSupport | None = None
    models_trained_now: int
    models_in_plan: int
    seconds: float
    json_path: str = Field("", alias="json")
    csv_path: str = Field("", alias="csv")


class MethodOutcome(Result):
    """One ranking's search for one target (a record's ``methods[method]``)."""

    k_star: float | None = None
    verify_k: int | None = None
    verify_margin: float | None = None
    certified: StrictBool
    certified_support: StrictInt | None = None
    edited: list[int] | None = None  # the training examples edited at the certified support (None: older files)
    curve: dict[str, float | None] = {}
    fitted: dict[str, float | None] = {}


class SupportRecord(Result):
    """One audited test target (``targets[i]`` of brittleness.json / mislabel.json)."""

    target: int
    label: int | None = None
    label_name: str | None = None
    full_margin: float | None = None
    predicted_full_margin: float | None = None
    heuristic_k: int | None = None
    wrong_class: int | None = None
    wrong_class_name: str | None = None
    methods: dict[str, MethodOutcome]


def _typed(model: type, data: Any, path: Path, what: str, where: str) -> Any:
    """``model.from_json(data)``; AuditError naming the field, why, and the command to run again."""
    try:
        return model.from_json(data)
    except (ValidationError, TypeError) as exc:
        if not isinstance(exc, ValidationError):
            raise AuditError(f"{path}: {where} is not a record ({exc}); run `{what}` again") from None
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        if err["type"] == "missing":
            why = "is missing"
        elif any(t in err["type"] for t in ("int", "float")):
            why = f"is {err.get('input')!r}, not a number"
        elif "bool" in err["type"]:
            why = f"is {err.get('input')!r}, not true/false"
        else:
            why = err["msg"].lower()
        raise AuditError(f"{path}: {where}.{field} {why}; run `{what}` again") from None


def read_records(path: Path, what: str) -> tuple[SupportResult, list[SupportRecord]]:
    """The typed summary and records of a support audit's JSON; AuditError naming the command to rerun."""
    data = read_result(path, what)
    summary = _typed(SupportResult, require(data, ("summary",), path, what), path, what, "summary")
    return summary, _records(data, path, what)


def _records(data: Any, path: Path, what: str) -> list[SupportRecord]:
    raw = require(data, ("targets",), path, what)
    if not isinstance(raw, list):
        raise AuditError(f"{path}: targets is not a list; run `{what}` again")
    return [_typed(SupportRecord, r, path, what, f"targets[{i}]") for i, r in enumerate(raw)]


def largest_k_tried(data: Any, records: list[SupportRecord]) -> int | None:
    """The last k of the audit's grid: summary.max_k, else the largest k of the targets' curves."""
    summary = data.get("summary") if isinstance(data, dict) else None
    value = summary.get("max_k") if isinstance(summary, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    ks = {int(k) for r in records for m in r.methods.values() for k in m.curve if str(k).isdigit()}
    return max(ks) if ks else None


def _support_fraction(run_dir: Path, path: Path, k: int, method: str, command: str) -> tuple[float | None, dict]:
    """Fraction of audited test targets whose certified support (method's ranking) is ≤ k.

    A k beyond the audit's grid cannot be decided (a support there was never tried): an error.
    """
    what = f"audit {command} {run_dir}"
    if method not in METHODS and method not in scores.names(run_dir):
        raise AuditError(f"{run_dir} has no ranking '{method}' to check: use {', '.join(METHODS)} or one of its score "
                         f"matrices ({', '.join(scores.names(run_dir)) or 'none; audit import-scores adds one'})")
    data = read_result(path, what)
    records = _records(data, path, what)
    if not records:
        raise AuditError(f"{path} lists no targets; run `{what}` again")
    max_k = largest_k_tried(data, records)
    if max_k is None:
        raise AuditError(f"{path} does not say which k the audit tried, so support <= {k} cannot be decided; "
                         f"run `{what}` again")
    if k > max_k:
        raise AuditError(f"k = {k} lies beyond the largest k the audit tried ({max_k} in {path}), so it cannot "
                         f"decide whether a support is <= {k}; set the check's k to at most {max_k} or run "
                         f"`{what} --k-grid ...` up to {k}")
    small = 0
    for i, rec in enumerate(records):
        res = rec.methods.get(method)
        if res is None:
            raise AuditError(f"{path} has no '{method}' ranking; run `{what} --methods {method}` again")
        if res.certified and res.certified_support is None:
            raise AuditError(f"{path}: targets[{i}] is certified but its certified_support is not a number; "
                             f"run `{what}` again")
        if res.certified and res.certified_support <= k:
            small += 1
    return small / len(records), {"k": k, "method": method, "n_targets": len(records), "n_at_most_k": small}


_SUPPORT_METHOD = Param("method", "datamodels", "ranking whose certified support is checked (or a score matrix's "
                                                "name)", METHODS)


class SupportStep(Step[SupportConfig, SupportResult]):
    """The support search of test predictions: removal (brittleness) or relabelling (mislabel)."""

    config_type, result_type = SupportConfig, SupportResult
    result_key = "summary"
    needs = (pipeline.FIT,)
    retrains = True
    mode: str

    def compute(self, run_dir: Path, config: SupportConfig, *, dataset: Dataset | None = None,
                progress: Progress = SILENT) -> SupportResult:
        s = run_brittleness(run_dir, mode=self.mode, n=config.n, targets=config.targets, T=config.T,
                            k_grid=config.k_grid, methods=config.methods, seed=config.seed,
                            all_heuristic=config.all_heuristic, engine=config.engine, address=config.address,
                            dataset=dataset, features=config.features, datamodel_ranking=config.datamodel_ranking,
                            progress=progress)
        return SupportResult.from_json(s)

    def check_scores(self, run_dir: Path | str, config: SupportConfig, coming: Sequence[str] = ()) -> None:
        scores.check_methods(run_dir, config.methods, METHODS, coming)

    def cost_detail(self, result: SupportResult) -> str:
        return f"{result.models_trained_now:,} models retrained"

    def summary(self, s: SupportResult) -> list[Block]:
        what = "removal support (brittleness)" if s.mode == "remove" else "label-flip support (mislabel)"
        rows = tuple((method, r.median_certified_support_label, _f2(r.fraction_certified), r.median_k_star_label,
                      _f2(r.fraction_no_crossing)) for method, r in s.per_method.items())
        out: list[Block] = [
            Table(f"{what}: {s.n_targets} test targets, T={s.T} models per point, k grid {s.k_grid}",
                  ("ranking", "median support", "certified", "median k*", "no crossing"), rows),
            Line(f"median support: median over the targets of the certified support ⌈1.2·k*⌉ (not certified = "
                 f"beyond the grid); certified: fraction certified; no crossing: fraction with k* > {s.max_k}"),
            *([Line(s.verdict.text)] if s.verdict is not None else []),
            *([Line(f"datamodels ranked by {RANKING_WORDS[s.datamodel_ranking]} (--datamodel-ranking)")]
              if "datamodels" in s.per_method else []),
            Line(f"heuristic support (no retraining): median {_median(s.heuristic.median)} over the targets, "
                 f"{_f2(s.heuristic.fraction_not_found)} never reached")]
        if s.heuristic_all is not None:
            out.append(Line(f"heuristic support over all {s.heuristic_all.n} test examples: median "
                            f"{_median(s.heuristic_all.median)}"))
        out.append(Line(f"full-data accuracy on the targets {_f3(s.full_data_accuracy)}; {s.models_trained_now} "
                        f"models trained now ({s.models_in_plan} in the plan), {s.seconds:.0f}s"))
        return out

    def findings(self, run_dir: Path | str) -> list[Finding]:
        """Audited test predictions with a certified support (any ranking; k* = 0, a prediction the full-data
        models already get wrong, is not one), with the training examples of the smallest support."""
        path = self.path(run_dir)
        if not path.is_file():
            return []
        what = f"audit {self.name} {run_dir}"
        summary, records = read_records(path, what)
        supports = [(r, smallest_support(r)) for r in records]
        supports = [(r, s) for r, s in supports if s is not None]
        run_dir = Path(run_dir)
        n_train = pipeline.RunStore.open(run_dir, writable=False).config.n_train
        examples = {(r.target, method): r.methods[method].edited for r, (_, method) in supports
                    if r.methods[method].edited is not None}  # what the search edited (files from 2026-12 on)
        missing = [(r.target, method, size) for r, (size, method) in supports if (r.target, method) not in examples]
        if missing:  # older files: the first examples of the lists their search planned
            planned = planned_lists(run_dir, self.name, summary, [r.target for r in records]) or {}
            for target, method, size in missing:
                if (target, method) in planned:
                    examples[(target, method)] = [int(j) for j in planned[(target, method)][:size] if j >= 0]
        return [support_finding(self.mode, r, size, method, examples.get((r.target, method)), n_train)
                for r, (size, method) in supports]

    def cost(self, run_dir: Path | str, config: SupportConfig | None = None) -> Cost | None:
        """Models the search trains at most: the grid (every target x ranking x k x T, plus the T unedited
        models) and the verification (one edit size per target and ranking), at the run's measured rate."""
        config = config or SupportConfig()
        run_dir = Path(run_dir)
        store = pipeline.RunStore.open(run_dir, writable=False)
        n_train, n_test = store.config.n_train, store.config.n_test
        T, grid, n_t = check_search(run_dir, n_train, n_test, methods=config.methods, T=config.T,
                                    k_grid=config.k_grid, n=config.n, targets=config.targets)
        if config.features is not None:
            user_features(config.features, n_train, n_test)  # unreadable or the wrong shape: said before the cost
        n_m = len(dict.fromkeys(config.methods))
        grid_models, verify_models = T + n_t * n_m * len(grid) * T, n_t * n_m * T
        rate, slowdown, kind = retrain_rate(run_dir, store.config.alpha)
        return Cost(models=grid_models + verify_models, rate=rate, slowdown=slowdown, measured_on=kind,
                    detail=f"{n_t} test targets x {n_m} rankings x {len(grid)} edit sizes x T={T}, plus up to "
                           f"{verify_models} to verify",
                    cheaper="--n, --T or --methods")


# ----- findings ----------------------------------------------------------------------------
BRITTLE_ISSUE, LABEL_SENSITIVE_ISSUE = "brittle prediction", "label-sensitive prediction"
HIGH_SHARE, MEDIUM_SHARE = 0.005, 0.02  # brittle: support of at most this share of the training set


def smallest_support(record: SupportRecord) -> tuple[int, str] | None:
    """``(certified support, ranking)`` of the smallest certified support of a target (datamodels first
    among equals); None when no ranking certified one or the full-data models already get it wrong (0)."""
    found = [(m.certified_support, i, method) for i, (method, m) in enumerate(record.methods.items())
             if m.certified and m.certified_support is not None and m.certified_support > 0]
    if not found:
        return None
    size, _, method = min(found, key=lambda x: (x[0], x[2] != "datamodels", x[1]))
    return int(size), method


def planned_lists(run_dir: Path, name: str, summary: SupportResult, targets: Sequence[int]
                  ) -> dict[tuple[int, str], np.ndarray] | None:
    """Each ``(test target, ranking)``'s candidate list, best first (-1 padded), as the search's grid plan
    (``retrain/NAME-grid-*``) holds it: the examples a certified support of size k edited are its first k. For
    result files written before each support recorded them (``edited``). The plan is the one whose options are
    this result's (targets, T, grid, rankings, seed, datamodel ranking); None when there is none or more than one
    (its examples are then left unlisted rather than re-ranked: how the search ranked has changed over versions)."""
    want = {"mode": summary.mode, "targets": [int(t) for t in targets], "T": summary.T, "k_grid": summary.k_grid,
            "methods": summary.methods, "seed": summary.seed}
    found = []
    for meta_path in sorted((Path(run_dir) / "retrain").glob(f"{name}-grid-*/{PLAN_JSON}")):
        try:
            options = read_json(meta_path).get("options", {})
        except (AuditError, OSError, ValueError, AttributeError, RecursionError):
            continue
        if isinstance(options, dict) and {k: options.get(k) for k in want} == want \
                and options.get("datamodel_ranking", "weights") == summary.datamodel_ranking:
            found.append(meta_path.parent)
    if len(found) != 1:
        return None
    try:
        with np.load(found[0] / "plan.npz", allow_pickle=False) as z:
            lists = np.asarray(z["lists"], dtype=np.int64).reshape(len(targets), len(summary.methods), -1)
    except (OSError, ValueError, KeyError, EOFError, TypeError, AttributeError, zipfile.BadZipFile):
        return None  # not a readable plan: unlisted
    return {(int(t), m): lists[i, j] for i, t in enumerate(targets) for j, m in enumerate(summary.methods)}


def support_finding(mode: str, r: SupportRecord, size: int, method: str, examples: list[int] | None,
                    n_train: int) -> Finding:
    """A test prediction that ``size`` removed (``mode='remove'``) or relabelled training examples flip."""
    agree = {m: o.certified_support for m, o in r.methods.items() if o.certified and o.certified_support}
    ranked = ", ".join(f"{m} {k}" for m, k in sorted(agree.items(), key=lambda x: x[1]))
    share = size / max(n_train, 1)
    listed = f": {', '.join(map(str, examples[:12]))}{', ...' if len(examples) > 12 else ''}" if examples else ""
    what, verb = ("examples", "are") if size != 1 else ("example", "is")
    if mode == "remove":
        severity = "high" if share <= HIGH_SHARE else "medium" if share <= MEDIUM_SHARE else "low"
        rule = (f"high: removing at most {HIGH_SHARE:.1%} of the training set flips it; medium: at most "
                f"{MEDIUM_SHARE:.0%}; low: more, but certified")
        issue, action = BRITTLE_ISSUE, ("check the training examples it rests on (labels, duplicates) and collect "
                                        "more data like this test image")
        headline = f"test {r.target} ({_name(r.label_name)}) flips when {size} training {what} {verb} removed"
        evidence = (f"removing {size} training {what} ({share:.2%} of the training set, {method} ranking{listed}) "
                    f"makes the models misclassify this {_name(r.label_name)} (certified by retraining)")
    else:
        severity, rule = "low", ("low: relabelling a few training examples flips it, a sensitivity rather than an "
                                 "error (raised when those examples are themselves flagged)")
        issue, action = LABEL_SENSITIVE_ISSUE, ("check the labels of the training examples it rests on: a wrong "
                                                "label among them changes this prediction")
        headline = (f"test {r.target} ({_name(r.label_name)}) flips when {size} training {what} {verb} relabelled "
                    f"{_name(r.wrong_class_name)}")
        evidence = (f"relabelling {size} training {what} to {_name(r.wrong_class_name)} ({method} ranking{listed}) "
                    f"flips the prediction on this {_name(r.label_name)} (certified by retraining)")
    if len(agree) > 1:
        evidence += f"; certified supports by ranking: {ranked}"
    return Finding(index=r.target, split="test", issue=issue, severity=severity, rule=rule, score=1.0 / size,
                   score_meaning="1 / the smallest certified support",
                   step="brittleness" if mode == "remove" else "mislabel", headline=headline, evidence=evidence,
                   action=action, given_label=r.label, given_name=r.label_name, related=list(examples or []),
                   details={"support": size, "ranking": method, "certified_by": agree, "flips_to": r.wrong_class_name,
                            "full_margin": r.full_margin, "share_of_training_set": share})


def _name(label: str | None) -> str:
    return repr(label) if label is not None else "image"


def retrain_rate(run_dir: Path, alpha: float) -> tuple[float | None, float, str]:
    """``(models per second, slowdown, measured on)`` for the full-data models of a support search: the rate
    of an earlier search on this run (slowdown 1), else the train step's rate of subset models, which full-data
    models (1/α times the data per epoch) undercut by up to 1/α."""
    for step in (BRITTLENESS, MISLABEL):
        try:
            r = step.load(run_dir)
        except AuditError:
            r = None
        if r is not None and r.models_trained_now > 0 and r.seconds > 0:
            return r.models_trained_now / r.seconds, 1.0, f"the full-data models of {step.name}"
    try:
        t = pipeline.TRAIN.load(run_dir)
    except AuditError:
        t = None
    if t is None or not t.trained or not t.total_seconds:
        return None, 1.0, ""
    return t.trained / t.total_seconds, 1.0 / alpha, "its subset models"


def _f2(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _f3(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _median(x: float) -> str:
    return "none" if not np.isfinite(x) else f"{x:g}"


def _support_metric(key: str, name: str, k_key: str, k_help: str, measure: str, command: str) -> Metric:
    """The check of a support audit: the share of targets whose certified support is at most k."""
    return Metric(key, name, "max", "fraction",
                  lambda run_dir, path, p: _support_fraction(run_dir, path, p[k_key], p["support_method"], command),
                  {k_key: Param("count", 20, k_help), "support_method": _SUPPORT_METHOD},
                  lambda p: f"test targets {measure} <= {p[k_key]} ({p['support_method']})", f"audit {command} RUN")


class BrittlenessStep(SupportStep):
    """Smallest training sets whose removal flips test predictions (certified by retraining)."""

    name, title, mode = "brittleness", "Brittleness: data support", "remove"
    issues = (BRITTLE_ISSUE,)
    files = {"result": "audits/brittleness.json", "table": "audits/brittleness.csv", "retrain": "retrain"}
    metrics = (_support_metric("max_brittle_fraction", "brittle predictions", "support_k",
                               "k for max_brittle_fraction: support of at most k examples counts as brittle",
                               "with certified support", "brittleness"),)


class MislabelStep(SupportStep):
    """Smallest training sets whose relabelling to the likeliest wrong class flips test predictions."""

    name, title, mode = "mislabel", "Mislabel sensitivity: label-flip support", "relabel"
    issues = (LABEL_SENSITIVE_ISSUE,)
    files = {"result": "audits/mislabel.json", "table": "audits/mislabel.csv", "retrain": "retrain"}
    metrics = (_support_metric("max_mislabel_fraction", "label-flip sensitivity", "mislabel_k",
                               "k for max_mislabel_fraction", "flipped by relabelling", "mislabel"),)


BRITTLENESS, MISLABEL = BrittlenessStep(), MislabelStep()
