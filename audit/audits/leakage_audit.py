"""The leakage audit of a run (paper §4.2.2, App. H): candidates, baselines, checks, MTurk.

``run_leakage`` wires the building blocks to a run directory:

- datamodel candidates of every test example (``--datamodel-ranking``: the largest positive weights,
  the nearest datamodel embeddings, or by default both in turn; top 5 + bottom 5 weights
  for annotation) and the FAISS representation baseline with the same k (penultimate
  features of full-data reference models, audit/reference.py), and their overlap;
- where the dataset has coordinates (FMoW ``lat_*``/``lon_*``): the geodesic ground truth
  (each test image's nearest training image), efficacy(d) of both methods and the
  distance CDF;
- where the dataset has planted duplicates (``load_dataset(..., plant=N)``): recall@k
  of both methods;
- MTurk: the batch export for the annotation candidates, and the import of the results.

``run_planted_check`` makes the planted twin of a run (same trainer, α, seed; copies of N
test images added to the training set), trains and fits it, audits it, and records the
recall in the main run's leakage.json. Everything is saved under RUN/audits/.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from pydantic import Field

from audit import pipeline, scores
from audit.audits.baselines import (aligned_variants, centred_pixels, fuse_rankings, interleave_rankings,
                                   interleaved_scores, nearest_neighbours, nearest_over_variants, normalise_rows)
from audit.audits.geo import leakage_efficacy, nearest_train_distance_miles
from audit.audits.leakage import (NEAR_COPY, POSSIBLE_COPY, candidate_overlap, candidates_table, datamodel_candidates,
                                  near_copy_distance, pixel_spread, planted_recall, weights_at)
from audit.audits.mturk import export_batch, import_results, read_manifest
from audit.audits.support import (DATAMODEL_RANKING_HELP, datamodel_ranking_for, embedding_cosine_blocks,
                                  nearest_embeddings, sample_targets)
from audit.contract import (Block, Finding, Line, Metric, Param, Result, Step, Table, finite, read_result, require,
                            setting, unreadable)
from audit.data import load_dataset
from audit.data.dataset import Dataset
from audit.data.planting import (DEFAULT_PLANT_NOISE, PLANT_FAMILIES, default_families, parse_families,
                                 plant_options, planted_families, planted_pairs)
from audit.errors import AuditError
from audit.execution import ENGINES, address_setting, engine_setting
from audit.jsonio import read_json, write_csv, write_json
from audit.progress import SILENT, Progress
from audit.reference import Reference, load_reference, reference_models, user_features
from audit.release import targets_with_weights, weight_rows
from audit.store import RunStore

DEFAULT_K = 10
N_ANNOT = 5
DEFAULT_D_GRID = tuple(round(0.25 * i, 2) for i in range(1, 13))  # 0.25 .. 3.0 miles
CDF_MILES = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.6, 3.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0)
PAPER_FMOW_CDF = {"0.25": 0.20, "2.6": 0.80}  # paper §4.2.2: share of test images within d miles of a train image
RECALL_KS = (1, 5, 10)
METHODS = ("datamodels", "representation", "pixels")  # the rankings that propose candidates
COMBINED = ("union", "fused")  # any method's top k; reciprocal rank fusion of the methods' lists
LEAK_RANKING_WORDS = {"weights": "largest positive datamodel weights",
                      "embedding": "nearest datamodel embeddings (positive cosine)",
                      "both": "nearest datamodel embeddings and largest positive weights, in turn"}
PIXEL_QUERY_CHUNK = 512  # test images whose aligned variants are searched at once
PIXEL_SIDE = 32  # the pixel baseline compares images block-averaged down to at most this many pixels a side
N_REFERENCE = 3
PLANT_MODELS = 1000  # planted twin run: enough for a strong signal, a few minutes on digits
MIN_PLANT_MODELS = 20  # the fewest the planted twin can fit datamodels on
MTURK_VIEW_PIXELS = 128

LEAKAGE_JSON = "leakage.json"
CANDIDATES_CSV = "leakage_candidates.csv"
GEO_CSV = "leakage_geo.csv"
MTURK_MANIFEST = "leakage_mturk_manifest.json"
MTURK_JSON = "leakage_mturk.json"
MTURK_PAIRS_CSV = "leakage_mturk_pairs.csv"
MTURK_TESTS_CSV = "leakage_mturk_tests.csv"
CANDIDATE_COLUMNS = ("test_index", "train_index", "rank", "weight", "method", "found_by")
VERDICTS_JSON = "leakage_verdicts.json"
VERDICT_COLUMNS = ("test_index", "verdict", "train_index", "distance", "datamodels_rank", "datamodels_weight",
                   "representation_rank", "representation_similarity", "label", "full_data_prediction", "label_name",
                   "full_data_prediction_name")
LEAK_ISSUE = "leaked test image"
KEPT_SECTIONS = ("mturk", "mturk_export", "planted_check")  # survive a rerun that does not recompute them


# ----- pieces --------------------------------------------------------------------------
def check_d_grid(d_grid: Sequence[float] | None) -> list[float]:
    """The distance grid in miles (default 0.25..3.0 by 0.25), increasing, finite, > 0."""
    if d_grid is None:
        return list(DEFAULT_D_GRID)
    try:
        grid = [float(d) for d in d_grid]
    except (TypeError, ValueError):
        raise AuditError(f"the distance grid {d_grid!r} must be numbers of miles like 0.25,0.5,1") from None
    if not grid or any(not math.isfinite(d) or d <= 0 for d in grid) or grid != sorted(set(grid)):
        raise AuditError(f"the distance grid must be increasing positive miles (got {grid})")
    return grid


def recall_ks(k: int) -> list[int]:
    """The recall@k cut-offs reported for ``k`` candidates: 1, 5, 10 up to k (and k itself)."""
    return sorted({kk for kk in RECALL_KS if kk <= k} | {k})


def auto_upscale(shape: tuple[int, ...]) -> int:
    """Nearest-neighbour upscaling so an image is about 128 pixels wide (CIFAR 4x, digits 16x, FMoW 1x)."""
    side = max(int(shape[0]), int(shape[1]))
    return max(1, int(math.ceil(MTURK_VIEW_PIXELS / side)))


def representation_candidates(ref, n_train: int, k: int, progress: Progress = SILENT) -> tuple[np.ndarray, np.ndarray]:
    """FAISS top-``k`` training neighbours of each test example in reference feature space: ``(scores, idx)``."""
    return nearest_neighbours(ref.train_features(n_train), ref.test_features(n_train), k, progress=progress)


def full_rank(scores_row: np.ndarray, j: int) -> int:
    """1-based rank of entry ``j`` among all of ``scores_row``, descending: 1 + how many score higher.

    Ties count in ``j``'s favour. That matters for sparse datamodels: most weights are exactly
    0, and breaking those ties by index would put a zero-weight copy appended at the end of the
    training set near the very bottom, a rank that says nothing about it.
    """
    s = np.asarray(scores_row)
    return int((s > s[j]).sum() + 1)


def datamodel_leak_ranking(weights: Any, n_targets: int, n_train: int, choice: str) -> tuple[str, str | None]:
    """The datamodel ranking this run can use for leakage (``choice`` resolved by
    :func:`audit.audits.support.datamodel_ranking_for`) and, when it falls back, why.

    The embedding of a training example is its own datamodel row (a train target's), so a run whose datamodels
    cover only the test targets (an import of one split) ranks by weights: with ``auto`` saying so, with
    ``embedding`` as an error."""
    with_weights = targets_with_weights(weights, n_targets)
    if choice == "weights" or with_weights is None or (with_weights < n_train).any():
        return choice, None
    if choice == "embedding":
        raise AuditError("--datamodel-ranking embedding needs the training examples' own datamodels, and this "
                         "run has datamodels for its test targets only; use --datamodel-ranking weights")
    return "weights", "no train-target datamodels (an import of the test split): ranked by weights alone"


def datamodel_leak_lists(weights: Any, test_rows: np.ndarray, n_train: int, k: int, ranking: str,
                         weight_idx: np.ndarray, progress: Progress = SILENT) -> np.ndarray:
    """The datamodels' top-``k`` leakage candidates of each test image ``[n_test, k]`` (-1: none):
    ``weight_idx`` (the largest positive weights) for ``weights``; the training examples whose datamodel
    embeddings are nearest the test image's (positive cosine) for ``embedding``; both lists in turn, the
    embedding's first, for ``both``. A near-copy that shapes the test image's prediction has a large weight;
    one whose prediction the same training examples drive (a copy in place, noisy or re-exposed) has a near
    embedding even where its own weight is lost among redundant neighbours (README, "Leakage")."""
    if ranking == "weights":
        return np.asarray(weight_idx, dtype=np.int64)
    cos, idx = nearest_embeddings(weights, test_rows, n_train, k, progress=progress)
    near = np.where(cos > 0, idx, -1)
    return near if ranking == "embedding" else interleave_rankings(near, weight_idx, k)


def planted_datamodel_scores(weights: Any, rows: np.ndarray, n_train: int, ranking: str) -> np.ndarray:
    """Every training example's datamodel score for the test targets in ``rows``, ordered as the ranking lists
    them (for the planted copies' full ranks): weights, embedding cosines, or both in turn
    (:func:`audit.audits.baselines.interleaved_scores`). ``[len(rows), n_train]`` float64."""
    w = np.asarray(weight_rows(weights)[np.asarray(rows, dtype=np.int64)], dtype=np.float64)
    if ranking == "weights":
        return w
    cos = np.zeros_like(w)
    for start, block in embedding_cosine_blocks(weights, rows, n_train):
        cos[:, start:start + block.shape[1]] = block
    return cos if ranking == "embedding" else interleaved_scores(cos, w)


def pixel_images(x: np.ndarray) -> np.ndarray | None:
    """Images ``[N, H, W, C]`` as float32, block-averaged down when wider than ``PIXEL_SIDE`` (what a
    near-copy keeps is its coarse layout, and CIFAR/FMoW-sized pixel rows would cost more memory than
    the features); None for data that are not images (rows of features)."""
    a = np.asarray(x)
    if a.ndim != 4:
        return None
    if max(a.shape[1:3]) > PIXEL_SIDE:
        f = int(math.ceil(max(a.shape[1:3]) / PIXEL_SIDE))
        h, w = a.shape[1] // f * f, a.shape[2] // f * f
        return a[:, :h, :w].reshape(len(a), h // f, f, w // f, f, a.shape[3]).mean(axis=(2, 4)).astype(np.float32)
    return a.astype(np.float32)


def pixel_rows(x: np.ndarray) -> np.ndarray:
    """Images (:func:`pixel_images`) or feature rows as centred rows for the pixel baseline."""
    images = pixel_images(x)
    return centred_pixels(x if images is None else images)


def _variant_rows(x: np.ndarray, mirror: bool, chunk: int = PIXEL_QUERY_CHUNK):
    """Per chunk of images, the centred rows of their aligned variants ``[n, V, D]`` (one variant for non-images)."""
    for start in range(0, len(x), chunk):
        images = pixel_images(x[start:start + chunk])
        if images is None:
            yield pixel_rows(x[start:start + chunk])[:, None]
            continue
        v = aligned_variants(images, mirror=mirror)
        yield centred_pixels(v.reshape(-1, *v.shape[2:])).reshape(v.shape[0], v.shape[1], -1)


def pixel_candidates(ds: Dataset, k: int, progress: Progress = SILENT) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` training images of each test image by pixel correlation, a training image scoring its best
    match over the test image's aligned variants (one-pixel shifts, ~10% crops resized back, and the
    mirror image where a flip keeps the class: :func:`audit.audits.baselines.aligned_variants`):
    ``(scores, idx)``, by FAISS exact search."""
    return nearest_over_variants(pixel_rows(ds.x_train), _variant_rows(ds.x_test, _mirror(ds)), k, total=ds.n_test,
                                 progress=progress)


def _mirror(ds: Dataset) -> bool:
    return "flip" in default_families(ds)


def pixel_scores(ds: Dataset, test_ids: np.ndarray) -> np.ndarray:
    """Every training image's pixel score for each of ``test_ids`` (best correlation over the aligned
    variants, as :func:`pixel_candidates` ranks them): float32 ``[len(test_ids), n_train]``."""
    train = normalise_rows(pixel_rows(ds.x_train))
    out = []
    for rows in _variant_rows(ds.x_test[np.asarray(test_ids, dtype=np.int64)], _mirror(ds)):
        n, v, d = rows.shape
        q = normalise_rows(rows.reshape(n * v, d))
        out.append((q @ train.T).reshape(n, v, -1).max(axis=1))
    return np.concatenate(out) if out else np.zeros((0, ds.n_train), np.float32)


def combined_candidates(top: Mapping[str, np.ndarray], k: int) -> dict[str, tuple[np.ndarray, list[list[str]]]]:
    """The union (every method's top k, by best rank) and the rank fusion of the methods' lists,
    each with the methods that proposed every candidate."""
    names = list(top)
    n_q = len(next(iter(top.values())))
    width = k * len(names)
    union = np.full((n_q, width), -1, dtype=np.int64)
    union_by: list[list[str]] = []
    for q in range(n_q):
        best: dict[int, tuple[int, int]] = {}
        who: dict[int, list[str]] = {}
        for mi, m in enumerate(names):
            for rank, j in enumerate(np.asarray(top[m][q][:k]).tolist(), start=1):
                if j >= 0:
                    best[j] = min(best.get(j, (rank, mi)), (rank, mi))
                    who.setdefault(j, []).append(m)
        order = sorted(best, key=lambda j: (best[j], j))
        union[q, :len(order)] = order
        union_by.append(["+".join(who[j]) for j in order])
    fused, _, fused_by = fuse_rankings({m: np.asarray(top[m])[:, :k] for m in names}, k)
    return {"union": (union, union_by), "fused": (fused, fused_by)}


def _method_recall(cand: np.ndarray, pairs: np.ndarray, ranks: list[int | None] | None, k: int) -> dict:
    rec = planted_recall(cand, pairs, recall_ks(k))
    if ranks is not None:
        rec["full_rank"] = ranks
        known = [r for r in ranks if r is not None]
        rec["median_full_rank"] = float(np.median(known)) if known and len(known) == len(ranks) else None
    else:
        rec["median_full_rank"] = None
    return rec


def planted_report(pairs: np.ndarray, cands: dict[str, np.ndarray], full_scores: dict[str, np.ndarray],
                   k: int, families: np.ndarray | None = None) -> dict:
    """Recall@k and the copy's rank in the full ranking, per method, for planted ``(test, train)`` pairs.

    ``full_scores[method]`` ``[n_planted, n_train]``: each planted test image's score of every
    training example (datamodel weight, cosine similarity). A method in ``cands`` without full
    scores (the combined rankings) gets recall only; "union" gets the best rank of any method.
    ``families`` (a code per pair, into ``PLANT_FAMILIES``): the same per perturbation family.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    ranks: dict[str, list[int | None]] = {
        m: [full_rank(full_scores[m][r], int(j)) for r, (_, j) in enumerate(pairs)] for m in full_scores}
    if "union" in cands and full_scores:
        ranks["union"] = [min(ranks[m][r] for m in full_scores) for r in range(len(pairs))]

    def report(rows: np.ndarray) -> dict:
        out: dict = {}
        for method, cand in cands.items():
            rk = [ranks[method][r] for r in rows] if method in ranks else None
            rec = _method_recall(cand, pairs[rows], rk, k)
            if method == "union":  # found at k when any method has the copy in its top k
                singles = [planted_recall(cands[m], pairs[rows], recall_ks(k))["rank"] for m in full_scores]
                best = [min((s[i] for s in singles if s[i] is not None), default=None) for i in range(len(rows))]
                rec["rank"] = best
                rec["recall_at_k"] = {str(kk): (sum(b is not None and b <= kk for b in best) / len(rows)
                                                if len(rows) else None) for kk in recall_ks(k)}
            if method in full_scores:
                rec["n_score_not_positive"] = int(sum(full_scores[method][r, int(pairs[r, 1])] <= 0 for r in rows))
            out[method] = rec
        return out

    out: dict = {"n_planted": int(len(pairs)), "pairs": pairs.tolist(), "methods": report(np.arange(len(pairs)))}
    if families is not None:
        fam = np.asarray(families, dtype=np.int64)
        out["families"] = fam.tolist()
        out["by_family"] = {}
        for code in sorted(set(fam.tolist())):
            rows = np.flatnonzero(fam == code)
            methods = {m: {"recall_at_k": r["recall_at_k"], "median_full_rank": r["median_full_rank"]}
                       for m, r in report(rows).items()}
            out["by_family"][PLANT_FAMILIES[code]] = {"n_planted": int(len(rows)), "methods": methods}
    return out


def distance_cdf(nearest_miles: np.ndarray, grid: Sequence[float]) -> dict:
    """Share of test images whose nearest training image lies within d miles, and quantiles."""
    d = np.asarray(nearest_miles, dtype=np.float64)
    points = sorted(set(CDF_MILES) | set(float(g) for g in grid))
    qs = (10, 25, 50, 75, 90)
    return {"d_miles": points, "fraction_within": [float((d <= p).mean()) for p in points],
            "quantiles_miles": {str(q): float(np.percentile(d, q)) for q in qs},
            "paper_reference_fraction_within": PAPER_FMOW_CDF}


def _candidate_rows(ids: np.ndarray, idx: np.ndarray, w: np.ndarray, method: str) -> list[dict]:
    return [{**row, "method": method} for row in candidates_table(ids, idx, w)]


def _combined_rows(ids: np.ndarray, combined: dict[str, tuple[np.ndarray, list[list[str]]]]) -> list[dict]:
    """Rows of the combined rankings, each naming the methods that proposed the candidate."""
    rows = []
    for method, (idx, by) in combined.items():
        for t, cands, who in zip(np.asarray(ids).tolist(), idx.tolist(), by):
            rows += [{"test_index": t, "train_index": j, "rank": r, "weight": "", "method": method, "found_by": w}
                     for r, (j, w) in enumerate(zip(cands, who), start=1) if j >= 0]
    return rows


def _old_sections(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        old = read_json(path)
    except (OSError, ValueError):
        return {}
    return {key: old[key] for key in KEPT_SECTIONS if isinstance(old, dict) and key in old}


def _merge_section(run_dir: Path, key: str, value: dict) -> None:
    """Set one section of RUN/audits/leakage.json, keeping the rest."""
    path = Path(run_dir) / "audits" / LEAKAGE_JSON
    data = read_json(path) if path.exists() else {}
    data[key] = value
    if "summary" in data and isinstance(data["summary"], dict):
        data["summary"][key] = value.get("summary", value) if key == "mturk" else _brief(key, value)
    write_json(path, data)


def planted_ranking(section: Mapping[str, Any]) -> str:
    """How a planted check's twin ranked its datamodel candidates (checks made before the ranking was a setting:
    by weights)."""
    return section.get("datamodel_ranking") or "weights"


def _brief(key: str, value: dict) -> dict:
    if key == "planted_check":
        return {m: {"recall_at_k": r["recall_at_k"], "median_full_rank": r.get("median_full_rank")}
                for m, r in value.get("methods", {}).items()} | {"run": value.get("run"),
                                                                 "n_planted": value.get("n_planted"),
                                                                 "datamodel_ranking": planted_ranking(value)} | (
                    {"by_family": value["by_family"]} if "by_family" in value else {})
    if key == "mturk_export":
        return {"dir": value.get("dir"), "n_hits": value.get("n_hits")}
    return value


# ----- the audit -----------------------------------------------------------------------
def run_leakage(run_dir: Path | str, *, k: int = DEFAULT_K, d_grid: Sequence[float] | None = None,
                mturk_export: Path | str | None = None, image_base_url: str | None = None,
                mturk_results: Path | str | None = None, mturk_sample: int | None = None,
                upscale: int | None = None, n_reference: int = N_REFERENCE, dataset=None,
                engine: str = "local", address: str | None = None, features: Path | str | None = None,
                score_methods: Sequence[str] = (), datamodel_ranking: str = "auto",
                progress: Progress = SILENT) -> dict:
    """Leakage audit of a fitted run; writes RUN/audits/leakage.json + leakage_candidates.csv.

    Returns the summary (also leakage.json's "summary"): overlap of datamodel and FAISS
    candidates, and where they apply: FMoW efficacy per d for both methods, planted recall@k,
    the MTurk export (``mturk_export`` folder, needs ``image_base_url``; ``mturk_sample``
    class-balanced test images instead of all) and the imported MTurk scores
    (``mturk_results`` CSV; the manifest comes from ``mturk_export`` if given, else from
    the run's last export). ``engine='ray'`` trains the reference models as Ray tasks.
    ``datamodel_ranking``: how the datamodels list candidates (:func:`datamodel_leak_ranking`).
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    dm_choice = datamodel_ranking_for("leak", datamodel_ranking)
    store, dm, ds = pipeline.open_fitted(run_dir, dataset)
    c = store.config
    n_train, n_test = c.n_train, c.n_test
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= n_train:
        raise AuditError(f"k = {k} candidates; use 1 <= k <= {n_train} (the training set size)")
    grid = check_d_grid(d_grid)
    if n_reference < 1:
        raise AuditError(f"n_reference = {n_reference}; use at least one full-data reference model")
    if engine not in ENGINES:
        raise AuditError(f"unknown engine '{engine}': use local or ray")
    extra = scores.pick(run_dir, list(dict.fromkeys(score_methods)), (), n_train, n_test) if score_methods else {}
    dm_ranking, dm_note = datamodel_leak_ranking(dm.weights, c.n_targets, n_train, dm_choice)
    # cheap checks before any computing. With results and no URL, --mturk-export names the
    # folder of an earlier export to read the candidates from instead of a folder to write.
    write_export = mturk_export is not None and (mturk_results is None or bool((image_base_url or "").strip()))
    if mturk_export is not None and not write_export and not (Path(mturk_export) / "manifest.json").exists():
        raise AuditError(f"{mturk_export} holds no MTurk export (manifest.json); pass the folder the batch was "
                         "exported to, or add --image-base-url to export it now")
    if write_export:
        if not (image_base_url or "").strip():
            raise AuditError("--mturk-export needs --image-base-url: the public https URL where the images/ "
                             "files will be served (e.g. https://my-bucket.s3.amazonaws.com/leak)")
        if not ds.is_image:
            raise AuditError(f"{c.dataset} holds feature vectors, not images; there is nothing to show on MTurk")
        if upscale is not None and (not isinstance(upscale, (int, np.integer)) or upscale < 1):
            raise AuditError(f"upscale = {upscale!r}; use a whole number >= 1")
        if mturk_sample is not None and not 1 <= mturk_sample:
            raise AuditError(f"--mturk-sample = {mturk_sample}; export at least one test image")
    if mturk_results is not None:
        if not Path(mturk_results).is_file():
            raise AuditError(f"{mturk_results} not found; download the batch results CSV from the MTurk requester site")
        if mturk_export is None and not (run_dir / "audits" / MTURK_MANIFEST).exists():
            raise AuditError(f"{run_dir} has no MTurk export to match the results against; run with "
                             "--mturk-export DIR first (or pass the export folder with --mturk-export)")
        if mturk_export is None:  # the export exists already: read the results now, before writing anything
            import_results(mturk_results, *_saved_manifest(run_dir))

    if features is None:
        ref = reference_models(store, ds, n_models=n_reference, progress=progress, engine=engine, address=address)
    else:  # --features: your own representation; no reference models are trained (the run's are used if it has them)
        own = user_features(features, n_train, n_test)
        ref = Reference(features=own, mean_logits=np.zeros((len(own), 0), np.float32), n_models=0)
    test_ids = np.arange(n_test, dtype=np.int64)
    test_rows = n_train + test_ids
    n_annot = min(N_ANNOT, n_train // 2)
    cand = datamodel_candidates(dm.weights, test_rows, k=k, n_annot=n_annot, positive_only=True)
    dm_idx = datamodel_leak_lists(dm.weights, test_rows, n_train, k, dm_ranking, cand["top_idx"], progress)
    dm_w = cand["top_w"] if dm_ranking == "weights" else weights_at(dm.weights, test_rows, dm_idx)
    rep_scores, rep_idx = representation_candidates(ref, n_train, k, progress=progress)
    px_scores, px_idx = pixel_candidates(ds, k, progress=progress)
    top = {"datamodels": dm_idx, "representation": rep_idx, "pixels": px_idx}
    combined = combined_candidates(top, k)
    n_pos = (dm_idx >= 0).sum(axis=1)

    chance = k / n_train
    overlap = candidate_overlap(dm_idx, rep_idx)
    overlap["chance_overlap_at_k"] = chance
    same_class = float(np.mean(ds.y_train[np.maximum(dm_idx, 0)][dm_idx >= 0]
                               == np.repeat(ds.y_test, n_pos))) if n_pos.sum() else None
    extra_cands = {name: datamodel_candidates(m.weights, np.arange(n_test) + n_train - m.first_target, k=k,
                                              n_annot=0, positive_only=True) for name, m in extra.items()}
    summary: dict = {
        "score_methods": {name: {**candidate_overlap(dm_idx, e["top_idx"]), "how": extra[name].info.how}
                          for name, e in extra_cands.items()},  # overlap of each score matrix's candidates
        "run": str(run_dir), "dataset": c.dataset, "n_train": n_train, "n_test": n_test, "k": int(k),
        "n_annot": n_annot, "n_reference_models": ref.n_models, "datamodel_ranking": dm_ranking,
        **({"datamodel_ranking_note": dm_note} if dm_note else {}),
        "reference_test_accuracy": ref.test_accuracy(ds.y_test, n_train) if ref.n_models else None,
        "representation_features": str(Path(features).absolute()) if features is not None else "reference models",
        "datamodel_candidates": {"mean_positive": float(n_pos.mean()), "n_tests_fewer_than_k": int((n_pos < k).sum()),
                                 "n_tests_none": int((n_pos == 0).sum()), "same_class_fraction": same_class},
        "overlap": overlap,
    }
    out: dict = {"summary": summary,
                 "config": {"k": int(k), "n_annot": n_annot, "d_grid": grid, "n_reference": n_reference,
                            "methods": list(METHODS), "datamodel_ranking": dm_ranking,
                            "datamodel_candidates": LEAK_RANKING_WORDS[dm_ranking] + " (-1: none)",
                            "representation": "FAISS exact inner product on L2-normalised penultimate features "
                                              "of full-data reference models",
                            "pixels": f"FAISS exact inner product on centred, L2-normalised pixels (images "
                                      f"block-averaged to at most {PIXEL_SIDE} pixels a side): pixel correlation, "
                                      "each training image scored by its best match over the test image's "
                                      "one-pixel shifts, ~10% crops resized back and (where a flip keeps the class) "
                                      "mirror image",
                            "union": "every method's top k, by the best rank any method gives",
                            "fused": "reciprocal rank fusion (1 / (60 + rank), summed over the methods)"}}

    # geodesic check (FMoW and any dataset with coordinates)
    geo_rows: list[dict] | None = None
    if all(f"{a}_{p}" in ds.meta for a in ("lat", "lon") for p in ("train", "test")):
        lat_te, lon_te = ds.meta["lat_test"], ds.meta["lon_test"]
        lat_tr, lon_tr = ds.meta["lat_train"], ds.meta["lon_train"]
        t0 = time.perf_counter()
        nearest, nearest_j = nearest_train_distance_miles(lat_te, lon_te, lat_tr, lon_tr, progress=progress)
        eff = {m: leakage_efficacy(top[m], lat_te, lon_te, lat_tr, lon_tr, grid, nearest_miles=nearest,
                                   progress=progress) for m in METHODS}
        geo = {"d_miles": grid, "n_ground_truth": eff["datamodels"]["n_ground_truth"],
               "efficacy": {m: eff[m]["efficacy"] for m in METHODS},
               "n_found": {m: eff[m]["n_found"] for m in METHODS},
               "frac_with_candidate": {m: eff[m]["frac_with_candidate"] for m in METHODS},
               "datamodels_beat_representation_at": [
                   d for d, a, b in zip(grid, eff["datamodels"]["efficacy"], eff["representation"]["efficacy"])
                   if a is not None and b is not None and a > b],
               "cdf": distance_cdf(nearest, grid), "seconds": round(time.perf_counter() - t0, 2)}
        out["geo"] = geo
        summary["geo"] = {key: geo[key] for key in ("d_miles", "n_ground_truth", "efficacy")}
        summary["geo"]["fraction_within"] = dict(zip(map(str, geo["cdf"]["d_miles"]), geo["cdf"]["fraction_within"]))
        geo_rows = [{"test_index": int(t), "nearest_train_index": int(nearest_j[t]),
                     "nearest_train_miles": float(nearest[t]),
                     "datamodels_nearest_candidate_miles": eff["datamodels"]["nearest_candidate_miles"][t],
                     **{f"{m}_nearest_candidate_miles": eff[m]["nearest_candidate_miles"][t]
                        for m in METHODS if m != "datamodels"}}
                    for t in range(n_test)]

    # planted duplicates (a known answer)
    pairs = planted_pairs(ds)
    if pairs is not None and len(pairs):
        w_pl = planted_datamodel_scores(dm.weights, n_train + pairs[:, 0], n_train, dm_ranking)
        s_pl = ref.test_features(n_train)[pairs[:, 0]] @ ref.train_features(n_train).T
        cands = {**top, **{name: idx for name, (idx, _) in combined.items()}}
        planted = planted_report(pairs, cands, {"datamodels": w_pl, "representation": s_pl,
                                                "pixels": pixel_scores(ds, pairs[:, 0])}, k, families=planted_families(ds))
        out["planted"] = planted
        summary["planted"] = {m: {"recall_at_k": r["recall_at_k"], "median_full_rank": r["median_full_rank"]}
                              for m, r in planted["methods"].items()} | {"n_planted": planted["n_planted"]}
        if "by_family" in planted:
            summary["planted"]["by_family"] = planted["by_family"]

    # files: candidates (+ geo table), then leakage.json (keeping sections this call does not recompute)
    audits = run_dir / "audits"
    rows = (_candidate_rows(test_ids, dm_idx, dm_w, "datamodels")
            + _candidate_rows(test_ids, rep_idx, rep_scores, "representation")
            + _candidate_rows(test_ids, px_idx, px_scores, "pixels")
            + _combined_rows(test_ids, combined)
            + _candidate_rows(test_ids, cand["annot_idx"], cand["annot_w"], "annotation")
            + [row for name, e in extra_cands.items() for row in _candidate_rows(test_ids, e["top_idx"], e["top_w"], name)])
    write_csv(audits / CANDIDATES_CSV, rows, CANDIDATE_COLUMNS)
    files = {"json": str(audits / LEAKAGE_JSON), "candidates_csv": str(audits / CANDIDATES_CSV)}
    if geo_rows is not None:
        write_csv(audits / GEO_CSV, geo_rows, list(geo_rows[0]) if geo_rows else ["test_index"])
        files["geo_csv"] = str(audits / GEO_CSV)
    kept = _old_sections(audits / LEAKAGE_JSON)
    out.update(kept)
    for key in kept:
        summary[key] = kept[key].get("summary", kept[key]) if key == "mturk" else _brief(key, kept[key])
    summary["files"] = files
    summary["seconds"] = round(time.perf_counter() - start, 2)
    write_json(audits / LEAKAGE_JSON, out)

    if write_export:
        export = export_mturk(run_dir, ds, cand, Path(mturk_export), str(image_base_url), sample=mturk_sample,
                              upscale=upscale)
        _merge_section(run_dir, "mturk_export", export)
        summary["mturk_export"] = _brief("mturk_export", export)
    if mturk_results is not None:
        res = import_mturk(run_dir, Path(mturk_results), Path(mturk_export) if mturk_export else None,
                           weights=dm.weights, n_train=n_train, rep_idx=rep_idx)
        summary["mturk"] = res["summary"]
        files.update(res["files"])
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


# ----- verdicts: which test images have a near-copy among their candidates -----------------
def leak_verdicts(run_dir: Path, ds: Dataset) -> list[dict]:
    """Per test image, the candidate (datamodels, FAISS or pixels, from leakage_candidates.csv) nearest in
    pixels, how far (:func:`audit.audits.leakage.near_copy_distance`), where each ranking put it, the
    full-data models' prediction (RUN/reference.npz) and the verdict: ``leaked`` when the distance is at
    most ``NEAR_COPY``, ``possible`` when at most ``POSSIBLE_COPY`` and at least two rankings list the pair."""
    path = Path(run_dir) / "audits" / CANDIDATES_CSV
    ranks: dict[tuple[int, int], dict] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                method = row.get("method")
                if method not in METHODS or not (row.get("train_index") or "").lstrip("-").isdigit():
                    continue
                key = (int(row["test_index"]), int(row["train_index"]))
                if key[1] >= 0:
                    ranks.setdefault(key, {})[method] = (int(row["rank"]), float(row["weight"]))
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, ValueError) as exc:
        raise AuditError(f"{path} is unreadable ({type(exc).__name__}); run `audit leakage {run_dir}` again") from None
    if not ranks:  # every audit lists FAISS neighbours for every test image: an empty table lost them
        raise AuditError(f"{path} lists no candidates; run `audit leakage {run_dir}` again")
    pairs = np.array(sorted(ranks), dtype=np.int64).reshape(-1, 2)
    if len(pairs) and (pairs[:, 0].max() >= ds.n_test or pairs[:, 1].max() >= ds.n_train):
        raise AuditError(f"{path} names examples the dataset does not have; run `audit leakage {run_dir}` again")
    dist = near_copy_distance(ds.x_test, ds.x_train, pairs, pixel_spread(ds.x_train))
    ref = load_reference(run_dir)
    complete = ref is not None and len(ref.mean_logits) == ds.n_train + ds.n_test
    pred = ref.mean_logits[ds.n_train:].argmax(1) if complete else None
    out = []
    for t in np.unique(pairs[:, 0]).tolist():
        rows = np.flatnonzero(pairs[:, 0] == t)
        best = int(rows[np.argmin(dist[rows])])
        j, d = int(pairs[best, 1]), float(dist[best])
        found = ranks[(t, j)]
        agree = sum(m in found for m in METHODS) >= 2
        verdict = "leaked" if d <= NEAR_COPY else "possible" if d <= POSSIBLE_COPY and agree else ""
        dm, rep = found.get("datamodels"), found.get("representation")
        out.append({"test_index": t, "verdict": verdict, "train_index": j, "distance": d,
                    "datamodels_rank": dm[0] if dm else None, "datamodels_weight": dm[1] if dm else None,
                    "representation_rank": rep[0] if rep else None,
                    "representation_similarity": rep[1] if rep else None, "label": int(ds.y_test[t]),
                    "full_data_prediction": int(pred[t]) if pred is not None else None,
                    "label_name": ds.classes[int(ds.y_test[t])],
                    "full_data_prediction_name": ds.classes[int(pred[t])] if pred is not None else None})
    return out


def read_verdicts(path: Path) -> list[dict] | None:
    """The rows of leakage_verdicts.json, or None when it is missing, unreadable or of another version."""
    try:
        rows = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    ok = isinstance(rows, list) and all(isinstance(r, dict) and set(VERDICT_COLUMNS) <= set(r) for r in rows)
    return rows if ok else None


def leak_finding(v: Mapping[str, Any]) -> Finding:
    """A test image whose nearest candidate is a near-copy (``leaked``: high) or close and listed by two
    of the rankings (``possible``: medium)."""
    t, j, d = int(v["test_index"]), int(v["train_index"]), float(v["distance"])
    found = [f"datamodels (rank {v['datamodels_rank']}, weight {v['datamodels_weight']:.3f})"
             if v.get("datamodels_rank") else "",
             f"FAISS (rank {v['representation_rank']}, cosine {v['representation_similarity']:.3f})"
             if v.get("representation_rank") else ""]
    pred = v.get("full_data_prediction")
    given, predicted = v.get("label_name"), v.get("full_data_prediction_name")
    verdict = ("" if pred is None else f"; the full-data models predict {predicted!r}"
               + (", its label (so test accuracy counts a training image)" if pred == v["label"]
                  else f", not its label {given!r}"))
    return Finding(
        index=t, split="test", issue=LEAK_ISSUE, severity="high" if v["verdict"] == "leaked" else "medium",
        rule=(f"high: RMS pixel difference at most {NEAR_COPY:g} of the training set's pixel spread (planted copies, "
              f"noise 0.1, measure about 0.1); medium: at most {POSSIBLE_COPY:g} and listed by two of the datamodel, "
              "FAISS and pixel candidates"),
        score=max(0.0, 1.0 - d), score_meaning="1 - RMS pixel difference to the copy (in pixel spreads)",
        step="leakage", given_label=int(v["label"]), given_name=given, predicted_label=pred,
        predicted_name=predicted, related=[j],
        headline=(f"test {t} ({given!r}) {'is a near-copy of' if v['verdict'] == 'leaked' else 'may be a copy of'} "
                  f"train {j}"),
        evidence=(f"training image {j} differs by {d:.3f} pixel spreads (RMS); found by "
                  + " and ".join(f for f in found if f) + verdict),
        action="remove the test image (or its copy from the training set) and measure test accuracy again",
        details={"train_index": j, "distance": d, "verdict": v["verdict"],
                 "methods": [m for m in METHODS if v.get(f"{m}_rank")],
                 "datamodels_rank": v.get("datamodels_rank"), "representation_rank": v.get("representation_rank"),
                 "representation_similarity": v.get("representation_similarity"), "full_data_prediction": pred})


# ----- MTurk -----------------------------------------------------------------------------
def export_mturk(run_dir: Path, ds, cand: dict, out_dir: Path, image_base_url: str, *, sample: int | None = None,
                 upscale: int | None = None) -> dict:
    """MTurk batch of the annotation candidates (top + bottom weights); keeps a manifest copy in RUN/audits/."""
    ids = np.arange(ds.n_test, dtype=np.int64) if sample is None else sample_targets(ds.y_test, int(sample), seed=0)
    up = auto_upscale(ds.x_test.shape[1:3]) if upscale is None else int(upscale)
    exp = export_batch(out_dir, ids, cand["annot_idx"][ids], ds.x_test, ds.x_train, image_base_url, upscale=up,
                       classes=ds.classes, y_test=ds.y_test, y_train=ds.y_train)
    n_annot = cand["annot_idx"].shape[1] // 2
    manifest = read_json(exp.manifest)
    manifest.update({"positions": ["top"] * n_annot + ["bottom"] * n_annot,
                     "weights": np.asarray(cand["annot_w"][ids]).tolist(), "export_dir": str(exp.dir)})
    write_json(Path(run_dir) / "audits" / MTURK_MANIFEST, manifest)
    return {"dir": str(exp.dir), "n_hits": int(len(ids)), "n_images": len(exp.images), "upscale": up,
            "n_candidates": int(cand["annot_idx"].shape[1]), "batch_input": str(exp.batch_input),
            "template": str(exp.template), "readme": str(exp.readme), "image_base_url": image_base_url}


def _saved_manifest(run_dir: Path) -> tuple[list[int], dict[int, list[int]]]:
    """Test ids and candidate lists of the run's last MTurk export (RUN/audits/leakage_mturk_manifest.json)."""
    path = Path(run_dir) / "audits" / MTURK_MANIFEST
    try:
        data = read_json(path)
        ids = [int(t) for t in data["test_ids"]]
        return ids, {t: [int(j) for j in row] for t, row in zip(ids, data["candidates"])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"{path} is unreadable ({exc}); export the batch again with --mturk-export") from None


def import_mturk(run_dir: Path, results_csv: Path, export_dir: Path | None, *, weights=None, n_train: int = 0,
                 rep_idx: np.ndarray | None = None) -> dict:
    """Import an MTurk results CSV against the run's export; writes leakage_mturk.json and two CSVs."""
    audits = Path(run_dir) / "audits"
    run_manifest = audits / MTURK_MANIFEST
    ids, cands = read_manifest(export_dir) if export_dir is not None else _saved_manifest(run_dir)
    positions = None
    if run_manifest.exists():
        saved = read_json(run_manifest)
        if saved.get("test_ids") == ids and saved.get("candidates") == [cands[t] for t in ids]:
            positions = saved.get("positions")
    res = import_results(results_csv, ids, cands)
    rep_sets = {int(t): set(rep_idx[t].tolist()) for t in ids} if rep_idx is not None else None
    for p in res.pairs:
        if weights is not None:
            p["weight"] = float(weights[n_train + p["test_id"], p["train_id"]])
        if positions is not None:
            p["kind"] = positions[p["position"]]
        if rep_sets is not None:
            p["in_representation_top_k"] = p["train_id"] in rep_sets[p["test_id"]]
    data = res.to_json()
    summary = data["summary"]
    k = len(next(iter(cands.values()))) if cands else 0
    by_pos = [[p["score"] for p in res.pairs if p["position"] == i] for i in range(k)]
    summary["mean_score_by_position"] = [float(np.mean(v)) if v else None for v in by_pos]
    if positions is not None:
        for kind in ("top", "bottom"):
            v = [p["score"] for p in res.pairs if p.get("kind") == kind]
            summary[f"mean_score_{kind}"] = float(np.mean(v)) if v else None
    summary["results_csv"] = str(results_csv)
    files = {"mturk_json": str(audits / MTURK_JSON), "mturk_pairs_csv": str(audits / MTURK_PAIRS_CSV),
             "mturk_tests_csv": str(audits / MTURK_TESTS_CSV)}
    write_json(audits / MTURK_JSON, data)
    pair_cols = ["test_id", "train_id", "position", "kind", "weight", "in_representation_top_k", "n_workers",
                 "n_marked", "score"]
    write_csv(audits / MTURK_PAIRS_CSV, res.pairs, pair_cols)
    write_csv(audits / MTURK_TESTS_CSV, data["tests"], ["test_id", "n_workers", "leakage_score"])
    _merge_section(run_dir, "mturk", {"summary": summary, "files": files})
    return {"summary": summary, "files": files}


# ----- planted check ---------------------------------------------------------------------
def planted_run_dir(run_dir: Path | str, n: int, families: Sequence[str] | None = None) -> Path:
    """Where the planted twin of a run lives: ``<run>-plant<N>`` next to it (``-plant<N>-<families>``
    when the copies are perturbed by families, e.g. ``-plant100-noise.shift.brightness``)."""
    run_dir = Path(run_dir)
    suffix = f"-{'.'.join(families)}" if families else ""
    return run_dir.parent / f"{run_dir.name}-plant{int(n)}{suffix}"


def check_plant(run_dir: Path, n: Any, n_models: int | None, families: Sequence[str] | None | str) -> Any:
    """The planted check's settings checked against the run before anything is computed (``audit leakage --plant``
    checks them before the audit itself runs): one line for the first it cannot use. Returns the run's config."""
    c = RunStore.open(run_dir, writable=False).config
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= n <= c.n_test:
        raise AuditError(f"--plant {n}: plant between 1 and the {c.n_test} test images")
    if "plant" in c.dataset_options:
        raise AuditError(f"{run_dir} is itself a planted run; run the planted check from the original run")
    if n_models is not None and n_models < MIN_PLANT_MODELS:
        raise AuditError(f"--plant-models {n_models}: the planted run needs at least {MIN_PLANT_MODELS} models to "
                         f"fit datamodels")
    if families != "default":
        parse_families(families)
    return c


def run_planted_check(run_dir: Path | str, n: int, *, k: int = DEFAULT_K, n_models: int | None = None,
                      seed: int = 0, noise: float | None = None, shift: bool | None = None,
                      families: Sequence[str] | None | str = None,
                      planted_run: Path | None = None, engine: str = "local", address: str | None = None,
                      datamodel_ranking: str = "auto", progress: Progress = SILENT) -> dict:
    """Plant perturbed copies of ``n`` test images, train + fit a twin run, and measure recall@k.

    ``families``: how the copies are perturbed — None for the classic copies (noise, plus a
    shift for images of 16+ pixels), a list of families (recall is also reported per family), or
    "default": every family that keeps the class for this dataset (noise, one-pixel shift,
    brightness/contrast, crop-and-resize, JPEG, and a horizontal flip where classes allow it) —
    what `audit leakage --plant N` uses.

    The twin (``<run>-plant<n>`` unless ``planted_run``) copies the run's dataset, trainer,
    α and seed, with ``n_models`` models (default: 1,000 or the run's count if smaller). Resumable: a rerun
    trains only what is missing and refits only when models were added. The result (also in
    the twin's own leakage.json) is saved as "planted_check" in the run's leakage.json.
    ``engine``/``address`` train the twin's models (and its reference models) as Ray tasks;
    ``datamodel_ranking`` ranks the twin's datamodel candidates as the run's audit does.
    """
    start = time.perf_counter()
    datamodel_ranking_for("leak", datamodel_ranking)
    run_dir = Path(run_dir)
    c = check_plant(run_dir, n, n_models, families)
    if not (run_dir / "audits" / LEAKAGE_JSON).exists():
        raise AuditError(f"{run_dir} has no leakage audit yet; run `audit leakage {run_dir}` first")
    n_models = int(min(PLANT_MODELS, c.n_models) if n_models is None else n_models)
    if families == "default":
        fams: tuple[str, ...] | None = default_families(load_dataset(c.dataset, **c.dataset_options))
    else:
        fams = parse_families(families)
    twin = Path(planted_run) if planted_run is not None else planted_run_dir(run_dir, n, fams)
    options = {**c.dataset_options,
               **plant_options(n, seed, DEFAULT_PLANT_NOISE if noise is None else noise, shift, families=fams)}
    ds = load_dataset(c.dataset, **options)
    trainer = dict(c.trainer)
    name = trainer.pop("name")
    t = pipeline.train(c.dataset, twin, n_models=n_models, alpha=c.alpha, seed=c.seed, trainer=name,
                       trainer_options=trainer, block_size=c.block_size, dataset_options=options, dataset=ds,
                       engine=engine, address=address, progress=progress)
    pipeline.TRAIN.note(twin)  # the twin's models as they are now
    fit_config = pipeline.FIT.config_of(run_dir)  # fit the twin as the run was fitted
    fitted = pipeline.FIT.is_current(twin, fit_config)
    if not fitted:
        pipeline.FIT.run(twin, fit_config, progress=progress)
    s = run_leakage(twin, k=k, dataset=ds, engine=engine, address=address, datamodel_ranking=datamodel_ranking,
                    progress=progress)
    planted = read_json(twin / "audits" / LEAKAGE_JSON)["planted"]
    result = {"run": str(twin), "n_planted": int(n), "n_models": n_models, "k": int(k),
              "plant_options": options, "models_trained_now": t["trained_now"], "refitted": not fitted,
              "test_accuracy": t.get("test_accuracy"), "overlap": s["overlap"],
              "methods": {m: {key: r[key] for key in ("recall_at_k", "median_full_rank", "n_score_not_positive",
                                                      "rank", "full_rank") if key in r}
                          for m, r in planted["methods"].items()},
              "pairs": planted["pairs"], "datamodel_ranking": s.get("datamodel_ranking"),
              "seconds": round(time.perf_counter() - start, 2)}
    if "by_family" in planted:
        result["by_family"], result["families"] = planted["by_family"], planted["families"]
    _merge_section(run_dir, "planted_check", result)
    return result


# ----- the step (audit.contract) ---------------------------------------------------------------
@dataclass(frozen=True)
class LeakageConfig:
    """Settings of the leakage audit."""

    k: int = setting(DEFAULT_K, "--k", "candidates per test image (datamodels and FAISS)")
    d_grid: tuple[float, ...] | None = setting(None, "--d-grid", "FMoW: comma-separated miles (default 0.25..3)",
                                               parse="floats")
    n_reference: int = setting(N_REFERENCE, "--n-reference", "full-data reference models for the FAISS baseline",
                               command_only=True)
    features: str | None = setting(None, "--features", "your own features [n_train + n_test, d] (.npy/.npz) for the "
                                                       "representation baseline instead of the reference models'")
    score_methods: tuple[str, ...] | None = setting(None, "--score-methods", "also list candidates from these score matrices "
                                             "of the run (audit import-scores, audit gradients), with their overlap "
                                             "with the datamodels'", parse="names")
    datamodel_ranking: str = setting("auto", "--datamodel-ranking", DATAMODEL_RANKING_HELP)
    mturk_export: str | None = setting(None, "--mturk-export", "write the MTurk batch into DIR (with "
                                       "--mturk-results and no --image-base-url: read the export in DIR)",
                                       command_only=True, volatile=True)
    image_base_url: str | None = setting(None, "--image-base-url", "public URL where DIR/images/ will be served",
                                         command_only=True, volatile=True)
    mturk_sample: int | None = setting(None, "--mturk-sample", "export N class-balanced test images instead of all",
                                       command_only=True, volatile=True)
    mturk_results: str | None = setting(None, "--mturk-results", "MTurk batch results CSV to import",
                                        command_only=True, volatile=True)
    plant: int | None = setting(None, "--plant", "also plant copies of N test images in a twin run <run>-plantN, "
                                "train + fit it, and report recall@k (CPU-sized data)", command_only=True,
                                volatile=True)
    engine: str = engine_setting()
    address: str | None = address_setting()
    plant_families: tuple[str, ...] | None = setting(
        None, "--plant-families", "how --plant perturbs the copies: comma-separated among noise, shift, brightness, "
        "crop, flip, jpeg (default: every family that keeps the class; 'classic': noise only)", parse="names",
        command_only=True, volatile=True)
    plant_models: int | None = setting(None, "--plant-models", "models in the planted run (default: 1000, or the "
                                       "run's number if smaller)", command_only=True, volatile=True)

    def check(self) -> None:
        """One line for a setting the audit cannot use, before anything runs (``audit run`` calls it first)."""
        datamodel_ranking_for("leak", self.datamodel_ranking)
        plant, export = ("--plant N", self.plant), ("--mturk-export DIR", self.mturk_export)
        for option, value, (needed, given) in (("--plant-families", self.plant_families, plant),
                                               ("--plant-models", self.plant_models, plant),
                                               ("--mturk-sample", self.mturk_sample, export),
                                               ("--image-base-url", self.image_base_url, export)):
            if value is not None and given is None:
                raise AuditError(f"{option} only applies with {needed}; add it or leave {option} out")


class CandidateStats(Result):
    mean_positive: float  # candidates listed per test image (positive weights or cosines)
    n_tests_fewer_than_k: int
    n_tests_none: int
    same_class_fraction: float | None = None


class Overlap(Result):
    k: int
    mean_overlap_at_k: float | None = None
    chance_overlap_at_k: float
    mean_jaccard: float | None = None
    frac_any_overlap: float | None = None


class LeakageResult(Result):
    """The "summary" of audits/leakage.json."""

    run: str
    dataset: str
    n_train: int
    n_test: int
    k: int
    n_annot: int
    n_reference_models: int
    reference_test_accuracy: float | None = None
    datamodel_ranking: Literal["weights", "embedding", "both"] = "weights"  # files written before the setting: weights
    datamodel_ranking_note: str | None = None
    datamodel_candidates: CandidateStats
    overlap: Overlap
    geo: dict | None = None
    planted: dict | None = None
    planted_check: dict | None = None
    mturk_export: dict | None = None
    mturk: dict | None = None
    files: dict[str, str] = {}
    seconds: float = 0.0


# ----- typed reads of the audit's files (what the report and other readers use) ---------------
class PlantedMethod(Result):
    recall_at_k: dict[str, float | None]
    median_full_rank: float | None = None
    full_rank: list[int | None] | None = None  # per planted copy, its rank among all training images


def found_only_by(methods: Mapping[str, PlantedMethod], k: int) -> dict[str, int] | None:
    """Per single ranking (datamodels, representation, pixels), the planted copies it alone has in its top
    ``k`` (None when the full ranks were not saved)."""
    ranks = {m: methods[m].full_rank for m in METHODS if m in methods and methods[m].full_rank is not None}
    if len(ranks) < 2:
        return None
    hit = {m: np.array([r is not None and r <= k for r in v]) for m, v in ranks.items()}
    return {m: int((h & ~np.any([hit[o] for o in hit if o != m], axis=0)).sum()) for m, h in hit.items()}


def sources_of_union(union: Mapping[int, Sequence[Candidate]]) -> dict[str, int]:
    """How many (test, training) candidate pairs of the union each combination of rankings proposed,
    most first: ``{"pixels": 812, "datamodels+pixels": 40, ...}``."""
    counts: dict[str, int] = {}
    for cands in union.values():
        for c in cands:
            key = "+".join(sorted((c.found_by or "?").split("+"), key=lambda m: (m not in METHODS, METHODS.index(m)
                                                                                 if m in METHODS else 0, m)))
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


class PlantedFamily(Result):
    n_planted: int
    methods: dict[str, PlantedMethod]


class PlantedRecall(Result):
    """A "planted" (this run's planted copies) or "planted_check" (the twin run) section."""

    n_planted: int
    methods: dict[str, PlantedMethod]
    pairs: list[tuple[int, int]] = []
    run: str | None = None
    by_family: dict[str, PlantedFamily] | None = None  # copies perturbed by families: recall per family
    datamodel_ranking: str | None = None  # the twin's (planted_check; None: made before it was a setting, weights)


class GeoCdf(Result):
    d_miles: list[float]
    fraction_within: list[float]


class GeoCheck(Result):
    """The geodesic check (datasets with coordinates): efficacy per d and method, distance CDF."""

    d_miles: list[float]
    efficacy: dict[str, list[float | None]]
    cdf: GeoCdf | None = None


class LeakageFile(Result):
    """audits/leakage.json as a whole: the summary and the sections behind it."""

    summary: LeakageResult
    geo: GeoCheck | None = None
    planted: PlantedRecall | None = None
    planted_check: PlantedRecall | None = None


class Histogram(Result):
    bin_edges: list[float]
    counts: list[int]


class LeakageScores(Result):
    mean: float | None = None
    n_at_least_half: int | None = Field(None, alias="n_at_least_0.5")
    hist: Histogram | None = None


class MTurkSummary(Result):
    n_assignments_used: int | None = None
    n_workers: int | None = None
    n_tests_answered: int | None = None
    leakage_score: LeakageScores | None = None
    pair_score_hist: Histogram | None = None


class MTurkTest(Result):
    test_id: int
    leakage_score: float | None = None


class MTurkPair(Result):
    test_id: int
    train_id: int
    score: float | None = None


class MTurkScores(Result):
    """audits/leakage_mturk.json: imported annotations."""

    summary: MTurkSummary
    tests: list[MTurkTest] = []
    pairs: list[MTurkPair] = []


@dataclass(frozen=True)
class Candidate:
    """One row of leakage_candidates.csv."""

    test: int
    train: int
    rank: int
    score: float | None  # datamodel weight, or cosine similarity for "representation"
    found_by: str | None = None  # combined rankings: the methods that proposed it ("datamodels+pixels")


@dataclass(frozen=True)
class GeoTable:
    """leakage_geo.csv: per test image, the nearest training image and nearest candidate per method (miles)."""

    test_index: list[int]
    nearest_train_miles: list[float | None]
    nearest_candidate_miles: dict[str, list[float | None]]


def _number(raw: Any) -> float | None:
    try:
        v = float(raw)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _csv_rows(path: Path) -> list[dict] | None:
    if not path.is_file():
        return None
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise unreadable(path, "audit leakage", exc) from None


def read_candidates(path: Path) -> dict[str, dict[int, list[Candidate]]] | None:
    """leakage_candidates.csv as ``{method: {test index: candidates by rank}}`` (None when missing)."""
    rows = _csv_rows(path)
    if rows is None:
        return None
    out: dict[str, dict[int, list[Candidate]]] = {}
    for r in rows:
        t, j, rank = _number(r.get("test_index")), _number(r.get("train_index")), _number(r.get("rank"))
        if t is None or j is None:
            continue
        out.setdefault(str(r.get("method") or "datamodels"), {}).setdefault(int(t), []).append(
            Candidate(int(t), int(j), int(rank or 0), _number(r.get("weight")), r.get("found_by") or None))
    for lists in out.values():
        for v in lists.values():
            v.sort(key=lambda c: (c.rank, c.train))
    return out


def read_geo_table(path: Path) -> GeoTable | None:
    """leakage_geo.csv (None when missing or empty)."""
    rows = _csv_rows(path)
    if not rows:
        return None
    suffix = "_nearest_candidate_miles"
    methods = [col[: -len(suffix)] for col in rows[0] if col.endswith(suffix)]
    return GeoTable(test_index=[int(_number(r.get("test_index")) or 0) for r in rows],
                    nearest_train_miles=[_number(r.get("nearest_train_miles")) for r in rows],
                    nearest_candidate_miles={m: [_number(r.get(m + suffix)) for r in rows] for m in methods})


def geo_value(run_dir: Path, path: Path, p: Mapping[str, Any]) -> tuple[float | None, dict]:
    """Fraction of test images with a leakage candidate within ``leak_miles`` (FMoW geodesic check).

    Read from leakage_geo.csv (nearest candidate distance per test image: any d works); when
    only leakage.json exists, d must be on its distance grid.
    """
    what = f"audit leakage {run_dir}"
    d, method = float(p["leak_miles"]), p["leak_method"]
    if path.name.endswith(".csv"):
        table = read_geo_table(path)
        if table is None:
            raise AuditError(f"{path} lists no test images; run `{what}` again")
        if method not in table.nearest_candidate_miles:
            raise AuditError(f"{path} has no column {method}_nearest_candidate_miles; run `{what}` again")
        dist = [math.inf if x is None else x for x in table.nearest_candidate_miles[method]]
        n = sum(x <= d for x in dist)
        return n / len(dist), {"d_miles": d, "method": method, "n_test": len(dist), "n_within": n}
    data = read_result(path, what)
    if not isinstance(data, dict) or "geo" not in data:
        raise AuditError(f"{path} has no geodesic check (the dataset has no lat/lon); "
                         "max_geo_leak_fraction applies to FMoW-like data only")
    grid = [float(x) for x in require(data, ("geo", "d_miles"), path, what)]
    fracs = require(data, ("geo", "frac_with_candidate", method), path, what)
    for x, f in zip(grid, fracs):
        if math.isclose(x, d):
            return finite(f), {"d_miles": d, "method": method}
    raise AuditError(f"leak_miles = {d:g} is not on the distance grid of {path} ({', '.join(f'{x:g}' for x in grid)}) "
                     f"and leakage_geo.csv is missing; use a grid value or run `{what} --d-grid ...` again")


def mturk_value(run_dir: Path, path: Path, p: Mapping[str, Any]) -> tuple[float | None, dict]:
    """Fraction of the annotated test images whose MTurk leakage score is ≥ ``mturk_score``."""
    what = f"audit leakage {run_dir} --mturk-results FILE"
    tests = require(read_result(path, what), ("tests",), path, what)
    if not isinstance(tests, list) or not tests:
        raise AuditError(f"{path} has no annotated test images; run `{what}` again")
    s = float(p["mturk_score"])
    scores = [finite(require(t, ("leakage_score",), path, what)) for t in tests]
    n = sum(v is not None and v >= s for v in scores)
    return n / len(scores), {"min_score": s, "n_annotated": len(scores), "n_at_least": n}


def planted_value(run_dir: Path, path: Path, p: Mapping[str, Any]) -> tuple[float | None, dict]:
    """Recall@k of planted duplicates (the run's planted check, or the run's own planted copies)."""
    what = f"audit leakage {run_dir} --plant N"
    data = read_result(path, what)
    section = data.get("planted_check") or data.get("planted") if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise AuditError(f"{path} has no planted-duplicate results; run `{what}` first")
    recall = require(section, ("methods", p["planted_method"], "recall_at_k"), path, what)
    k = p["planted_k"]
    key = str(k) if k else max(recall, key=int)
    if key not in recall:
        raise AuditError(f"planted_k = {k}: {path} has recall at k = {', '.join(recall)} only; "
                         "use one of those")
    return finite(recall[key]), {"k": int(key), "method": p["planted_method"], "n_planted": section.get("n_planted")}


_LEAK_METHOD = METHODS


class LeakageStep(Step[LeakageConfig, LeakageResult]):
    """Train-test leakage candidates from datamodels vs the FAISS baseline; geodesic and planted checks; MTurk."""

    name, title = "leakage", "Train-test leakage"
    config_type, result_type = LeakageConfig, LeakageResult
    files = {"result": f"audits/{LEAKAGE_JSON}", "candidates": f"audits/{CANDIDATES_CSV}", "geo": f"audits/{GEO_CSV}",
             "mturk": f"audits/{MTURK_JSON}", "mturk_manifest": f"audits/{MTURK_MANIFEST}",
             "mturk_pairs": f"audits/{MTURK_PAIRS_CSV}", "mturk_tests": f"audits/{MTURK_TESTS_CSV}",
             "verdicts": f"audits/{VERDICTS_JSON}"}
    result_key = "summary"
    needs = (pipeline.FIT,)
    issues = (LEAK_ISSUE,)
    metrics = (
        Metric("max_geo_leak_fraction", "geographic leakage", "max", "fraction", geo_value,
               {"leak_miles": Param("miles", 0.25, "d for max_geo_leak_fraction (miles)"),
                "leak_method": Param("choice", "datamodels", "candidate ranking for max_geo_leak_fraction",
                                     _LEAK_METHOD)},
               lambda p: f"test images with a candidate within {p['leak_miles']:g} miles ({p['leak_method']})",
               "audit leakage RUN (FMoW or data with lat/lon)", ("geo", "result")),
        Metric("max_mturk_leak_fraction", "annotated leakage", "max", "fraction", mturk_value,
               {"mturk_score": Param("fraction", 0.5, "s for max_mturk_leak_fraction: leakage score at least s "
                                                      "counts")},
               lambda p: f"annotated test images with MTurk leakage score >= {p['mturk_score']:g}",
               "audit leakage RUN --mturk-results FILE", ("mturk",)),
        Metric("min_planted_recall", "planted duplicates found", "min", "fraction", planted_value,
               {"planted_k": Param("count", 0, "k for min_planted_recall (0: the largest k saved)"),
                "planted_method": Param("choice", "datamodels", "candidate ranking for min_planted_recall",
                                        METHODS + COMBINED)},
               lambda p: f"planted copies in the top {p['planted_k'] or 'k'} candidates ({p['planted_method']})",
               "audit leakage RUN --plant N"),
    )

    def check_scores(self, run_dir: Path | str, config: LeakageConfig, coming: Sequence[str] = ()) -> None:
        if config.score_methods:
            scores.check_methods(run_dir, config.score_methods, (), coming)

    def compute(self, run_dir: Path, config: LeakageConfig, *, dataset: Dataset | None = None,
                progress: Progress = SILENT) -> LeakageResult:
        config.check()
        fams = config.plant_families
        families = "default" if fams is None else None if tuple(fams) == ("classic",) else fams
        if config.plant is not None:  # before the audit: a check that cannot run must not cost the audit's result
            check_plant(Path(run_dir), config.plant, config.plant_models, families)
        s = run_leakage(run_dir, k=config.k, d_grid=config.d_grid, mturk_export=config.mturk_export,
                        image_base_url=config.image_base_url, mturk_results=config.mturk_results,
                        mturk_sample=config.mturk_sample, n_reference=config.n_reference, dataset=dataset,
                        engine=config.engine, address=config.address, features=config.features,
                        score_methods=config.score_methods or (), datamodel_ranking=config.datamodel_ranking,
                        progress=progress)
        if config.plant is not None:
            p = run_planted_check(run_dir, config.plant, k=config.k, n_models=config.plant_models, families=families,
                                  engine=config.engine, datamodel_ranking=config.datamodel_ranking,
                                  address=config.address, progress=progress)
            s["planted_check"] = _brief("planted_check", p)
        ds = dataset if dataset is not None else pipeline.dataset_of(RunStore.open(run_dir, writable=False))
        write_json(self.path(run_dir, "verdicts"), leak_verdicts(Path(run_dir), ds))
        return LeakageResult.from_json(s)

    # ----- typed reads of the files behind the summary (None: not written) -----------------
    def details(self, run_dir: Path | str) -> LeakageFile | None:
        """audits/leakage.json with its geodesic and planted sections."""
        return self.read(run_dir, "result", LeakageFile)

    def mturk_scores(self, run_dir: Path | str) -> MTurkScores | None:
        """audits/leakage_mturk.json: imported MTurk annotations."""
        return self.read(run_dir, "mturk", MTurkScores)

    def candidates(self, run_dir: Path | str) -> dict[str, dict[int, list[Candidate]]] | None:
        return read_candidates(self.path(run_dir, "candidates"))

    def geo_table(self, run_dir: Path | str) -> GeoTable | None:
        return read_geo_table(self.path(run_dir, "geo"))

    def findings(self, run_dir: Path | str) -> list[Finding]:
        """Test images with a near-copy among their candidates (leakage_verdicts.json; recomputed from the
        candidates and the data when an older audit did not write it)."""
        run_dir = Path(run_dir)
        if not self.path(run_dir, "candidates").is_file():
            return []
        saved, candidates = self.path(run_dir, "verdicts"), self.path(run_dir, "candidates")
        verdicts = read_verdicts(saved)
        if verdicts is None or saved.stat().st_mtime_ns < candidates.stat().st_mtime_ns:
            verdicts = leak_verdicts(run_dir, pipeline.dataset_of(RunStore.open(run_dir, writable=False)))
        return [leak_finding(v) for v in verdicts if v.get("verdict") in ("leaked", "possible")]

    def summary(self, s: LeakageResult) -> list[Block]:
        o, dc = s.overlap, s.datamodel_candidates
        out: list[Block] = [
            Line(f"[bold]leakage[/] {s.dataset}: {s.n_test} test x {s.n_train} train, top {s.k} candidates; FAISS on "
                 f"{s.n_reference_models} full-data models (test acc {_f(s.reference_test_accuracy)})"),
            Line(f"datamodel candidates ({LEAK_RANKING_WORDS.get(s.datamodel_ranking, s.datamodel_ranking)}"
                 f"{'; ' + s.datamodel_ranking_note if s.datamodel_ranking_note else ''}): {dc.mean_positive:.1f} "
                 f"of {s.k} on average ({dc.n_tests_fewer_than_k} test images have fewer, {dc.n_tests_none} none); "
                 f"same class as the test image: {_f(dc.same_class_fraction)}"),
            Line(f"overlap datamodels vs FAISS: {_f(o.mean_overlap_at_k)} of the top {o.k} shared "
                 f"(chance {o.chance_overlap_at_k:.4f}), Jaccard {_f(o.mean_jaccard)}, "
                 f"{_f(o.frac_any_overlap)} of test images share at least one")]
        out += [Line(f"overlap datamodels vs {name} ({v.get('how')}): {_f(v.get('mean_overlap_at_k'))} of the top "
                     f"{s.k} shared; candidates in the CSV as method {name}")
                for name, v in (s.get("score_methods") or {}).items()]
        if s.geo is not None:
            g = s.geo
            shown = [m for m in METHODS if m in g["efficacy"]]
            rows = tuple((f"{d:g}", str(g["n_ground_truth"][i]), *(_f(g["efficacy"][m][i]) for m in shown))
                         for i, d in enumerate(g["d_miles"]))
            out.append(Table("FMoW geodesic check: efficacy = found / ground truth",
                             ("d (miles)", "ground truth", *shown), rows, right_aligned=True))
            fw = g["fraction_within"]
            out.append(Line(f"test images within 0.25 / 2.6 miles of a training image: {_f(fw.get('0.25'))} / "
                            f"{_f(fw.get('2.6'))} (paper, full FMoW 2012: ~0.20 / ~0.80)"))
        if s.planted is not None:
            out += _recall_table(s.planted, f"planted duplicates in this run ({s.planted['n_planted']})")
            out += _family_table(s.planted)
        if s.planted_check is not None:
            pc = s.planted_check
            out += _recall_table(pc, f"planted check: {pc.get('n_planted')} copies in {pc.get('run')}, datamodels: "
                                     f"{LEAK_RANKING_WORDS.get(planted_ranking(pc), planted_ranking(pc))}")
            out += _family_table(pc)
        if s.mturk_export is not None:
            e = s.mturk_export
            out.append(Line(f"MTurk batch: {e['n_hits']} HITs in {e['dir']} (batch_input.csv, hit_template.html, "
                            "images/)"))
        if s.mturk is not None:
            m = s.mturk
            ls = m["leakage_score"]
            out.append(Line(f"MTurk results: {m['n_assignments_used']} assignments by {m['n_workers']} workers "
                            f"({m['n_rejected']} rejected) on {m['n_tests_answered']} test images; leakage score mean "
                            f"{_f(ls['mean'])}, >= 0.5 for {ls['n_at_least_0.5']}, = 1 for {ls['n_equal_1']}"))
            if m.get("mean_score_top") is not None:
                out.append(Line(f"mean annotation score: top candidates {_f(m['mean_score_top'])}, "
                                f"bottom candidates {_f(m.get('mean_score_bottom'))}"))
        return out


def _f(x: Any) -> str:
    v = finite(x)
    return "-" if v is None else f"{v:.3f}"


def _family_table(section: Mapping[str, Any]) -> list[Block]:
    """Recall at the largest k and median full rank per perturbation family and method."""
    fams = section.get("by_family")
    if not isinstance(fams, dict) or not fams:
        return []
    methods = [m for m in METHODS + COMBINED if any(m in f["methods"] for f in fams.values())]
    k = max((int(x) for f in fams.values() for r in f["methods"].values() for x in r["recall_at_k"]), default=0)
    rows = []
    for name, f in fams.items():
        cells = []
        for m in methods:
            r = f["methods"].get(m) or {}
            rank = r.get("median_full_rank")
            cells.append(_f((r.get("recall_at_k") or {}).get(str(k))) + (f" ({rank:g})" if finite(rank) else ""))
        rows.append((name, str(f["n_planted"]), *cells))
    return [Table(f"recall@{k} per perturbation family (median full rank)", ("family", "copies", *methods),
                  tuple(rows), right_aligned=True)]


def _recall_table(p: dict, title: str) -> list[Block]:
    methods = [m for m in _LEAK_METHOD if m in p]
    if not methods:
        return []
    ks = list(p[methods[0]]["recall_at_k"])
    with_rank = any("median_full_rank" in p[m] for m in methods)
    columns = ("method", *[f"@{k}" for k in ks]) + (("median rank",) if with_rank else ())
    rows = []
    for m in methods:
        row = [m if m == "datamodels" else "FAISS"] + [_f(p[m]["recall_at_k"][k]) for k in ks]
        if with_rank:
            rank = finite(p[m].get("median_full_rank"))
            row.append(f"{rank:g}" if rank is not None else "-")
        rows.append(tuple(row))
    return [Table(f"{title}: recall@k", columns, tuple(rows), right_aligned=True)]


LEAKAGE = LeakageStep()
