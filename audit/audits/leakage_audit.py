"""The leakage audit of a run (paper §4.2.2, App. H): candidates, baselines, checks, MTurk.

``run_leakage`` wires the building blocks to a run directory:

- datamodel candidates of every test example (top-k positive weights; top 5 + bottom 5
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

import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from audit.errors import AuditError
from audit.jsonio import read_json, write_csv, write_json
from audit.progress import SILENT, Progress

DEFAULT_K = 10
N_ANNOT = 5
DEFAULT_D_GRID = tuple(round(0.25 * i, 2) for i in range(1, 13))  # 0.25 .. 3.0 miles
CDF_MILES = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.6, 3.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0)
PAPER_FMOW_CDF = {"0.25": 0.20, "2.6": 0.80}  # paper §4.2.2: share of test images within d miles of a train image
RECALL_KS = (1, 5, 10)
METHODS = ("datamodels", "representation")
N_REFERENCE = 3
PLANT_MODELS = 1000  # planted twin run: enough for a strong signal, a few minutes on digits
MTURK_VIEW_PIXELS = 128

LEAKAGE_JSON = "leakage.json"
CANDIDATES_CSV = "leakage_candidates.csv"
GEO_CSV = "leakage_geo.csv"
MTURK_MANIFEST = "leakage_mturk_manifest.json"
MTURK_JSON = "leakage_mturk.json"
MTURK_PAIRS_CSV = "leakage_mturk_pairs.csv"
MTURK_TESTS_CSV = "leakage_mturk_tests.csv"
CANDIDATE_COLUMNS = ("test_index", "train_index", "rank", "weight", "method")
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
    from audit.audits.baselines import nearest_neighbours

    return nearest_neighbours(ref.train_features(n_train), ref.test_features(n_train), k, progress=progress)


def full_rank(scores_row: np.ndarray, j: int) -> int:
    """1-based rank of entry ``j`` among all of ``scores_row``, descending: 1 + how many score higher.

    Ties count in ``j``'s favour. That matters for sparse datamodels: most weights are exactly
    0, and breaking those ties by index would put a zero-weight copy appended at the end of the
    training set near the very bottom, a rank that says nothing about it.
    """
    s = np.asarray(scores_row)
    return int((s > s[j]).sum() + 1)


def planted_report(pairs: np.ndarray, cands: dict[str, np.ndarray], full_scores: dict[str, np.ndarray],
                   k: int) -> dict:
    """Recall@k and the copy's rank in the full ranking, per method, for planted ``(test, train)`` pairs.

    ``full_scores[method]`` ``[n_planted, n_train]``: each planted test image's score of every
    training example (datamodel weight, cosine similarity).
    """
    from audit.audits.leakage import planted_recall

    out: dict = {"n_planted": int(len(pairs)), "pairs": pairs.tolist(), "methods": {}}
    for method, cand in cands.items():
        rec = planted_recall(cand, pairs, recall_ks(k))
        ranks = [full_rank(full_scores[method][r], int(j)) for r, (_, j) in enumerate(pairs)]
        rec["full_rank"] = ranks
        rec["median_full_rank"] = float(np.median(ranks)) if ranks else None
        rec["n_score_not_positive"] = int(sum(full_scores[method][r, int(j)] <= 0 for r, (_, j) in enumerate(pairs)))
        out["methods"][method] = rec
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
    from audit.audits.leakage import candidates_table

    return [{**row, "method": method} for row in candidates_table(ids, idx, w)]


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


def _brief(key: str, value: dict) -> dict:
    if key == "planted_check":
        return {m: {"recall_at_k": r["recall_at_k"], "median_full_rank": r.get("median_full_rank")}
                for m, r in value.get("methods", {}).items()} | {"run": value.get("run"),
                                                                 "n_planted": value.get("n_planted")}
    if key == "mturk_export":
        return {"dir": value.get("dir"), "n_hits": value.get("n_hits")}
    return value


# ----- the audit -----------------------------------------------------------------------
def run_leakage(run_dir: Path | str, *, k: int = DEFAULT_K, d_grid: Sequence[float] | None = None,
                mturk_export: Path | str | None = None, image_base_url: str | None = None,
                mturk_results: Path | str | None = None, mturk_sample: int | None = None,
                upscale: int | None = None, n_reference: int = N_REFERENCE, dataset=None,
                progress: Progress = SILENT) -> dict:
    """Leakage audit of a fitted run; writes RUN/audits/leakage.json + leakage_candidates.csv.

    Returns the summary (also leakage.json's "summary"): overlap of datamodel and FAISS
    candidates, and where they apply: FMoW efficacy per d for both methods, planted recall@k,
    the MTurk export (``mturk_export`` folder, needs ``image_base_url``; ``mturk_sample``
    class-balanced test images instead of all) and the imported MTurk scores
    (``mturk_results`` CSV; the manifest comes from ``mturk_export`` if given, else from
    the run's last export).
    """
    from audit import pipeline
    from audit.audits.leakage import candidate_overlap, datamodel_candidates
    from audit.data.planting import planted_pairs
    from audit.reference import reference_models

    start = time.perf_counter()
    run_dir = Path(run_dir)
    store, dm, ds = pipeline.open_fitted(run_dir, dataset)
    c = store.config
    n_train, n_test = c.n_train, c.n_test
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= n_train:
        raise AuditError(f"k = {k} candidates; use 1 <= k <= {n_train} (the training set size)")
    grid = check_d_grid(d_grid)
    if n_reference < 1:
        raise AuditError(f"n_reference = {n_reference}; use at least one full-data reference model")
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
            from audit.audits.mturk import import_results

            import_results(mturk_results, *_saved_manifest(run_dir))

    ref = reference_models(store, ds, n_models=n_reference, progress=progress)
    test_ids = np.arange(n_test, dtype=np.int64)
    test_rows = n_train + test_ids
    n_annot = min(N_ANNOT, n_train // 2)
    cand = datamodel_candidates(dm.weights, test_rows, k=k, n_annot=n_annot, positive_only=True)
    rep_scores, rep_idx = representation_candidates(ref, n_train, k, progress=progress)
    top = {"datamodels": cand["top_idx"], "representation": rep_idx}
    n_pos = (cand["top_idx"] >= 0).sum(axis=1)

    chance = k / n_train
    overlap = candidate_overlap(cand["top_idx"], rep_idx)
    overlap["chance_overlap_at_k"] = chance
    same_class = float(np.mean(ds.y_train[np.maximum(cand["top_idx"], 0)][cand["top_idx"] >= 0]
                               == np.repeat(ds.y_test, n_pos))) if n_pos.sum() else None
    summary: dict = {
        "run": str(run_dir), "dataset": c.dataset, "n_train": n_train, "n_test": n_test, "k": int(k),
        "n_annot": n_annot, "n_reference_models": ref.n_models,
        "reference_test_accuracy": ref.test_accuracy(ds.y_test, n_train),
        "datamodel_candidates": {"mean_positive": float(n_pos.mean()), "n_tests_fewer_than_k": int((n_pos < k).sum()),
                                 "n_tests_none": int((n_pos == 0).sum()), "same_class_fraction": same_class},
        "overlap": overlap,
    }
    out: dict = {"summary": summary,
                 "config": {"k": int(k), "n_annot": n_annot, "d_grid": grid, "n_reference": n_reference,
                            "methods": list(METHODS), "datamodel_candidates": "positive weights only (-1: none)",
                            "representation": "FAISS exact inner product on L2-normalised penultimate features "
                                              "of full-data reference models"}}

    # geodesic check (FMoW and any dataset with coordinates)
    geo_rows: list[dict] | None = None
    if all(f"{a}_{p}" in ds.meta for a in ("lat", "lon") for p in ("train", "test")):
        from audit.audits.geo import leakage_efficacy, nearest_train_distance_miles

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
                     "representation_nearest_candidate_miles": eff["representation"]["nearest_candidate_miles"][t]}
                    for t in range(n_test)]

    # planted duplicates (a known answer)
    pairs = planted_pairs(ds)
    if pairs is not None and len(pairs):
        w_pl = np.asarray(dm.weights[n_train + pairs[:, 0]], dtype=np.float64)
        s_pl = ref.test_features(n_train)[pairs[:, 0]] @ ref.train_features(n_train).T
        planted = planted_report(pairs, top, {"datamodels": w_pl, "representation": s_pl}, k)
        out["planted"] = planted
        summary["planted"] = {m: {"recall_at_k": r["recall_at_k"], "median_full_rank": r["median_full_rank"]}
                              for m, r in planted["methods"].items()} | {"n_planted": planted["n_planted"]}

    # files: candidates (+ geo table), then leakage.json (keeping sections this call does not recompute)
    audits = run_dir / "audits"
    rows = (_candidate_rows(test_ids, cand["top_idx"], cand["top_w"], "datamodels")
            + _candidate_rows(test_ids, rep_idx, rep_scores, "representation")
            + _candidate_rows(test_ids, cand["annot_idx"], cand["annot_w"], "annotation"))
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


# ----- MTurk -----------------------------------------------------------------------------
def export_mturk(run_dir: Path, ds, cand: dict, out_dir: Path, image_base_url: str, *, sample: int | None = None,
                 upscale: int | None = None) -> dict:
    """MTurk batch of the annotation candidates (top + bottom weights); keeps a manifest copy in RUN/audits/."""
    from audit.audits.mturk import export_batch
    from audit.audits.support import sample_targets

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
    from audit.audits.mturk import import_results, read_manifest

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
def planted_run_dir(run_dir: Path | str, n: int) -> Path:
    """Where the planted twin of a run lives: ``<run>-plant<N>`` next to it."""
    run_dir = Path(run_dir)
    return run_dir.parent / f"{run_dir.name}-plant{int(n)}"


def run_planted_check(run_dir: Path | str, n: int, *, k: int = DEFAULT_K, n_models: int | None = None,
                      seed: int = 0, noise: float | None = None, shift: bool | None = None,
                      planted_run: Path | None = None,
                      progress: Progress = SILENT) -> dict:
    """Plant perturbed copies of ``n`` test images, train + fit a twin run, and measure recall@k.

    The twin (``<run>-plant<n>`` unless ``planted_run``) copies the run's dataset, trainer,
    α and seed, with ``n_models`` models (default: 1,000 or the run's count if smaller). Resumable: a rerun
    trains only what is missing and refits only when models were added. The result (also in
    the twin's own leakage.json) is saved as "planted_check" in the run's leakage.json.
    """
    from audit import pipeline
    from audit.data import load_dataset
    from audit.data.planting import DEFAULT_PLANT_NOISE, plant_options
    from audit.store import RunStore

    start = time.perf_counter()
    run_dir = Path(run_dir)
    store = RunStore.open(run_dir, writable=False)
    c = store.config
    if not isinstance(n, (int, np.integer)) or not 1 <= n <= c.n_test:
        raise AuditError(f"--plant {n}: plant between 1 and the {c.n_test} test images")
    if "plant" in c.dataset_options:
        raise AuditError(f"{run_dir} is itself a planted run; run the planted check from the original run")
    if not (run_dir / "audits" / LEAKAGE_JSON).exists():
        raise AuditError(f"{run_dir} has no leakage audit yet; run `audit leakage {run_dir}` first")
    n_models = int(n_models or min(PLANT_MODELS, c.n_models))
    if n_models < 20:
        raise AuditError(f"--plant-models {n_models}: the planted run needs at least 20 models to fit datamodels")
    twin = Path(planted_run) if planted_run is not None else planted_run_dir(run_dir, n)
    options = {**c.dataset_options, **plant_options(n, seed, DEFAULT_PLANT_NOISE if noise is None else noise, shift)}
    ds = load_dataset(c.dataset, **options)
    trainer = dict(c.trainer)
    name = trainer.pop("name")
    t = pipeline.train(c.dataset, twin, n_models=n_models, alpha=c.alpha, seed=c.seed, trainer=name,
                       trainer_options=trainer, block_size=c.block_size, dataset_options=options, dataset=ds,
                       progress=progress)
    fit_json = twin / "fit.json"
    fitted = fit_json.exists() and (twin / pipeline.DATAMODELS_FILE).exists() \
        and read_json(fit_json).get("n_models") == t["trained"]
    if not fitted:
        fit_options = {}
        if (run_dir / "fit.json").exists():
            fit_options = dict(read_json(run_dir / "fit.json").get("options") or {})
        pipeline.fit(twin, progress=progress, **fit_options)
    s = run_leakage(twin, k=k, dataset=ds, progress=progress)
    planted = read_json(twin / "audits" / LEAKAGE_JSON)["planted"]
    result = {"run": str(twin), "n_planted": int(n), "n_models": n_models, "k": int(k),
              "plant_options": options, "models_trained_now": t["trained_now"], "refitted": not fitted,
              "test_accuracy": t.get("test_accuracy"), "overlap": s["overlap"],
              "methods": {m: {key: r[key] for key in ("recall_at_k", "median_full_rank", "n_score_not_positive",
                                                      "rank", "full_rank")}
                          for m, r in planted["methods"].items()},
              "pairs": planted["pairs"], "seconds": round(time.perf_counter() - start, 2)}
    _merge_section(run_dir, "planted_check", result)
    return result
