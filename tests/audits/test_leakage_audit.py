"""The leakage audit of a run (audit/audits/leakage_audit.py): digits and the FMoW fixture end to end."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import geopy.distance
import numpy as np
import pytest

from audit import pipeline
from audit.audits import leakage_audit as la
from audit.errors import AuditError
from audit.jsonio import read_json
from audit.store import RunStore
from tests.conftest import FAST_MLP, FIXTURES, assert_one_line_error, run_cli

FMOW = f"fmow:{FIXTURES / 'fmow'}"
URL = "https://example.org/leak"


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def candidates_of(run_dir: Path, method: str) -> dict[int, list[int]]:
    """test index -> candidate train indices in rank order, from RUN/audits/leakage_candidates.csv."""
    out: dict[int, list[tuple[int, int]]] = {}
    for r in read_rows(run_dir / "audits" / la.CANDIDATES_CSV):
        if r["method"] == method:
            out.setdefault(int(r["test_index"]), []).append((int(r["rank"]), int(r["train_index"])))
    return {t: [j for _, j in sorted(v)] for t, v in out.items()}


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("claims", "*.lock", "retrain"))
    return dst


@pytest.fixture(scope="module")
def leak_run(small_digits_run, tmp_path_factory):
    """A copy of the small digits run with one leakage audit done (k=10, 2 reference models); read-only."""
    run_dir = copy_run(small_digits_run, tmp_path_factory.mktemp("leak") / "run")
    summary = la.run_leakage(run_dir, k=10, n_reference=2)
    return run_dir, summary


@pytest.fixture
def leak_copy(leak_run, tmp_path):
    return copy_run(leak_run[0], tmp_path / "run")


# ----- digits: candidates, FAISS baseline, overlap -----------------------------------------
def _top_positive(scores: np.ndarray, k: int = 10) -> list[int]:
    return [int(j) for j in np.argsort(-scores, kind="stable")[:k] if scores[j] > 0]


def _clear_order(scores: np.ndarray, k: int = 10) -> bool:
    """No two of the top ``k + 1`` scores within float32 rounding (equal rows may come out in either order)."""
    top = np.sort(scores)[::-1][:k + 1]
    return bool(np.all(np.abs(np.diff(top)) > 1e-5))


def test_datamodel_candidates_take_the_nearest_embeddings_and_largest_weights_in_turn(leak_run):
    run_dir, s = leak_run
    dm = pipeline.load_datamodels(run_dir)
    n_train = s["n_train"]
    assert s["datamodel_ranking"] == "both"
    w = np.asarray(dm.weights, dtype=np.float64)
    unit = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-300)
    cands = candidates_of(run_dir, "datamodels")
    n_listed = []
    for t in range(s["n_test"]):
        cos = unit[:n_train] @ unit[n_train + t]
        near = _top_positive(cos)
        heavy = _top_positive(w[n_train + t])
        want: list[int] = []
        for pair in zip(near + [-1] * (10 - len(near)), heavy + [-1] * (10 - len(heavy))):
            for j in pair:
                if j >= 0 and j not in want:
                    want.append(j)
        if _clear_order(cos):
            assert cands.get(t, []) == want[:10], t
        n_listed.append(len(want[:10]))
    assert s["datamodel_candidates"]["mean_positive"] == pytest.approx(np.mean(n_listed))
    rows = [r for r in read_rows(run_dir / "audits" / la.CANDIDATES_CSV) if r["method"] == "datamodels"][:20]
    for r in rows:  # the weight column is the candidate's datamodel weight, whichever list it came from
        assert float(r["weight"]) == pytest.approx(w[n_train + int(r["test_index"]), int(r["train_index"])], abs=1e-6)
    annot = candidates_of(run_dir, "annotation")  # annotators still see the top and bottom weights (paper App. H)
    t = 0
    order = np.argsort(-dm.weights[n_train + t], kind="stable")
    assert annot[t][:5] == order[:5].tolist()
    assert sorted(annot[t][5:]) == sorted(np.argsort(dm.weights[n_train + t], kind="stable")[:5].tolist())


def test_weights_ranking_lists_the_top_positive_weights(leak_copy):
    s = la.run_leakage(leak_copy, k=10, n_reference=2, datamodel_ranking="weights")
    dm = pipeline.load_datamodels(leak_copy)
    assert s["datamodel_ranking"] == "weights"
    cands = candidates_of(leak_copy, "datamodels")
    n_pos = []
    for t in range(s["n_test"]):
        want = _top_positive(np.asarray(dm.weights[s["n_train"] + t]))
        assert cands.get(t, []) == want
        n_pos.append(len(want))
    assert s["datamodel_candidates"]["mean_positive"] == pytest.approx(np.mean(n_pos))
    emb = la.run_leakage(leak_copy, k=10, n_reference=2, datamodel_ranking="embedding")
    w = np.asarray(dm.weights, dtype=np.float64)
    unit = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-300)
    n_train = s["n_train"]
    assert emb["datamodel_ranking"] == "embedding"
    cands = candidates_of(leak_copy, "datamodels")
    cos = unit[n_train:] @ unit[:n_train].T
    clear = [t for t in range(s["n_test"]) if _clear_order(cos[t])]
    assert len(clear) > s["n_test"] // 4
    assert all(cands.get(t, []) == _top_positive(cos[t]) for t in clear)
    with pytest.raises(AuditError, match="--datamodel-ranking"):
        la.run_leakage(leak_copy, k=10, n_reference=2, datamodel_ranking="largest")


def test_faiss_baseline_equals_brute_force_cosine(leak_run):
    run_dir, s = leak_run
    with np.load(run_dir / "reference.npz") as z:
        feats = z["features"].astype(np.float64)
        assert int(z["n_models"]) == s["n_reference_models"] == 2
    n_train = s["n_train"]
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sims = f[n_train:] @ f[:n_train].T
    rep = candidates_of(run_dir, "representation")
    for t in range(0, s["n_test"], 7):
        got = rep[t]
        assert len(got) == 10
        assert np.allclose(np.sort(sims[t, got])[::-1], np.sort(sims[t])[::-1][:10], atol=1e-5)


def test_overlap_matches_the_saved_candidates(leak_run):
    run_dir, s = leak_run
    dmc, rep = candidates_of(run_dir, "datamodels"), candidates_of(run_dir, "representation")
    shared = [len(set(dmc.get(t, [])) & set(rep[t])) for t in range(s["n_test"])]
    o = s["overlap"]
    assert o["mean_overlap_at_k"] == pytest.approx(np.mean(shared) / 10)
    assert o["frac_any_overlap"] == pytest.approx(np.mean([c > 0 for c in shared]))
    assert o["chance_overlap_at_k"] == pytest.approx(10 / s["n_train"])
    saved = read_json(run_dir / "audits" / la.LEAKAGE_JSON)
    assert saved["summary"]["overlap"] == o and "geo" not in saved and "planted" not in saved


@pytest.mark.parametrize("kwargs,needle", [
    ({"k": 0}, "k = 0 candidates"),
    ({"k": 10_000}, "1 <= k <= 1297"),
    ({"d_grid": [1.0, 0.5]}, "increasing positive miles"),
    ({"n_reference": 0}, "at least one full-data reference model"),
    ({"mturk_export": "x"}, "--image-base-url"),
    ({"mturk_results": "nowhere.csv"}, "nowhere.csv not found"),
])
def test_bad_arguments_fail_before_computing(small_digits_run, kwargs, needle):
    with pytest.raises(AuditError, match=needle):
        la.run_leakage(small_digits_run, **kwargs)
    assert not (small_digits_run / "audits" / la.LEAKAGE_JSON).exists()


def test_results_without_export_are_refused(leak_copy, tmp_path):
    (tmp_path / "r.csv").write_text("WorkerId\n")
    with pytest.raises(AuditError, match="no MTurk export"):
        la.run_leakage(leak_copy, mturk_results=tmp_path / "r.csv")


def test_check_d_grid_and_recall_ks():
    assert la.check_d_grid(None)[0] == 0.25 and la.check_d_grid(None)[-1] == 3.0
    assert la.check_d_grid([0.5, 2]) == [0.5, 2.0]
    for bad in ([], [0.0, 1.0], [1.0, 1.0], ["a"], [float("nan")]):
        with pytest.raises(AuditError):
            la.check_d_grid(bad)
    assert la.recall_ks(10) == [1, 5, 10] and la.recall_ks(3) == [1, 3] and la.recall_ks(20) == [1, 5, 10, 20]


def test_full_rank_counts_ties_in_the_entrys_favour():
    s = np.array([0.5, 0.9, 0.5, 0.1, 0.0, 0.0])
    assert [la.full_rank(s, j) for j in range(6)] == [2, 1, 2, 4, 5, 5]


# ----- MTurk round trip through the run ---------------------------------------------------
def simulated_results(path: Path, batch_rows: list[dict], votes: list[tuple], fmt: str) -> Path:
    """An MTurk batch results CSV. votes: (test_id, worker, status, ticked positions).

    fmt "json": crowd-checkbox answers in Answer.taskAnswers (``[{"c0": {"on": true}, ...}]``);
    fmt "flat": one column per checkbox, ``Answer.leak.c0`` = true/false (flatten-objects).
    """
    k = sum(1 for c in batch_rows[0] if c.startswith("cand") and c.endswith("_id"))
    by_test = {int(r["test_id"]): r for r in batch_rows}
    inputs = list(batch_rows[0])
    answers = ["Answer.taskAnswers"] if fmt == "json" else [f"Answer.leak.c{i}" for i in range(k)]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["HITId", "AssignmentId", "WorkerId", "AssignmentStatus", "WorkTimeInSeconds"]
                   + [f"Input.{c}" for c in inputs] + answers + ["Approve", "Reject"])
        for n, (test, worker, status, ticked) in enumerate(votes):
            row = [f"HIT{test}", f"A{n}", worker, status, "42"] + [by_test[test][c] for c in inputs]
            if fmt == "json":
                row.append(json.dumps([{f"c{i}": {"on": i in ticked} for i in range(k)} | {"test_id": str(test)}]))
            else:
                row += ["true" if i in ticked else "false" for i in range(k)]
            w.writerow(row + ["", ""])
    return path


@pytest.mark.parametrize("fmt", ["json", "flat"])
def test_mturk_export_then_import_round_trip(leak_copy, tmp_path, fmt):
    out = tmp_path / "batch"
    s = la.run_leakage(leak_copy, mturk_export=out, image_base_url=URL + "/", mturk_sample=4)
    assert s["mturk_export"] == {"dir": str(out), "n_hits": 4}
    rows = read_rows(out / "batch_input.csv")
    assert len(rows) == 4 and {"hit_template.html", "README.txt", "manifest.json"} <= {p.name for p in out.iterdir()}
    annot = candidates_of(leak_copy, "annotation")
    for r in rows:
        t = int(r["test_id"])
        assert [int(r[f"cand{i}_id"]) for i in range(10)] == annot[t]
        assert r["test_image_url"] == f"{URL}/test_{t}.png" and (out / "images" / f"test_{t}.png").exists()
    template = (out / "hit_template.html").read_text()
    placeholders = {p.split("}")[0] for p in template.split("${")[1:]}
    assert placeholders == set(rows[0])          # every placeholder is a batch column and vice versa
    from PIL import Image

    assert Image.open(out / "images" / f"test_{rows[0]['test_id']}.png").size == (128, 128)  # 8x8 digits, 16x

    t0, t1, t2 = (int(r["test_id"]) for r in rows[:3])
    votes = [(t0, "W1", "Rejected", set(range(10))),     # ignored
             (t0, "W2", "Approved", {0, 1}),
             (t0, "W3", "Submitted", {0}),
             (t1, "W2", "Approved", {7}),
             (t2, "W1", "Approved", set())]
    results = simulated_results(tmp_path / "results.csv", rows, votes, fmt)
    s = la.run_leakage(leak_copy, mturk_results=results)          # manifest from the run's last export
    m = s["mturk"]
    assert m["n_rejected"] == 1 and m["n_assignments_used"] == 4 and m["n_workers"] == 3
    assert m["n_tests_answered"] == 3 and m["unanswered_test_ids"] == [int(rows[3]["test_id"])]
    tests = {int(r["test_id"]): float(r["leakage_score"]) for r in read_rows(leak_copy / "audits" / la.MTURK_TESTS_CSV)}
    assert tests == {t0: 1.0, t1: 1.0, t2: 0.0}
    pairs = read_rows(leak_copy / "audits" / la.MTURK_PAIRS_CSV)
    assert len(pairs) == 30
    score = {(int(p["test_id"]), int(p["position"])): float(p["score"]) for p in pairs}
    assert score[(t0, 0)] == 1.0 and score[(t0, 1)] == 0.5 and score[(t0, 9)] == 0.0 and score[(t1, 7)] == 1.0
    dm = pipeline.load_datamodels(leak_copy)
    for p in pairs:
        assert p["kind"] == ("top" if int(p["position"]) < 5 else "bottom")
        assert float(p["weight"]) == pytest.approx(dm.weights[1297 + int(p["test_id"]), int(p["train_id"])])
    assert m["mean_score_top"] == pytest.approx((1.0 + 0.5) / 15)         # t1 ticked position 7: a bottom one
    assert m["mean_score_bottom"] == pytest.approx(1.0 / 15)
    # a plain rerun recomputes the candidates and keeps the imported annotations and the export
    again = la.run_leakage(leak_copy)
    assert again["mturk"]["n_assignments_used"] == 4 and again["mturk_export"]["n_hits"] == 4
    assert read_json(leak_copy / "audits" / la.LEAKAGE_JSON)["mturk"]["summary"]["n_rejected"] == 1


def test_mturk_results_that_do_not_fit_the_export_name_the_row(leak_copy, tmp_path):
    out = tmp_path / "batch"
    la.run_leakage(leak_copy, mturk_export=out, image_base_url=URL, mturk_sample=3)
    rows = read_rows(out / "batch_input.csv")
    t0 = int(rows[0]["test_id"])
    path = simulated_results(tmp_path / "r.csv", rows, [(t0, "W1", "Approved", {1}), (t0, "W1", "Approved", {2})],
                             "json")
    with pytest.raises(AuditError, match=r"r.csv row 3: worker W1 answered test image .* twice \(also row 2\)"):
        la.run_leakage(leak_copy, mturk_results=path, mturk_export=out)
    assert (leak_copy / "audits" / la.LEAKAGE_JSON).exists()          # the candidates were saved before the import
    assert not (leak_copy / "audits" / la.MTURK_JSON).exists()


# ----- FMoW fixture: geodesic check end to end ----------------------------------------------
@pytest.fixture(scope="module")
def fmow_run(tmp_path_factory):
    """The FMoW fixture (24 train / 13 test, with coordinates) trained with the CPU MLP and fitted."""
    run_dir = tmp_path_factory.mktemp("fmow") / "run"
    # batch 4: 12 examples a subset; with batch 64 the MLP's one-cycle schedule would have 1 step an epoch
    pipeline.train(FMOW, run_dir, n_models=60, block_size=60, trainer="mlp",
                   trainer_options={**FAST_MLP, "batch_size": 4})
    pipeline.fit(run_dir, n_lambdas=8)
    return run_dir


def miles(a, b) -> float:
    return geopy.distance.geodesic(a, b).miles


def test_fmow_geodesic_efficacy_end_to_end(fmow_run):
    grid = [0.5, 1.6, 2.0, 3.0, 50.0]
    s = la.run_leakage(fmow_run, k=5, d_grid=grid, n_reference=1)
    ds = pipeline.dataset_of(RunStore.open(fmow_run, writable=False))
    te = list(zip(ds.meta["lat_test"], ds.meta["lon_test"]))
    tr = list(zip(ds.meta["lat_train"], ds.meta["lon_train"]))
    dist = np.array([[miles(p, q) for q in tr] for p in te])            # brute force: 13 x 24 geopy calls
    nearest = dist.min(1)
    g = s["geo"]
    assert g["d_miles"] == grid
    assert g["n_ground_truth"] == [int((nearest <= d).sum()) for d in grid]
    assert g["n_ground_truth"][0] == 0 and g["n_ground_truth"][3] == 4          # fixture: four leaks 1.5-2.8 mi
    for method in la.METHODS:
        cands = candidates_of(fmow_run, method)
        cand_min = np.array([min((dist[t, j] for j in cands.get(t, [])), default=np.inf) for t in range(len(te))])
        for i, d in enumerate(grid):
            gt = nearest <= d
            want = (gt & (cand_min <= d)).sum() / gt.sum() if gt.any() else None
            assert g["efficacy"][method][i] == (pytest.approx(want) if want is not None else None)
    assert g["fraction_within"]["2.6"] == pytest.approx(float((nearest <= 2.6).mean()))
    saved = read_json(fmow_run / "audits" / la.LEAKAGE_JSON)
    assert saved["geo"]["cdf"]["paper_reference_fraction_within"] == la.PAPER_FMOW_CDF
    geo_rows = read_rows(fmow_run / "audits" / la.GEO_CSV)
    assert [float(r["nearest_train_miles"]) for r in geo_rows] == pytest.approx(nearest.tolist())
    assert [int(r["nearest_train_index"]) for r in geo_rows] == dist.argmin(1).tolist()


# ----- planted check ----------------------------------------------------------------------
def test_planted_check_trains_a_twin_and_is_resumable(leak_copy):
    with pytest.raises(AuditError, match="plant between 1 and the 500"):
        la.run_planted_check(leak_copy, 501)
    twin = la.planted_run_dir(leak_copy, 25)
    r = la.run_planted_check(leak_copy, 25, n_models=40)
    assert r["run"] == str(twin) and r["n_planted"] == 25 and r["models_trained_now"] == 40 and r["refitted"]
    cfg = read_json(twin / "run.json")
    assert cfg["dataset_options"]["plant"] == 25 and cfg["n_train"] == 1297 + 25
    assert cfg["trainer"] == read_json(leak_copy / "run.json")["trainer"]
    pairs = np.array(r["pairs"])
    for method, csv_method in (("datamodels", "datamodels"), ("representation", "representation")):
        cands = candidates_of(twin, csv_method)
        hit = [int(j) in cands.get(int(t), [])[:5] for t, j in pairs]
        assert r["methods"][method]["recall_at_k"]["5"] == pytest.approx(np.mean(hit))
    # a near copy sits next to its test image in the full-data models' feature space
    assert r["methods"]["representation"]["recall_at_k"]["10"] >= 0.8
    main = read_json(leak_copy / "audits" / la.LEAKAGE_JSON)
    assert main["planted_check"]["methods"] == r["methods"]
    assert main["summary"]["planted_check"]["n_planted"] == 25
    again = la.run_planted_check(leak_copy, 25, n_models=40)
    assert again["models_trained_now"] == 0 and not again["refitted"] and again["methods"] == r["methods"]
    with pytest.raises(AuditError, match="itself a planted run"):
        la.run_planted_check(twin, 5)
    # the check says how its twin ranked; a later audit with another ranking keeps it and shows the twin's own
    assert r["datamodel_ranking"] == main["summary"]["planted_check"]["datamodel_ranking"] == "both"
    la.run_leakage(leak_copy, datamodel_ranking="weights")
    kept = la.LEAKAGE.load(leak_copy)
    assert kept.datamodel_ranking == "weights" and kept.planted_check["datamodel_ranking"] == "both"
    titles = [getattr(b, "title", "") for b in la.LEAKAGE.summary(kept)]
    assert any("planted check" in t and la.LEAK_RANKING_WORDS["both"] in t for t in titles), titles
    from audit.reports.render import render_report
    page = " ".join(render_report(leak_copy).read_text(encoding="utf-8").split())
    assert f"planted twin run (datamodels: {la.LEAK_RANKING_WORDS['both']})" in page
    # a check made before the ranking was a setting ranked by weights
    assert la.planted_ranking({}) == "weights" and la._brief("planted_check", {"methods": {}})["datamodel_ranking"] \
        == "weights"


def test_planted_check_needs_the_leakage_audit_first(small_digits_run):
    with pytest.raises(AuditError, match="no leakage audit yet"):
        la.run_planted_check(small_digits_run, 5)


# ----- the command ------------------------------------------------------------------------
def test_cli_fmow_prints_the_efficacy_table(fmow_run):
    proc = run_cli("leakage", str(fmow_run), "--k", "5", "--d-grid", "1,2,3")
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "FMoW geodesic check" in out and "within 0.25 / 2.6 miles" in out and "overlap datamodels vs FAISS" in out
    assert read_json(fmow_run / "audits" / la.LEAKAGE_JSON)["geo"]["d_miles"] == [1.0, 2.0, 3.0]


def test_cli_mturk_export_and_malformed_results_are_one_line_errors(leak_copy, tmp_path):
    out = tmp_path / "batch"
    assert_one_line_error(run_cli("leakage", str(leak_copy), "--mturk-export", str(out)))      # no --image-base-url
    proc = run_cli("leakage", str(leak_copy), "--mturk-export", str(out), "--image-base-url", URL,
                   "--mturk-sample", "3")
    assert proc.returncode == 0, proc.stderr
    assert "MTurk batch: 3 HITs" in " ".join(proc.stdout.split())
    rows = read_rows(out / "batch_input.csv")
    good = simulated_results(tmp_path / "good.csv", rows, [(int(rows[0]["test_id"]), "W1", "Approved", {0})], "flat")
    lines = good.read_text().splitlines()
    header = lines[0].split(",")
    drop = header.index("Input.cand3_id")
    (tmp_path / "missing.csv").write_text("\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != drop)
                                                    for line in lines) + "\n")
    proc = run_cli("leakage", str(leak_copy), "--mturk-results", str(tmp_path / "missing.csv"))
    assert_one_line_error(proc)
    assert "missing.csv row 1: missing column(s) Input.cand3_id" in proc.stderr
    unknown = lines[1].split(",")
    unknown[header.index("Input.test_id")] = "99999"
    (tmp_path / "unknown.csv").write_text("\n".join([lines[0], lines[1], ",".join(unknown)]) + "\n")
    proc = run_cli("leakage", str(leak_copy), "--mturk-results", str(tmp_path / "unknown.csv"))
    assert_one_line_error(proc)
    assert "unknown.csv row 3: Input.test_id '99999'" in proc.stderr
    assert not (leak_copy / "audits" / la.MTURK_JSON).exists()


def test_planted_check_by_family_reports_each_family_and_the_union(leak_copy):
    """Copies perturbed by families: recall per family and method, the union at least every single method."""
    fams = ("noise", "brightness", "jpeg")
    r = la.run_planted_check(leak_copy, 24, n_models=40, families=fams)
    assert r["run"] == str(la.planted_run_dir(leak_copy, 24, fams)) and set(r["by_family"]) == set(fams)
    assert [f["n_planted"] for f in r["by_family"].values()] == [8, 8, 8]
    codes = np.array(r["families"])
    for family, f in r["by_family"].items():
        rows = np.flatnonzero(codes == la.PLANT_FAMILIES.index(family))
        ranks = np.array(r["methods"]["pixels"]["full_rank"])[rows]
        assert f["methods"]["pixels"]["median_full_rank"] == pytest.approx(float(np.median(ranks)))
    for k in ("1", "5", "10"):
        union = r["methods"]["union"]["recall_at_k"][k]
        assert union >= max(r["methods"][m]["recall_at_k"][k] for m in la.METHODS)
    # pixel correlation is blind to a brightness/contrast change: every such copy is its test image's best match
    assert r["by_family"]["brightness"]["methods"]["pixels"]["recall_at_k"]["1"] == 1.0
    twin_rows = candidates_of(Path(r["run"]), "fused")
    assert twin_rows and all(len(v) <= 10 for v in twin_rows.values())


def test_pixel_baseline_finds_shifted_and_cropped_copies_that_plain_correlation_misses():
    """Digits copies moved by a pixel or cropped by one pixel and resized back: each is its test image's
    best pixel match over the aligned variants, while the plain pixel correlation ranks them far down."""
    from audit.data import load_dataset
    from audit.data.planting import apply_planting, planted_families, planted_pairs

    ds = apply_planting(load_dataset("digits"), plant=40, plant_seed=5, plant_families="shift,crop")
    pairs, fams = planted_pairs(ds), planted_families(ds)
    _, idx = la.pixel_candidates(ds, 10)
    assert np.array_equal(idx[pairs[:, 0], 0], pairs[:, 1])
    full = la.pixel_scores(ds, pairs[:, 0])
    assert np.array_equal(full.argmax(axis=1), pairs[:, 1])
    plain = la.normalise_rows(la.pixel_rows(ds.x_test[pairs[:, 0]])) @ la.normalise_rows(la.pixel_rows(ds.x_train)).T
    plain_rank = (plain > plain[np.arange(len(pairs)), pairs[:, 1]][:, None]).sum(axis=1) + 1
    for family in ("shift", "crop"):
        assert np.median(plain_rank[fams == la.PLANT_FAMILIES.index(family)]) > 10


def test_found_only_by_and_sources_of_union_count_what_each_ranking_adds():
    ranks = {"datamodels": [1, 30, None, 2], "representation": [40, 3, None, 1], "pixels": [50, 1, 2, 1]}
    methods = {m: la.PlantedMethod(recall_at_k={}, full_rank=r) for m, r in ranks.items()}
    # copy 0: datamodels only; 1: representation and pixels; 2: pixels only; 3: all three
    assert la.found_only_by(methods, 10) == {"datamodels": 1, "representation": 0, "pixels": 1}
    assert la.found_only_by({"datamodels": methods["datamodels"]}, 10) is None
    union = {0: [la.Candidate(0, 5, 1, None, "pixels+datamodels"), la.Candidate(0, 7, 2, None, "pixels")],
             1: [la.Candidate(1, 5, 1, None, "datamodels+pixels"), la.Candidate(1, 9, 2, None, "representation")]}
    assert la.sources_of_union(union) == {"datamodels+pixels": 2, "pixels": 1, "representation": 1}


def test_own_features_replace_the_reference_models(small_digits_run, tmp_path, digits):
    """--features: the FAISS candidates are the cosine neighbours of the given rows; no reference model is trained;
    a wrong row count is one error line."""
    run_dir = copy_run(small_digits_run, tmp_path / "run")
    feats = np.concatenate([digits.x_train, digits.x_test]).reshape(digits.n_train + digits.n_test, -1)
    feats = feats.astype(np.float32) + 1.0  # raw pixels: a representation the reference models do not give
    np.save(tmp_path / "f.npy", feats)
    s = la.run_leakage(run_dir, k=10, features=tmp_path / "f.npy")
    assert not (run_dir / "reference.npz").exists() and s["n_reference_models"] == 0
    assert s["representation_features"] == str((tmp_path / "f.npy").absolute())
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sims = f[digits.n_train:] @ f[:digits.n_train].T
    rep = candidates_of(run_dir, "representation")
    for t in range(0, digits.n_test, 25):
        assert np.allclose(np.sort(sims[t, rep[t]])[::-1], np.sort(sims[t])[::-1][:10], atol=1e-5)
    np.save(tmp_path / "short.npy", feats[:-1])
    with pytest.raises(AuditError, match="n_train \\+ n_test"):
        la.run_leakage(run_dir, k=10, features=tmp_path / "short.npy")
    assert_one_line_error(run_cli("leakage", run_dir, "--features", tmp_path / "short.npy"))


def test_score_matrices_propose_candidates_too(leak_copy, digits, tmp_path):
    """--score-methods NAME: the score matrix's top positive scores are listed as candidates (method NAME) with their
    overlap with the datamodels'; a name the run lacks is one error naming what it has."""
    from audit import scores

    w = pipeline.load_datamodels(leak_copy).weights[digits.n_train:]
    np.save(tmp_path / "copy.npy", w.T)
    scores.import_scores(tmp_path / "copy.npy", leak_copy, n_train=digits.n_train, n_test=digits.n_test)
    with pytest.raises(AuditError, match="unknown method trak: available this run's score matrices copy"):
        la.run_leakage(leak_copy, k=10, n_reference=2, score_methods=("trak",))
    s = la.run_leakage(leak_copy, k=10, n_reference=2, score_methods=("copy",), datamodel_ranking="weights")
    assert candidates_of(leak_copy, "copy") == candidates_of(leak_copy, "datamodels")  # the same weights
    assert s["score_methods"]["copy"]["mean_overlap_at_k"] == pytest.approx(s["datamodel_candidates"]["mean_positive"]
                                                                           / 10)
    lines = " ".join(b.text for b in la.LEAKAGE.summary(la.LeakageResult.from_json(s)) if hasattr(b, "text"))
    assert "overlap datamodels vs copy" in lines


def test_score_methods_on_the_command_line(leak_copy, digits, tmp_path):
    from audit import scores

    np.save(tmp_path / "mine.npy", np.random.default_rng(0).standard_normal((digits.n_train, digits.n_test)))
    scores.import_scores(tmp_path / "mine.npy", leak_copy, n_train=digits.n_train, n_test=digits.n_test)
    proc = run_cli("leakage", leak_copy, "--k", "5", "--n-reference", "2", "--score-methods", "mine")
    assert proc.returncode == 0, proc.stderr
    assert "overlap datamodels vs mine" in " ".join(proc.stdout.split()) and candidates_of(leak_copy, "mine")
    assert_one_line_error(run_cli("leakage", leak_copy, "--score-methods", "nope"))
