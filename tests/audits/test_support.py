import io
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

from audit import retrain
from audit.audits import support
from audit.audits.support import (NOT_FOUND, default_k_grid, estimate_support, heuristic_support, is_certified,
                                  sample_targets, verification_k, zero_crossing)
from audit.errors import AuditError
from audit.progress import PlainProgress


# ----- pure logic ----------------------------------------------------------------------
def test_default_grid_scales_the_papers():
    assert default_k_grid(50_000) == [10, 20, 40, 80, 160, 320, 640, 1280]
    assert default_k_grid(20_000) == [4, 8, 16, 32, 64, 128, 256, 512]
    assert default_k_grid(1297) == [2, 4, 8, 16, 32, 64]  # up to ~5% of a small training set
    assert default_k_grid(40) == [2] and default_k_grid(3) == [2]


def test_heuristic_support():
    w = np.array([[3.0, 1.0, 2.0, -1.0, 0.0],  # predicted margin 0.5 + 5 = 5.5 -> 3 + 2 = 5 < 5.5, +1 = 6 -> k=3
                  [0.5, 0.5, 0.0, 0.0, 0.0],  # margin 2 + 1 = 3 > sum of positives (1) -> never
                  [1.0, 0.0, 0.0, 0.0, -3.0]])  # margin 1 - 2 = -1 <= 0 -> already wrong: 0
    bias = np.array([0.5, 2.0, 1.0])
    assert list(heuristic_support(w, bias)) == [3, NOT_FOUND, 0]
    assert np.allclose(support.predicted_full_margin(w, bias), [5.5, 3.0, -1.0])
    # exactly reaching counts
    assert list(heuristic_support(np.array([[2.0, 2.0]]), np.array([0.0]))) == [2]
    assert list(heuristic_support(w, bias, chunk=1)) == [3, NOT_FOUND, 0]


def test_datamodel_neighbours_are_the_nearest_rows_by_cosine(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(70, 50)).astype(np.float32)
    weights[7] = 0.0  # a datamodel with no weights: cosine 0 with every row
    weights[11] = 4 * weights[60]  # as near as can be to target row 60, whatever its scale
    rows = np.array([50, 60, 69])
    unit = weights / np.maximum(np.linalg.norm(weights, axis=1, keepdims=True), 1e-12)
    want = np.argsort(-(unit[rows] @ unit[:50].T), axis=1, kind="stable")[:, :6]
    mapped = np.lib.format.open_memmap(tmp_path / "w.npy", mode="w+", dtype=np.float32, shape=weights.shape)
    mapped[:] = weights
    for source, chunk in ((weights, None), (mapped, 7)):  # read in chunks of train rows: the same answer
        got = support.datamodel_neighbours(source, rows, 50, 6, chunk=chunk)
        assert got.tolist() == want.tolist()
    assert got[1, 0] == 11 and 7 not in got

    class Rows:  # records the largest block of rows read at once
        shape, largest = weights.shape, 0

        def __getitem__(self, key):
            block = weights[key]
            Rows.largest = max(Rows.largest, len(block))
            return block

    monkeypatch.setattr(support, "NEIGHBOUR_CHUNK_BYTES", 4 * 50 * 9)  # nine train rows of 50 weights
    out = io.StringIO()
    got = support.datamodel_neighbours(Rows(), rows, 50, 6, progress=PlainProgress(out, interval=60))
    assert got.tolist() == want.tolist() and Rows.largest == 9
    assert "nearest datamodel embeddings" in out.getvalue() and "50/50 rows" in out.getvalue().splitlines()[-1]
    assert support.datamodel_neighbours(weights, rows, 50, 80).shape == (3, 50)
    # a target with no weights is equally far from every example: index order, however the rows are read
    for chunk in (None, 7, 1):
        assert support.datamodel_neighbours(weights, np.array([7, 50]), 50, 5, chunk=chunk)[0].tolist() == [0, 1, 2, 3, 4]


def test_datamodel_ranking_per_mode():
    assert support.datamodel_ranking_for("remove") == "weights"
    assert support.datamodel_ranking_for("relabel") == "embedding"
    assert support.datamodel_ranking_for("remove", "embedding") == "embedding"
    with pytest.raises(AuditError, match="datamodel-ranking"):
        support.datamodel_ranking_for("relabel", "nearest")


def test_zero_crossing_interpolates():
    assert zero_crossing([0, 2, 4, 8], [3.0, 1.0, -1.0, -2.0]) == pytest.approx(3.0)
    assert zero_crossing([0, 10, 20], [2.0, 0.0, -1.0]) == pytest.approx(10.0)
    assert zero_crossing([0, 1], [1.0, 0.5]) is None
    assert zero_crossing([1, 2], [-1.0, -2.0]) == 1.0


def test_isotonic_crossing_of_a_noisy_curve():
    ks = [0, 1, 2, 4, 8, 16]
    raw = [5.0, 5.5, 3.0, 1.0, 2.0, -3.0]  # two violations, pooled by the isotonic fit
    k, fitted = estimate_support(ks, raw)
    assert np.all(np.diff(fitted) <= 1e-12)
    assert fitted[0] == pytest.approx(5.25) and fitted[3] == pytest.approx(1.5) and fitted[4] == pytest.approx(1.5)
    assert k == pytest.approx(8 + 1.5 * 8 / 4.5)  # between k=8 (1.5) and k=16 (-3)
    assert 8 < k < 16


def test_estimate_support_edge_cases():
    assert estimate_support([0, 1, 2], [-0.5, -1.0, -2.0], full_margin=-0.5)[0] == 0.0  # already wrong
    assert estimate_support([0, 1, 2], [3.0, 2.0, 1.0], full_margin=3.0)[0] is None  # beyond the grid
    k, fitted = estimate_support([0, 1, 2, 4], [3.0, np.nan, 1.0, -1.0], counts=[4, 0, 4, 4], full_margin=3.0)
    assert np.isnan(fitted[1]) and k == pytest.approx(3.0)  # the all-diverged point is dropped
    # counts weight the pooling
    k, fitted = estimate_support([0, 1], [1.0, 2.0], counts=[3, 1])
    assert fitted[0] == pytest.approx(1.25)


def test_certification_rule():
    assert verification_k(10) == 12 and verification_k(5) == 6 and verification_k(2.5) == 3
    assert verification_k(0) == 0 and verification_k(0.4) == 1
    assert is_certified(-0.01) and not is_certified(0.0) and not is_certified(0.3) and not is_certified(float("nan"))


def test_sample_targets_balanced_and_fixed():
    y = np.repeat(np.arange(5), [30, 10, 20, 3, 40])
    t = sample_targets(y, 15, seed=1)
    assert len(t) == 15 and len(np.unique(t)) == 15 and np.all(np.diff(t) > 0)
    assert list(np.bincount(y[t], minlength=5)) == [3, 3, 3, 3, 3]
    t2 = sample_targets(y, 27, seed=1)  # class 3 has only 3: the others share the rest evenly
    counts = np.bincount(y[t2], minlength=5)
    assert counts[3] == 3 and counts.sum() == 27 and set(counts[[0, 1, 2, 4]]) == {6}
    assert np.array_equal(t, sample_targets(y, 15, seed=1))
    assert not np.array_equal(t, sample_targets(y, 15, seed=2))
    assert len(sample_targets(y, 1000)) == len(y)
    with pytest.raises(AuditError):
        sample_targets(y, 0)


def test_summary_counts_uncertified_as_infinite():
    recs = [{"methods": {"dm": {"certified": True, "certified_support": 3, "k_star": 2.1}}},
            {"methods": {"dm": {"certified": False, "certified_support": None, "k_star": 7.0}}},
            {"methods": {"dm": {"certified": False, "certified_support": None, "k_star": None}}}]
    s = support.summarize_method(recs, "dm", max_k=8, cdf_ks=[0, 4, 8])
    assert s["fraction_certified"] == pytest.approx(1 / 3)
    assert math.isinf(s["median_certified_support"]) and s["median_certified_support_label"] == "> 8"
    assert s["median_k_star"] == 7.0 and s["fraction_no_crossing"] == pytest.approx(1 / 3)
    assert [c["fraction"] for c in s["cdf"]] == pytest.approx([0, 1 / 3, 1 / 3])


def _method(certified: float, median: float, n: int = 100) -> dict:
    return {"n_targets": n, "fraction_certified": certified, "median_certified_support": median,
            "median_certified_support_label": support.median_label(median, 80)}


def test_verdict_says_plainly_when_a_baseline_beats_datamodels():
    # the label-flip figures of a digits run: the representation certifies more with smaller supports
    v = support.ranking_verdict({"datamodels": _method(0.91, 9), "representation": _method(1.0, 3),
                                 "random": _method(0.56, 69.5)}, "relabel")
    assert v["datamodels_lose"] and v["best"] == "representation"
    assert v["text"].startswith("Datamodels lose to the representation ranking on label-flip support")
    assert "representation certified 1.00 of 100 targets (median support 3)" in v["text"]
    assert "datamodels certified 0.91 of 100 targets (median support 9)" in v["text"]
    assert "sampling error" not in v["text"]  # 0.09 apart at 100 targets: beyond twice the standard error


def test_verdict_when_datamodels_win_tie_or_have_no_rival():
    v = support.ranking_verdict({"datamodels": _method(0.43, 20), "representation": _method(0.30, 40),
                                 "random": _method(0.04, math.inf)}, "remove")
    assert not v["datamodels_lose"] and v["best"] == "datamodels"
    assert "smallest removal (brittleness) supports" in v["text"] and "representation certified 0.30" in v["text"]
    # more certified (beyond sampling error) but larger supports: neither is better on both counts
    v = support.ranking_verdict({"datamodels": _method(0.5, 10), "representation": _method(0.8, 20)}, "remove")
    assert v["best"] is None and not v["datamodels_lose"] and v["text"].startswith(
        "Neither datamodels nor representation is clearly ahead") and "the other smaller supports" in v["text"]
    # 0.5 against 0.6 of 100 is within sampling error: the smaller median decides, and the text says so
    v = support.ranking_verdict({"datamodels": _method(0.5, 10), "representation": _method(0.6, 20)}, "remove")
    assert v["best"] == "datamodels" and "the medians decide" in v["text"]
    # both medians beyond the grid and fractions within sampling error: nothing to choose between them
    # (the removal figures of `audit run digits`: 0.42 against 0.30 of 100 targets is 1.8 standard errors)
    v = support.ranking_verdict({"datamodels": _method(0.42, math.inf), "representation": _method(0.3, math.inf),
                                 "random": _method(0.04, math.inf)}, "remove")
    assert v["best"] is None and "median support > 80" in v["text"] and "audit more targets (--n)" in v["text"]
    v = support.ranking_verdict({"datamodels": _method(0, math.inf), "representation": _method(0, math.inf)}, "remove")
    assert v["text"].startswith("No ranking certified a removal (brittleness) support within the grid")
    # a random ranking is never the one to use, but losing to it is said
    v = support.ranking_verdict({"datamodels": _method(0.2, 40), "random": _method(0.3, 30)}, "remove")
    assert v["datamodels_lose"] and v["best"] is None and v["text"].startswith("Datamodels do worse than a random")
    # a small sample: a difference in fractions the number of targets cannot tell apart is no verdict ...
    v = support.ranking_verdict({"datamodels": _method(0.8, 9, n=10), "representation": _method(0.9, 9, n=10)},
                                "relabel")
    assert not v["datamodels_lose"] and v["best"] is None
    # ... and where the medians then decide, the text says the fractions did not
    v = support.ranking_verdict({"datamodels": _method(0.8, 9, n=10), "representation": _method(0.9, 7, n=10)},
                                "relabel")
    assert v["datamodels_lose"] and "the medians decide" in v["text"]
    v = support.ranking_verdict({"datamodels": _method(0.5, 9), "random": _method(0.52, 9)}, "remove")
    assert v["text"].startswith("Datamodels are not clearly better than a random ranking")
    assert support.ranking_verdict({"representation": _method(1, 3), "random": _method(0, math.inf)}, "remove") is None
    assert support.ranking_verdict({"datamodels": _method(1, 3)}, "remove") is None


# ----- the search on a small digits run ------------------------------------------------
SMALL = dict(n=4, T=2, k_grid=[2, 8], block_size=16)


def _check_records(out: dict, grid: list[int]) -> None:
    for r in out["targets"]:
        assert set(r["methods"]) == {"datamodels", "representation", "random"}
        for res in r["methods"].values():
            assert list(res["curve"]) == ["0"] + [str(k) for k in grid]
            assert res["curve"]["0"] == pytest.approx(r["full_margin"])  # the shared full-data models
            if r["full_margin"] < 0:
                assert res["k_star"] == 0 and res["certified"]
            if res["k_star"] is None:
                assert not res["certified"] and res["verify_k"] is None
            else:
                assert res["verify_k"] == verification_k(res["k_star"])
                assert res["certified"] == (res["verify_margin"] < 0)
                assert res["certified_support"] == (res["verify_k"] if res["certified"] else None)
                assert res["edited"] is None if not res["certified"] else len(res["edited"]) == res["verify_k"]


def test_brittleness_resumes_after_a_kill(audit_run, digits, monkeypatch):
    """Killed after its first retraining block, the audit restarts without retraining any model it has."""
    from audit.training.mlp import MLPTrainer

    real = MLPTrainer.train_block
    calls = {"blocks": 0, "models": 0, "fail_after": 2}  # block 1: the reference models; block 2: the grid's first

    def counting(self, dataset, masks, seeds, labels=None, progress=None):
        if calls["fail_after"] is not None and calls["blocks"] >= calls["fail_after"]:
            raise KeyboardInterrupt("killed")
        calls["blocks"] += 1
        calls["models"] += len(seeds)
        return real(self, dataset, masks, seeds, labels)

    monkeypatch.setattr(MLPTrainer, "train_block", counting)
    with pytest.raises(KeyboardInterrupt):
        support.run_brittleness(audit_run, all_heuristic=True, dataset=digits, **SMALL)
    assert (audit_run / "reference.npz").exists() and not (audit_run / "audits").exists()
    assert calls["models"] == 3 + SMALL["block_size"]  # three reference models, one grid block
    calls.update(blocks=0, models=0, fail_after=None)
    s = support.run_brittleness(audit_run, all_heuristic=True, dataset=digits, **SMALL)
    assert calls["models"] == s["models_trained_now"] == s["models_in_plan"] - SMALL["block_size"]

    out = json.loads((audit_run / "audits" / "brittleness.json").read_text())
    assert out["summary"]["per_method"].keys() == {"datamodels", "representation", "random"}
    assert s["n_targets"] == 4 and s["k_grid"] == [2, 8] and s["T"] == 2 and s["datamodel_ranking"] == "weights"
    assert len(out["targets"]) == 4 and len(out["heuristic_all"]) == digits.n_test
    targets = [r["target"] for r in out["targets"]]
    assert targets == list(sample_targets(digits.y_test, 4, 0))
    _check_records(out, [2, 8])
    csv = (audit_run / "audits" / "brittleness.csv").read_text().splitlines()
    assert len(csv) == 5 and "datamodels_k_star" in csv[0] and "random_certified" in csv[0]
    plans = sorted((audit_run / "retrain").glob("brittleness-grid-*/plan.json"))
    assert len(plans) == 1 and json.loads(plans[0].read_text())["options"]["T"] == 2
    # run again: nothing retrained, the same results
    calls["models"] = 0
    again = support.run_brittleness(audit_run, all_heuristic=True, dataset=digits, **SMALL)
    assert again["models_trained_now"] == calls["models"] == 0
    assert json.loads((audit_run / "audits" / "brittleness.json").read_text())["targets"] == out["targets"]


def test_each_certified_support_records_the_examples_it_edited(audit_run, digits, monkeypatch):
    """With margins that fall below zero from k = 5 on, every ranking of every target is certified at
    ⌈1.2·k*⌉ = 6, and ``edited`` is that prefix of the list the plan edited (for removal and relabelling)."""
    plans = {}

    def margins_by_k(root, name, plan, *args, **kwargs):
        plans[name] = plan
        settings = {"seed": kwargs["seed"], "trainer": kwargs["trainer_config"], "fingerprint": kwargs["fingerprint"],
                    "block_size": kwargs["block_size"]}
        retrain.RetrainStore.open_or_create(retrain.job_dir(root, name, plan, **settings), plan,
                                            options=kwargs["options"], **settings)  # its folder, as run_plan leaves it
        return (5.0 - plan.job_k[plan.row_job]).astype(np.float32), 0

    monkeypatch.setattr(support, "run_plan", margins_by_k)
    for mode, name in (("remove", "brittleness"), ("relabel", "mislabel")):
        support.run_brittleness(audit_run, mode=mode, n=3, T=1, k_grid=[2, 8], dataset=digits)
        out = json.loads((audit_run / "audits" / f"{name}.json").read_text())
        lists = plans[f"{name}-grid"].lists.reshape(3, 3, -1)
        for t, r in enumerate(out["targets"]):
            for m, res in enumerate(r["methods"].values()):
                assert res["certified"] and res["certified_support"] == 6
                assert res["edited"] == [int(j) for j in lists[t, m, :6] if j >= 0] and len(res["edited"]) == 6
    # a file from before ``edited`` was recorded: the findings list the first examples of the lists the search's
    # plan holds (the embedding's, without examples already of the wrong class, for relabelling)
    path = audit_run / "audits" / "mislabel.json"
    data = json.loads(path.read_text())
    edited = [{m: res.pop("edited") for m, res in r["methods"].items()} for r in data["targets"]]
    assert data["summary"]["datamodel_ranking"] == "embedding"
    for chosen in ("datamodels", "representation"):
        if chosen == "representation":  # the datamodels' support made larger: the representation's is the smallest
            for r in data["targets"]:
                r["methods"]["datamodels"]["certified_support"] = 7
        path.write_text(json.dumps(data))
        findings = support.MISLABEL.findings(audit_run)
        assert [f.details["ranking"] for f in findings] == [chosen] * 3
        assert [f.related for f in findings] == [e[chosen] for e in edited]
    # no plan with this result's options, or two of them: the examples are left unlisted, not guessed
    (grid,) = (audit_run / "retrain").glob("mislabel-grid-*")
    shutil.copytree(grid, grid.with_name("mislabel-grid-copy"))
    assert [f.related for f in support.MISLABEL.findings(audit_run)] == [[]] * 3
    shutil.rmtree(grid.with_name("mislabel-grid-copy"))
    (grid / "plan.npz").write_bytes(b"")  # a plan that cannot be read
    assert [f.related for f in support.MISLABEL.findings(audit_run)] == [[]] * 3
    # removal, as files and plans were written before the datamodel ranking was a setting (weights, unnamed)
    path = audit_run / "audits" / "brittleness.json"
    data = json.loads(path.read_text())
    edited = [{m: res.pop("edited") for m, res in r["methods"].items()} for r in data["targets"]]
    del data["summary"]["datamodel_ranking"]
    path.write_text(json.dumps(data))
    (grid,) = (audit_run / "retrain").glob("brittleness-grid-*")
    meta = json.loads((grid / "plan.json").read_text())
    assert meta["options"].pop("datamodel_ranking") == "weights"
    (grid / "plan.json").write_text(json.dumps(meta))
    assert [f.related for f in support.BRITTLENESS.findings(audit_run)] == [e["datamodels"] for e in edited]
    shutil.rmtree(audit_run / "retrain")
    findings = support.MISLABEL.findings(audit_run)
    assert [f.related for f in findings] == [[]] * 3 and all(f.details["support"] == 6 for f in findings)


def _audit_in_process(monkeypatch, capsys, *args: str):
    """``audit ARGS`` through the CLI entry point in this process; returns (exit code, stdout, stderr)."""
    from audit.cli import main

    monkeypatch.setattr(sys, "argv", ["audit", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_bad_inputs_are_one_line_errors(audit_run, monkeypatch, capsys):
    from tests.conftest import assert_one_line_error

    for args in (["--targets", "3,99999"], ["--targets", "a,b"], ["--k-grid", "8,2"], ["--methods", "nearest"],
                 ["--T", "0"], ["--k-grid", "2,5000"], ["--datamodel-ranking", "nearest"]):
        assert_one_line_error(_audit_in_process(monkeypatch, capsys, "brittleness", str(audit_run), *args))
    assert not (audit_run / "audits").exists() and not (audit_run / "retrain").exists()
    proc = _audit_in_process(monkeypatch, capsys, "mislabel", str(audit_run), "--datamodel-ranking", "nearest")
    assert_one_line_error(proc)
    assert "models to train" not in proc.stdout  # refused before the search's cost is shown
    unfitted = audit_run.parent / "unfitted"
    shutil.copytree(audit_run, unfitted, ignore=shutil.ignore_patterns("datamodels.npz"))
    proc = _audit_in_process(monkeypatch, capsys, "mislabel", str(unfitted), "--n", "2")
    assert_one_line_error(proc)
    assert "audit fit" in proc.stderr


def test_cli_prints_the_table(audit_run):
    from tests.conftest import run_cli

    proc = run_cli("brittleness", str(audit_run), "--targets", "0,5", "--T", "1", "--k-grid", "4")
    assert proc.returncode == 0, proc.stderr
    assert "median support" in proc.stdout and "certified" in proc.stdout
    out = " ".join(proc.stdout.split())
    # before it starts: the models it will train at most (1 unedited + 2 targets x 3 rankings x 1 k, then up
    # to 6 to verify) and the rate measured on this run; then what was found, then the tables
    assert "brittleness: up to 13 models to train" in out and "models/s measured on this run" in out
    assert out.index("models to train") < out.index("what we found") < out.index("median support")
    summary = json.loads((audit_run / "audits" / "brittleness.json").read_text())["summary"]
    assert summary["models_in_plan"] <= 13
    assert "(its subset models)" in out  # the first search: timed from the train step, up to 1/alpha slower
    cost = support.MISLABEL.cost(audit_run)  # now timed by the search that ran, full-data models like its own
    assert cost.slowdown == 1 and "brittleness" in cost.measured_on
    assert cost.rate == summary["models_trained_now"] / summary["seconds"]
    for method in ("datamodels", "representation", "random"):
        assert method in proc.stdout
    assert "brittleness.json" in proc.stdout.replace("\n", "")
    verdict = summary["verdict"]  # which ranking to trust, said on the terminal and saved for scripts
    assert verdict["text"].split(":")[0] in out and verdict["text"].split(":")[0].startswith(
        ("Datamodels lose", "Datamodels find", "Datamodels do worse", "Datamodels are not", "Neither", "No ranking"))
    out = json.loads((audit_run / "audits" / "brittleness.json").read_text())
    assert [r["target"] for r in out["targets"]] == [0, 5] and out["summary"]["k_grid"] == [4]


def test_brittleness_on_ray_equals_local(audit_run, digits, tmp_path, local_ray):
    """The label-flip audit retrained as Ray tasks (local instance, CPU trainer) gives the local results."""
    ray_run = tmp_path / "ray_run"
    shutil.copytree(audit_run, ray_run)
    opts = dict(targets=[0, 5], T=1, k_grid=[4], seed=0, dataset=digits)
    local = support.run_brittleness(audit_run, mode="relabel", **opts)
    remote = support.run_brittleness(ray_run, mode="relabel", engine="ray", **opts)
    assert remote["models_trained_now"] == local["models_trained_now"] > 0
    a = json.loads((audit_run / "audits" / "mislabel.json").read_text())["targets"]
    b = json.loads((ray_run / "audits" / "mislabel.json").read_text())["targets"]
    assert [r["target"] for r in a] == [r["target"] for r in b] == [0, 5]
    for ra, rb in zip(a, b):
        for method in ra["methods"]:
            assert ra["methods"][method]["certified"] == rb["methods"][method]["certified"]
            for k, v in ra["methods"][method]["curve"].items():
                assert rb["methods"][method]["curve"][k] == pytest.approx(v, abs=1e-3)


def test_brittleness_ranks_by_a_score_matrix(audit_run, digits, tmp_path, monkeypatch, capsys):
    """An imported score matrix is a ranking like the others: its candidate lists are its top-k, and its certified
    supports stand beside the built-in rankings'; a method the run lacks is one error naming the available ones."""
    from audit import scores
    from tests.conftest import assert_one_line_error

    rng = np.random.default_rng(3)
    mine = rng.standard_normal((digits.n_train, digits.n_test)).astype(np.float32)
    np.save(tmp_path / "mine.npy", mine)
    scores.import_scores(tmp_path / "mine.npy", audit_run, n_train=digits.n_train, n_test=digits.n_test)
    proc = _audit_in_process(monkeypatch, capsys, "brittleness", str(audit_run), "--methods", "datamodels,trak")
    assert_one_line_error(proc)
    assert "mine" in proc.stderr and "trak" in proc.stderr
    s = support.run_brittleness(audit_run, targets=[0, 5], T=1, k_grid=[4], methods=("datamodels", "mine"),
                                dataset=digits)
    assert list(s["per_method"]) == ["datamodels", "mine"]
    with np.load(next((audit_run / "retrain").glob("brittleness-grid-*/plan.npz"))) as z:
        lists = z["lists"].reshape(2, 2, -1)
    K = lists.shape[-1]
    np.testing.assert_array_equal(lists[:, 1], scores.top_k(mine[:, [0, 5]].T, K))
    table = support.BRITTLENESS.summary(support.BRITTLENESS.load(audit_run))[0]
    assert [row[0] for row in table.rows] == ["datamodels", "mine"]


def test_own_features_change_the_representation_ranking(audit_run, digits, tmp_path, monkeypatch, capsys):
    """--features: the representation baseline ranks by the given features (no reference models trained)."""
    from audit.audits import baselines
    from tests.conftest import assert_one_line_error

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((digits.n_train + digits.n_test, 8)).astype(np.float32)
    np.savez(tmp_path / "f.npz", feats=feats)
    s = support.run_brittleness(audit_run, targets=[0, 5], T=1, k_grid=[4], methods=("representation",),
                                dataset=digits, features=tmp_path / "f.npz")
    assert not (audit_run / "reference.npz").exists() and s["representation_features"].endswith("f.npz")
    with np.load(next((audit_run / "retrain").glob("brittleness-grid-*/plan.npz"))) as z:
        lists = z["lists"]
    _, want = baselines.nearest_neighbours(feats[:digits.n_train], feats[digits.n_train:][[0, 5]], lists.shape[1])
    np.testing.assert_array_equal(lists, want)
    np.save(tmp_path / "bad.npy", feats[:, :, None])
    proc = _audit_in_process(monkeypatch, capsys, "brittleness", str(audit_run), "--features", str(tmp_path / "bad.npy"))
    assert_one_line_error(proc)
    assert "[1797, d]" in proc.stderr


@pytest.mark.parametrize("bad_row", [290, 300 + 7])  # a train row read in the second block; a target's own row
def test_nearest_embeddings_name_the_run_row_with_a_nan_weight(bad_row):
    w = np.random.default_rng(0).normal(size=(320, 300)).astype(np.float32)
    w[bad_row, 5] = np.nan
    with pytest.raises(AuditError, match=f"datamodel row {bad_row} has NaN or infinite weights; refit"):
        support.nearest_embeddings(w, 300 + np.arange(20), 300, 5, chunk=256)
