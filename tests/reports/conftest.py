"""A copy of the shared small digits run with every input the report reads, in the real formats.

Evaluation, the leakage audit (with coordinates, so the geodesic part runs), its MTurk export
and import, and ``audit check`` are the real functions. The support searches retrain many
models, so brittleness.json / mislabel.json are assembled from made-up margin curves with
the real summary functions of audit.audits.support (the same keys run_brittleness writes).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

IGNORE = shutil.ignore_patterns("claims", "*.lock", "retrain", "audits", "report.html", "eval_r*", "evaluation*")


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=IGNORE)
    return dst


def with_coordinates(ds, seed: int = 0):
    """The dataset with made-up lat/lon: points scattered over a few miles, so some pairs lie within d."""
    rng = np.random.default_rng(seed)
    meta = dict(ds.meta)
    for part, n in (("train", ds.n_train), ("test", ds.n_test)):
        meta[f"lat_{part}"] = 40.0 + rng.uniform(0, 0.05, n)
        meta[f"lon_{part}"] = -75.0 + rng.uniform(0, 0.05, n)
    return dataclasses.replace(ds, meta=meta)


def support_json(run: Path, ds, mode: str, targets: list[int], methods: tuple[str, ...], grid: list[int],
                 wrong_name: str | None = None, edited: bool = False) -> dict:
    """RUN/audits/{brittleness,mislabel}.json as run_brittleness writes it, from made-up margin curves; with
    ``edited``, each certified support of the datamodels or representation also names the examples the search
    would have edited (the first of its ranking, as run_brittleness ranks), else the file is one written before
    supports named them."""
    from audit.audits import support

    rng = np.random.default_rng(len(targets))
    ks = [0] + grid
    records = []
    for i, t in enumerate(targets):
        full = float(rng.uniform(0.5, 3.0)) if i else -0.4  # the first target is already misclassified
        rec = {"target": int(t), "label": int(ds.y_test[t]), "label_name": ds.classes[int(ds.y_test[t])],
               "full_margin": full, "predicted_full_margin": full * 0.8, "heuristic_k": int(rng.integers(1, 20)),
               "methods": {}}
        if mode == "relabel":
            rec["wrong_class"] = (int(ds.y_test[t]) + 1) % len(ds.classes)
            rec["wrong_class_name"] = wrong_name or ds.classes[rec["wrong_class"]]
        for m, method in enumerate(methods):
            slope = float(rng.uniform(0.05, 0.6)) / (1 + m)
            curve = [full - slope * k for k in ks]
            kstar, fitted = support.estimate_support(ks, curve, full_margin=full)
            found = kstar is not None
            vk = support.verification_k(kstar) if found else None
            vm = full - slope * vk if found else None
            cert = bool(found and support.is_certified(vm))
            rec["methods"][method] = {"k_star": kstar, "verify_k": vk, "verify_margin": vm, "certified": cert,
                                      "certified_support": vk if cert else None,
                                      "curve": {str(k): c for k, c in zip(ks, curve)},
                                      "fitted": {str(k): float(f) for k, f in zip(ks, fitted)}}
            if edited and cert and method in ("datamodels", "representation"):
                rec["methods"][method]["edited"] = _edited(run, ds, mode, method, int(t), vk, rec.get("wrong_class"))
        records.append(rec)
    cdf_ks = sorted(set([0] + grid + [support.verification_k(grid[-1])]))
    heur = np.array([r["heuristic_k"] for r in records])
    summary = {"mode": mode, "n_targets": len(targets), "T": 2, "k_grid": grid, "max_k": grid[-1],
               "methods": list(methods), "seed": 0,
               "full_data_accuracy": float(np.mean([r["full_margin"] > 0 for r in records])),
               "per_method": {m: support.summarize_method(records, m, grid[-1], cdf_ks) for m in methods},
               "heuristic": support._heuristic_summary(heur, cdf_ks),
               "models_trained_now": 0, "models_in_plan": 123, "seconds": 4.5}
    name = "brittleness" if mode == "remove" else "mislabel"
    from audit.jsonio import write_csv, write_json

    write_json(run / "audits" / f"{name}.json", {"summary": summary, "targets": records})
    columns, rows = support._csv_rows(records, methods, mode == "relabel")
    write_csv(run / "audits" / f"{name}.csv", rows, columns)
    return summary


def _edited(run: Path, ds, mode: str, method: str, target: int, size: int, wrong: int | None) -> list[int]:
    """The first ``size`` examples of ``method``'s ranking for test ``target``, as run_brittleness ranks them."""
    from audit import pipeline
    from audit.audits import support
    from audit.reference import load_reference

    n_train = ds.n_train
    if method == "datamodels":
        top = support.datamodel_top(pipeline.load_datamodels(run).weights, np.array([n_train + target]), n_train, size,
                                    support.datamodel_ranking_for(mode), ds.y_train,
                                    None if wrong is None else np.array([wrong]))[0]
    else:  # the nearest reference features by cosine
        ref = load_reference(run)
        order = np.argsort(-(ref.train_features(n_train) @ ref.test_features(n_train)[target]), kind="stable")
        top = order if wrong is None else order[ds.y_train[order] != wrong]
    return [int(j) for j in top[:size] if j >= 0]


def mturk_results(export_dir: Path, out: Path, seed: int = 0) -> Path:
    """An MTurk batch results CSV (flat checkbox answers) for an export: three workers per HIT."""
    rows = list(csv.DictReader((export_dir / "batch_input.csv").open(newline="", encoding="utf-8")))
    k = sum(1 for c in rows[0] if c.startswith("cand") and c.endswith("_id"))
    rng = np.random.default_rng(seed)
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["HITId", "AssignmentId", "WorkerId", "AssignmentStatus"] + [f"Input.{c}" for c in rows[0]]
                   + [f"Answer.c{i}.on" for i in range(k)] + ["Answer.test_id"])
        n = 0
        for r in rows:
            for worker in ("W1", "W2", "W3"):
                ticks = rng.random(k) < 0.2
                w.writerow([f"HIT{r['test_id']}", f"A{n}", worker, "Approved"] + list(r.values())
                           + ["true" if x else "false" for x in ticks] + [r["test_id"]])
                n += 1
    return out


@pytest.fixture(scope="module")
def audited_run(small_digits_run, digits, tmp_path_factory):
    """A run with every section's data: evaluation, support searches, leakage (+ geo, MTurk, planted), check."""
    from audit import pipeline
    from audit.audits import leakage_audit
    from audit.audits.gradients import GRADIENTS, GradientsConfig
    from audit.checks import run_checks
    from audit.jsonio import read_json, write_json

    base = tmp_path_factory.mktemp("report")
    run = copy_run(small_digits_run, base / "run")
    GRADIENTS.run(run, GradientsConfig(n_reference=1), dataset=digits)  # score matrices the evaluation scores too
    pipeline.evaluate(run, n_subsets=6)
    targets = [int(t) for t in np.flatnonzero(np.isin(digits.y_test, [0, 1, 2]))[:5]]
    support_json(run, digits, "remove", targets, ("datamodels", "representation", "random"), [1, 2, 4, 8, 16])
    support_json(run, digits, "relabel", targets[:3], ("datamodels",), [1, 2, 4, 8])
    geo = with_coordinates(digits)
    leakage_audit.run_leakage(run, k=5, n_reference=1, dataset=geo, mturk_export=base / "mturk",
                              image_base_url="https://example.org/leak", mturk_sample=8)
    dm = pipeline.load_datamodels(run)
    leakage_audit.import_mturk(run, mturk_results(base / "mturk", base / "results.csv"), base / "mturk",
                               weights=dm.weights, n_train=digits.n_train)
    # planted copies, as a planted dataset would give them: each pair's copy is a top candidate
    data = read_json(run / "audits" / "leakage.json")
    rows = list(csv.DictReader((run / "audits" / "leakage_candidates.csv").open(newline="", encoding="utf-8")))
    top = {}
    for r in rows:
        if r["method"] == "datamodels" and r["rank"] == "1" and r["train_index"] not in ("", "-1"):
            top.setdefault(int(r["test_index"]), int(r["train_index"]))
    shown = read_json(run / "audits" / "leakage_mturk_manifest.json")["test_ids"]  # the page shows these first
    pairs = np.array([(t, top[t]) for t in shown if t in top][:3], dtype=np.int64)
    assert len(pairs), "no exported test image has a positive datamodel weight"
    w = np.asarray(dm.weights[digits.n_train + pairs[:, 0]], dtype=np.float64)
    cand = np.full((digits.n_test, 5), -1, dtype=np.int64)
    cand[pairs[:, 0], 0] = pairs[:, 1]
    data["planted"] = leakage_audit.planted_report(pairs, {"datamodels": cand}, {"datamodels": w}, 5)
    write_json(run / "audits" / "leakage.json", data)
    from audit.audits.heuristic import HEURISTIC
    from audit.audits.influence import INFLUENCE
    from audit.audits.label_errors import LABEL_ERRORS, LabelErrorsConfig

    INFLUENCE.run(run, dataset=digits)
    HEURISTIC.run(run, dataset=digits)
    LABEL_ERRORS.run(run, LabelErrorsConfig(n_replay=2), dataset=digits)
    from audit.audits.counterfactual import CounterfactualConfig, run_counterfactual

    run_counterfactual(run, CounterfactualConfig(n=4, T=1, k_grid=(2, 8), heuristics=("top", "bottom", "random")),
                       dataset=digits)
    from audit.audits.embed import EMBED

    EMBED.run(run, dataset=digits)  # after leakage: its reference models give the representation curve
    run_checks(run, {"min_lds": -1.0, "max_brittle_fraction": 0.0, "max_mislabel_fraction": 1.0,
                     "support_k": 8, "mislabel_k": 8})  # k within the audits' grid: a k beyond it cannot be decided
    return run
