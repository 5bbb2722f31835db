"""`audit check`: threshold sources and precedence, every metric from result files in the real
formats (made by the producing functions where they are pure), JUnit XML, exit codes 0/1/2."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from audit import checks
from audit.errors import AuditError
from audit.jsonio import write_csv, write_json
from tests.cli_inprocess import call_main
from tests.conftest import assert_one_line_error


# ----- result files in the formats the audits write --------------------------------------
def make_run(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / "run.json", {"dataset": "digits", "n_train": 40, "n_test": 10})
    return path


def write_evaluation(run: Path, rng) -> dict:
    """evaluation.json from audit.datamodels.evaluate on held-out models of a known linear truth."""
    from audit.datamodels import Datamodels, evaluate

    n_train, n_test, m = 40, 10, 30
    w = rng.normal(size=(n_train + n_test, n_train)).astype(np.float32)
    dm = Datamodels(weights=w, bias=np.zeros(len(w), np.float32), lam=np.ones(len(w)), val_mse=np.zeros(len(w)),
                    lam_ratio=np.ones(len(w)), n_models_fit=100, n_train=n_train)
    masks = rng.random((m, n_train)) < 0.5
    margins = masks @ w.T + rng.normal(scale=3.0, size=(m, len(w)))
    result, _ = evaluate(dm, masks, margins.astype(np.float32), n_train)
    write_json(run / "evaluation.json", result)
    return result


def support_record(target: int, certified: bool, size: int | None, method: str = "datamodels") -> dict:
    """One entry of audits/brittleness.json "targets" (as audit.audits.support.run_brittleness writes it)."""
    res = {"k_star": None if size is None else size / 1.2, "verify_k": size, "verify_margin": -0.1 if certified else 0.3,
           "certified": certified, "certified_support": size if certified else None,
           "curve": {"0": 1.0, "4": -0.2}, "fitted": {"0": 1.0, "4": -0.2}}
    return {"target": target, "label": 1, "label_name": "1", "full_margin": 1.0, "predicted_full_margin": 0.9,
            "heuristic_k": 3, "methods": {method: res}}


def write_support(run: Path, name: str, sizes: list, method: str = "datamodels", max_k: int = 100) -> None:
    """sizes: certified support per target, None = not certified; max_k: the last k of the audit's grid."""
    recs = [support_record(t, s is not None, s, method) for t, s in enumerate(sizes)]
    write_json(run / "audits" / f"{name}.json", {"summary": {"mode": "remove", "n_targets": len(recs),
                                                              "max_k": max_k}, "targets": recs})


def write_geo(run: Path, csv_too: bool = True) -> tuple[list, dict]:
    """leakage.json "geo" + leakage_geo.csv from audit.audits.geo.leakage_efficacy (real geodesics)."""
    pytest.importorskip("geopy")
    from audit.audits.geo import leakage_efficacy

    lat_tr = np.array([10.0, 20.0, 30.0, 40.0])
    lon_tr = np.zeros(4)
    # test images: 0.0, ~0.07, ~0.7, ~69 miles north of a training image
    lat_te = np.array([10.0, 20.001, 30.01, 41.0])
    lon_te = np.zeros(4)
    cand = np.array([[0, 1], [1, -1], [2, 3], [3, 0]])
    grid = [0.25, 1.0]
    eff = leakage_efficacy(cand, lat_te, lon_te, lat_tr, lon_tr, grid)
    write_json(run / "audits" / "leakage.json", {"summary": {}, "geo": {
        "d_miles": grid, "frac_with_candidate": {"datamodels": eff["frac_with_candidate"],
                                                 "representation": eff["frac_with_candidate"]}}})
    if csv_too:
        rows = [{"test_index": t, "nearest_train_index": t, "nearest_train_miles": eff["nearest_train_miles"][t],
                 "datamodels_nearest_candidate_miles": eff["nearest_candidate_miles"][t],
                 "representation_nearest_candidate_miles": None} for t in range(4)]
        write_csv(run / "audits" / "leakage_geo.csv", rows, list(rows[0]))
    return grid, eff


def write_planted(run: Path, key: str = "planted") -> dict:
    """leakage.json "planted" from audit.audits.leakage_audit.planted_report."""
    from audit.audits.leakage_audit import planted_report

    pairs = np.array([[0, 40], [1, 41], [2, 42], [3, 43]])
    cand = np.full((10, 10), -1)
    cand[0, 0], cand[1, 4], cand[2, 9] = 40, 41, 42  # ranks 1, 5, 10; test 3's copy not found
    scores = np.zeros((4, 44))
    rep = planted_report(pairs, {"datamodels": cand}, {"datamodels": scores}, 10)
    write_json(run / "audits" / "leakage.json", {"summary": {}, key: rep})
    return rep


def write_mturk(run: Path, scores: list) -> None:
    """audits/leakage_mturk.json as MTurkResults.to_json writes it."""
    from audit.audits.mturk import MTurkResults

    res = MTurkResults(pairs=[], leakage_score={t: s for t, s in enumerate(scores)},
                       n_workers={t: 3 for t in range(len(scores))}, summary={})
    write_json(run / "audits" / "leakage_mturk.json", res.to_json())


# ----- thresholds: sources, precedence, validation -----------------------------------------
def test_thresholds_from_audit_toml_pyproject_and_options(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "audit.toml").write_text("[check]\nmin_lds = 0.1\nmax_brittle_fraction = 0.2\nsupport_k = 8\n")
    t, src = checks.resolve_thresholds(cwd=tmp_path / "a")
    assert t == {"min_lds": 0.1, "max_brittle_fraction": 0.2, "support_k": 8} and src.endswith("audit.toml")
    # options win over the file, key by key
    t, src = checks.resolve_thresholds(cwd=tmp_path / "a", options={"min_lds": 0.3, "support_k": None})
    assert t == {"min_lds": 0.3, "max_brittle_fraction": 0.2, "support_k": 8} and src.endswith("+ options")
    # top-level keys of audit.toml (no [check] table)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "audit.toml").write_text("min_lds = 0.05\n[other]\nx = 1\n")
    assert checks.resolve_thresholds(cwd=tmp_path / "b")[0] == {"min_lds": 0.05}
    # pyproject: [tool.audit.check] or [tool.audit], found from a subfolder
    (tmp_path / "c" / "sub").mkdir(parents=True)
    (tmp_path / "c" / "pyproject.toml").write_text("[project]\nname='x'\n[tool.audit.check]\nmin_lds = 0.2\n")
    t, src = checks.resolve_thresholds(cwd=tmp_path / "c" / "sub")
    assert t == {"min_lds": 0.2} and src.endswith("pyproject.toml")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "pyproject.toml").write_text("[tool.audit]\nmax_mturk_leak_fraction = 0.01\n")
    assert checks.resolve_thresholds(cwd=tmp_path / "d")[0] == {"max_mturk_leak_fraction": 0.01}
    # audit.toml beats pyproject.toml in the same folder; --config beats both
    (tmp_path / "d" / "audit.toml").write_text("min_lds = 0.4\n")
    assert checks.resolve_thresholds(cwd=tmp_path / "d")[0] == {"min_lds": 0.4}
    assert checks.resolve_thresholds(config=tmp_path / "a" / "audit.toml", cwd=tmp_path / "d")[0]["support_k"] == 8


def test_no_config_anywhere_means_options_only(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'other'\n")  # a pyproject without tool.audit
    assert checks.find_config(tmp_path) is None or checks.find_config(tmp_path).parent != tmp_path
    t, src = checks.resolve_thresholds(config=None, options={"min_lds": 0.1}, cwd=tmp_path)
    assert t["min_lds"] == 0.1


@pytest.mark.parametrize("text,needle", [
    ("[check]\nmin_lds = 'high'\n", "not a finite number"),
    ("[check]\nmax_brittle_fraction = 1.5\n", "between 0 and 1"),
    ("[check]\nmin_lds = 2\n", "between -1 and 1"),
    ("[check]\nsupport_k = -3\n", "whole number"),
    ("[check]\nsupport_k = 2.5\n", "whole number"),
    ("[check]\nleak_miles = 0\n", "miles > 0"),
    ("[check]\nsupport_method = 'Magic!'\n", "score matrix's name"),
    ("[check]\nmin_lsd = 0.1\n", "did you mean min_lds"),
    ("[check]\nmin_lds = nan\n", "not a finite number"),
    ("check = 3\n", "must be a table"),
    ("[check\nmin_lds = 0.1\n", "not valid TOML"),
])
def test_bad_threshold_files_name_the_problem(tmp_path, text, needle):
    path = tmp_path / "audit.toml"
    path.write_text(text)
    with pytest.raises(AuditError, match=needle):
        checks.resolve_thresholds(config=path)


def test_missing_config_file_and_pyproject_without_table(tmp_path):
    with pytest.raises(AuditError, match="not found"):
        checks.resolve_thresholds(config=tmp_path / "nope.toml")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    with pytest.raises(AuditError, match=r"no \[tool.audit\]"):
        checks.resolve_thresholds(config=tmp_path / "pyproject.toml")


# ----- metrics from real-format files --------------------------------------------------------
def test_lds_check_reads_evaluation_json(tmp_path, rng):
    run = make_run(tmp_path / "r")
    result = write_evaluation(run, rng)
    for group in ("test", "train", "all"):
        lds = result[group]["lds_mean"]
        assert np.isfinite(lds)
        res = checks.run_checks(run, {"min_lds": round(lds - 0.01, 6), "lds_group": group}, save=False)
        (c,) = res["checks"]
        assert c["value"] == pytest.approx(lds) and c["status"] == "pass" and res["passed"]
        res = checks.run_checks(run, {"min_lds": round(lds + 0.01, 6), "lds_group": group}, save=False)
        assert res["checks"][0]["status"] == "fail" and not res["passed"] and res["n_failed"] == 1


@pytest.mark.parametrize("name,key,k_key", [("brittleness", "max_brittle_fraction", "support_k"),
                                            ("mislabel", "max_mislabel_fraction", "mislabel_k")])
def test_support_fraction_counts_certified_at_most_k(tmp_path, name, key, k_key):
    run = make_run(tmp_path / "r")
    write_support(run, name, [2, 6, 10, None, 30])  # None: not certified (support beyond the grid)
    for k, expected in ((1, 0.0), (6, 0.4), (10, 0.6), (100, 0.8)):
        (c,) = checks.run_checks(run, {key: 0.5, k_key: k}, save=False)["checks"]
        assert c["value"] == pytest.approx(expected)
        assert c["status"] == ("pass" if expected <= 0.5 else "fail")
        assert c["details"]["n_at_most_k"] == round(expected * 5)
    with pytest.raises(AuditError, match="--methods random"):  # the audit did not run this ranking
        checks.run_checks(run, {key: 0.5, "support_method": "random"}, save=False)
    with pytest.raises(AuditError, match="no ranking 'trak'.*audit import-scores"):  # nor a score matrix of the run
        checks.run_checks(run, {key: 0.5, "support_method": "trak"}, save=False)


@pytest.mark.parametrize("name,key,k_key", [("brittleness", "max_brittle_fraction", "support_k"),
                                            ("mislabel", "max_mislabel_fraction", "mislabel_k")])
def test_a_support_check_its_data_cannot_decide_is_an_error_not_a_pass(tmp_path, name, key, k_key):
    run = make_run(tmp_path / "r")
    write_support(run, name, [None, None, 3], max_k=8)  # the grid ended at k=8
    assert checks.run_checks(run, {key: 0.5, k_key: 8}, save=False)["checks"][0]["status"] == "pass"
    with pytest.raises(AuditError, match="beyond the largest k the audit tried"):
        checks.run_checks(run, {key: 0.5, k_key: 20}, save=False)  # the default k=20: undecidable
    data = json.loads((run / "audits" / f"{name}.json").read_text())
    data["targets"][2]["methods"]["datamodels"]["certified_support"] = "small"
    (run / "audits" / f"{name}.json").write_text(json.dumps(data))
    with pytest.raises(AuditError, match="not a number"):
        checks.run_checks(run, {key: 0.5, k_key: 8}, save=False)
    data["summary"].pop("max_k")  # no summary.max_k: the targets' curves say which k were tried
    data["targets"][2]["methods"]["datamodels"]["certified_support"] = 3
    (run / "audits" / f"{name}.json").write_text(json.dumps(data))
    tried = max(int(k) for k in data["targets"][0]["methods"]["datamodels"]["curve"])
    assert checks.run_checks(run, {key: 0.5, k_key: tried}, save=False)["checks"][0]["status"] == "pass"
    with pytest.raises(AuditError, match=f"beyond the largest k the audit tried \\({tried} "):
        checks.run_checks(run, {key: 0.5, k_key: tried + 1}, save=False)


def test_geo_leak_fraction_from_csv_any_d_and_from_json_grid_only(tmp_path):
    run = make_run(tmp_path / "r")
    grid, eff = write_geo(run)
    near = np.array([np.inf if v is None else v for v in eff["nearest_candidate_miles"]])
    for d in (0.01, 0.25, 0.5, 1.0, 100.0):  # from the CSV: any distance
        (c,) = checks.run_checks(run, {"max_geo_leak_fraction": 0.3, "leak_miles": d}, save=False)["checks"]
        assert c["value"] == pytest.approx((near <= d).mean()) and c["file"].endswith(".csv")
    # without the CSV: leakage.json, only on its grid
    (run / "audits" / "leakage_geo.csv").unlink()
    (c,) = checks.run_checks(run, {"max_geo_leak_fraction": 0.3, "leak_miles": 1.0}, save=False)["checks"]
    assert c["value"] == pytest.approx(eff["frac_with_candidate"][grid.index(1.0)])
    with pytest.raises(AuditError, match="not on the distance grid"):
        checks.run_checks(run, {"max_geo_leak_fraction": 0.3, "leak_miles": 0.5}, save=False)


def test_geo_check_on_data_without_coordinates_is_bad_input(tmp_path):
    run = make_run(tmp_path / "r")
    write_json(run / "audits" / "leakage.json", {"summary": {}})
    with pytest.raises(AuditError, match="lat/lon"):
        checks.run_checks(run, {"max_geo_leak_fraction": 0.1}, save=False)


def test_mturk_leak_fraction(tmp_path):
    run = make_run(tmp_path / "r")
    scores = [0.0, 1 / 3, 0.5, 2 / 3, 1.0, None]  # None: a test image nobody answered
    write_mturk(run, scores)
    for s in (0.0, 0.5, 0.9):
        (c,) = checks.run_checks(run, {"max_mturk_leak_fraction": 0.5, "mturk_score": s}, save=False)["checks"]
        assert c["value"] == pytest.approx(sum(v is not None and v >= s for v in scores) / len(scores))


@pytest.mark.parametrize("key", ["planted", "planted_check"])
def test_planted_recall(tmp_path, key):
    run = make_run(tmp_path / "r")
    rep = write_planted(run, key)
    recall = rep["methods"]["datamodels"]["recall_at_k"]
    assert recall == {"1": 0.25, "5": 0.5, "10": 0.75}  # the producer's own numbers, checked against the setup
    for k in (1, 5, 10):
        (c,) = checks.run_checks(run, {"min_planted_recall": 0.5, "planted_k": k}, save=False)["checks"]
        assert c["value"] == pytest.approx(recall[str(k)]) and c["status"] == ("pass" if recall[str(k)] >= 0.5 else "fail")
    (c,) = checks.run_checks(run, {"min_planted_recall": 0.5}, save=False)["checks"]  # default: the largest k
    assert c["details"]["k"] == 10
    with pytest.raises(AuditError, match="recall at k = 1, 5, 10 only"):
        checks.run_checks(run, {"min_planted_recall": 0.5, "planted_k": 3}, save=False)


def test_unconfigured_results_are_information_and_saved(tmp_path, rng):
    run = make_run(tmp_path / "r")
    write_evaluation(run, rng)
    write_support(run, "brittleness", [1, None])
    res = checks.run_checks(run, {"max_brittle_fraction": 0.9})
    status = {c["key"]: c["status"] for c in res["checks"]}
    assert status == {"min_lds": "info", "max_brittle_fraction": "pass"} and res["n_checks"] == 1
    saved = json.loads((run / "audits" / "check.json").read_text())
    assert saved == json.loads(json.dumps(res))


@pytest.mark.parametrize("setup,thresholds,needle", [
    (lambda run: None, {}, "no thresholds configured"),
    (lambda run: None, {"min_lds": 0.1}, "evaluation.json does not exist"),
    (lambda run: (run / "evaluation.json").write_text("{trunc"), {"min_lds": 0.1}, "unreadable"),
    (lambda run: write_json(run / "evaluation.json", {"all": {}}), {"min_lds": 0.1}, "has no 'test'"),
    (lambda run: write_json(run / "audits" / "brittleness.json", {"targets": []}), {"max_brittle_fraction": 0.1},
     "lists no targets"),
    (lambda run: write_json(run / "audits" / "leakage_mturk.json", {"tests": []}), {"max_mturk_leak_fraction": 0.1},
     "no annotated test images"),
    (lambda run: write_json(run / "audits" / "leakage.json", {"summary": {}}), {"min_planted_recall": 0.1},
     "no planted-duplicate results"),
])
def test_bad_results_are_audit_errors_and_nothing_is_saved(tmp_path, setup, thresholds, needle):
    run = make_run(tmp_path / "r")
    (run / "audits").mkdir()
    setup(run)
    with pytest.raises(AuditError, match=needle):
        checks.run_checks(run, thresholds)
    assert not (run / "audits" / "check.json").exists()


def test_not_a_run_directory(tmp_path):
    with pytest.raises(AuditError, match="not a run directory"):
        checks.run_checks(tmp_path, {"min_lds": 0.1})


def test_undefined_value_fails_the_check(tmp_path):
    run = make_run(tmp_path / "r")
    write_json(run / "evaluation.json", {"test": {"lds_mean": None}})  # NaN is written as null
    res = checks.run_checks(run, {"min_lds": -1.0}, save=False)
    assert res["checks"][0]["status"] == "fail" and res["checks"][0]["value"] is None


# ----- JUnit -----------------------------------------------------------------------------------
def test_junit_has_one_case_per_check_and_failures_for_failed_ones(tmp_path, rng):
    run = make_run(tmp_path / "r")
    lds = write_evaluation(run, rng)["test"]["lds_mean"]
    write_support(run, "brittleness", [1, 2, None])
    write_mturk(run, [1.0, 0.0])
    res = checks.run_checks(run, {"min_lds": round(lds - 0.05, 6), "max_brittle_fraction": 0.1,
                                  "support_k": 5}, save=False)
    checks.write_junit(res, tmp_path / "out" / "junit.xml")
    root = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    suite = root.find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {"min_lds", "max_brittle_fraction"}  # the mturk result is information, not a case
    assert suite.get("tests") == "2" and suite.get("failures") == root.get("failures") == "1"
    assert cases["min_lds"].find("failure") is None
    failure = cases["max_brittle_fraction"].find("failure")
    assert failure is not None and "0.6667" in failure.get("message") and "<= 0.1" in failure.get("message")


def test_junit_escapes_hostile_run_names(tmp_path, rng):
    run = make_run(tmp_path / 'r<script>alert(1)</script>,"x"&')
    write_evaluation(run, rng)
    res = checks.run_checks(run, {"min_lds": 1.0}, save=False)
    text = checks.junit_xml(res)
    root = ET.fromstring(text.encode())
    assert root.find("testsuite").get("name").endswith('r<script>alert(1)</script>,"x"&')
    assert "<script>" not in text


def test_junit_to_a_folder_is_bad_input(tmp_path, rng):
    run = make_run(tmp_path / "r")
    write_evaluation(run, rng)
    res = checks.run_checks(run, {"min_lds": -1.0}, save=False)
    with pytest.raises(AuditError, match="JUnit"):
        checks.write_junit(res, tmp_path)


# ----- the command: table, files, exit codes -------------------------------------------------
def test_cli_exit_codes_table_json_and_junit(tmp_path, rng):
    run = make_run(tmp_path / "r")
    lds = write_evaluation(run, rng)["test"]["lds_mean"]
    write_support(run, "brittleness", [1, 50])
    (tmp_path / "audit.toml").write_text(f"[check]\nmin_lds = {lds - 0.05:.6f}\nmax_brittle_fraction = 0.5\n")

    ok = call_main("check", run, "--junit", tmp_path / "ok.xml", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "min_lds" in ok.stdout and "max_brittle_fraction" in ok.stdout and "pass" in ok.stdout
    assert "all checks passed" in ok.stdout and ET.parse(tmp_path / "ok.xml").getroot().get("failures") == "0"
    assert json.loads((run / "audits" / "check.json").read_text())["passed"] is True

    bad = call_main("check", run, "--support-k", "60", "--junit", tmp_path / "bad.xml", cwd=tmp_path)
    assert bad.returncode == 1 and "FAIL" in bad.stdout and "1 of 2 checks failed" in bad.stdout
    assert ET.parse(tmp_path / "bad.xml").getroot().get("failures") == "1"
    saved = json.loads((run / "audits" / "check.json").read_text())
    assert saved["passed"] is False and saved["thresholds"]["support_k"] == 60

    before = (run / "audits" / "check.json").read_bytes()
    err = call_main("check", run, "--max-brittle-fraction", "7", cwd=tmp_path)
    assert_one_line_error(err)
    assert "between 0 and 1" in err.stderr and (run / "audits" / "check.json").read_bytes() == before


def test_cli_in_a_real_process(tmp_path, rng):
    """The console entry point end to end: exit 1 on a failed check survives typer/click."""
    from tests.conftest import run_cli

    run = make_run(tmp_path / "r")
    lds = write_evaluation(run, rng)["test"]["lds_mean"]
    proc = run_cli("check", str(run), "--min-lds", f"{lds + 0.05:.6f}", cwd=tmp_path)
    assert proc.returncode == 1 and "FAIL" in proc.stdout and "Traceback" not in proc.stderr
