"""Findings (audit/findings.py and each step's ``findings``): per-example, ranked, saved, printed."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from audit import findings
from audit.audits import support
from audit.audits.influence import INFLUENCE, LOW_TIMES, MEDIUM_TIMES
from audit.audits.label_errors import LABEL_ERRORS, LabelErrorsConfig
from audit.audits.leakage import NEAR_COPY, POSSIBLE_COPY
from audit.audits.leakage_audit import LEAKAGE, LeakageConfig, leak_finding, leak_verdicts
from audit.contract import Finding
from audit.data.planting import apply_planting, planted_pairs
from audit.jsonio import write_csv
from tests.cli_inprocess import call_main
from tests.conftest import assert_one_line_error, run_cli
from tests.reports.conftest import copy_run, support_json

RUNNERS = {"subprocess": run_cli, "in-process": call_main}


@pytest.fixture(scope="module")
def found_run(small_digits_run, digits, tmp_path_factory):
    """A copy of the small digits run with every audit's result: leakage, influence and label errors for
    real, brittleness and mislabel records from made-up margin curves (the retraining is tested elsewhere)."""
    run = copy_run(small_digits_run, tmp_path_factory.mktemp("findings") / "run")
    LEAKAGE.run(run, LeakageConfig(k=5, n_reference=1), dataset=digits)
    INFLUENCE.run(run, dataset=digits)
    LABEL_ERRORS.run(run, LabelErrorsConfig(n_replay=2), dataset=digits)
    targets = [int(t) for t in np.flatnonzero(np.isin(digits.y_test, [0, 1, 2, 3]))[:8]]
    support_json(run, digits, "remove", targets, ("datamodels", "representation"), [1, 2, 4, 8, 16], edited=True)
    support_json(run, digits, "relabel", targets[:4], ("datamodels",), [1, 2, 4, 8], edited=True)
    return run


def finding(**kw) -> Finding:
    base = dict(index=0, split="train", issue=findings.LABEL_ERROR_ISSUE, severity="medium", rule="r", score=1.0,
                score_meaning="m", step="s", headline="h", evidence="e", action="a")
    return Finding(**{**base, **kw})


# ----- each step's findings --------------------------------------------------------------------
def test_label_error_findings_are_the_flagged_examples(found_run, digits):
    r = LABEL_ERRORS.load(found_run)
    fs = LABEL_ERRORS.findings(found_run)
    flagged = [f for f in r.findings if f["flagged"]]
    assert [f.index for f in fs] == [f["index"] for f in flagged]
    for f, raw in zip(fs, flagged):
        assert f.split == "train" and f.issue == findings.LABEL_ERROR_ISSUE
        assert f.severity == ("high" if raw["likely"] else "medium")
        assert f.given_name == digits.classes[digits.y_train[f.index]] and f.related == raw["evidence"]
        if raw["predicted_label"] >= 0:
            assert f.predicted_name == digits.classes[raw["predicted_label"]] and f.predicted_name in f.action
        assert str(f.index) in f.headline and f.score == raw["score"]


def test_influence_findings_follow_their_stated_rule(found_run):
    r = INFLUENCE.load(found_run)
    fs = {f.index: f for f in INFLUENCE.findings(found_run)}
    uniform = r.top_k / r.n_train
    for e in r.top:
        times = e.share / uniform
        assert (e.train_index in fs) == (times >= LOW_TIMES)
        if e.train_index in fs:
            f = fs[e.train_index]
            assert f.severity == ("medium" if times >= MEDIUM_TIMES else "low") and f.score == e.share
            assert f"{e.n_targets} of the {r.n_test}" in f.evidence


def test_support_findings_name_the_examples_of_the_smallest_support(found_run):
    from audit import pipeline
    from audit.reference import load_reference

    dm = pipeline.load_datamodels(found_run)
    ref = load_reference(found_run)
    n_train = dm.weights.shape[1]
    _, records = support.read_records(support.BRITTLENESS.path(found_run), "x")
    fs = {f.index: f for f in support.BRITTLENESS.findings(found_run)}
    certified = 0
    for rec in records:
        sizes = {m: o.certified_support for m, o in rec.methods.items() if o.certified and o.certified_support}
        if not sizes:
            assert rec.target not in fs
            continue
        certified += 1
        f = fs[rec.target]
        size = min(sizes.values())
        method = "datamodels" if sizes.get("datamodels") == size else "representation"
        assert f.details["support"] == size and f.details["ranking"] == method and f.score == 1 / size
        if method == "datamodels":
            want = np.argsort(-dm.weights[n_train + rec.target], kind="stable")[:size]
        else:  # brute-force cosine in the reference features
            want = np.argsort(-(ref.train_features(n_train) @ ref.test_features(n_train)[rec.target]),
                              kind="stable")[:size]
        assert f.related == want.tolist()
        share = size / n_train
        assert f.severity == ("high" if share <= support.HIGH_SHARE else "medium" if share <= support.MEDIUM_SHARE
                              else "low")
    assert certified, "the made-up curves certify some supports"
    for f in support.MISLABEL.findings(found_run):
        assert f.issue == findings.LABEL_SENSITIVE_ISSUE and f.severity == "low" and "relabelled" in f.headline


@pytest.mark.parametrize("noise, lists, want", [
    (0.1, ("datamodels", "representation"), "leaked"),  # a planted copy: found, whoever lists it
    (0.1, ("representation",), "leaked"),
    (0.25, ("datamodels", "representation"), None),  # the rule decides from the measured distance
    (0.25, ("datamodels",), None),
    (1.0, ("datamodels", "representation"), ""),  # not a copy
])
def test_leak_verdict_follows_its_rule(digits, tmp_path, noise, lists, want):
    ds = apply_planting(digits, plant=3, plant_seed=1, plant_noise=noise)
    pairs = planted_pairs(ds)
    rows = [{"test_index": int(t), "train_index": int(j), "rank": 3, "weight": 0.5, "method": m}
            for t, j in pairs for m in lists]
    other = int(np.setdiff1d(np.arange(ds.n_test), pairs[:, 0])[0])
    rows.append({"test_index": other, "train_index": 0, "rank": 1, "weight": 0.9, "method": "datamodels"})
    write_csv(tmp_path / "audits" / "leakage_candidates.csv", rows, ["test_index", "train_index", "rank", "weight",
                                                                     "method"])
    verdicts = {v["test_index"]: v for v in leak_verdicts(tmp_path, ds)}
    assert verdicts[other]["verdict"] == "" and verdicts[other]["full_data_prediction"] is None  # no reference models
    for t, j in pairs:
        v = verdicts[int(t)]
        assert v["train_index"] == j
        rule = ("leaked" if v["distance"] <= NEAR_COPY else
                "possible" if v["distance"] <= POSSIBLE_COPY and len(lists) == 2 else "")
        assert v["verdict"] == rule and (want is None or v["verdict"] == want)
        if v["verdict"]:
            f = leak_finding(v)
            assert f.split == "test" and f.index == t and f.related == [j]
            assert f.severity == ("high" if v["verdict"] == "leaked" else "medium")
            assert f.details["methods"] == list(lists) and f.given_name == ds.classes[ds.y_test[t]]


def test_the_leakage_step_saves_its_verdicts_and_reads_them_back(found_run):
    verdicts = json.loads(LEAKAGE.path(found_run, "verdicts").read_text())
    assert {v["test_index"] for v in verdicts} <= set(range(500)) and len(verdicts) > 0
    want = [v["test_index"] for v in verdicts if v["verdict"]]
    assert [f.index for f in LEAKAGE.findings(found_run)] == want


# ----- collecting, ranking, cross-references ------------------------------------------------------
def test_cross_references_raise_findings_that_support_each_other():
    error = finding(index=5, severity="high", predicted_label=2, predicted_name="two")
    influential = finding(index=5, issue=findings.INFLUENCE_ISSUE, severity="medium", score=0.1)
    brittle = finding(index=9, split="test", issue=findings.BRITTLE_ISSUE, severity="low", related=[5, 6, 7])
    diluted = finding(index=10, split="test", issue=findings.BRITTLE_ISSUE, severity="low", related=[5, 6, 7, 8])
    out = {(f.issue, f.index): f for f in findings.cross_reference([error, influential, brittle, diluted])}
    inf = out[(findings.INFLUENCE_ISSUE, 5)]
    assert inf.severity == "high" and inf.predicted_name == "two"
    assert inf.details["also"] == [findings.LABEL_ERROR_ISSUE]
    assert out[(findings.BRITTLE_ISSUE, 9)].severity == "medium"  # a third of its examples are label errors
    assert out[(findings.BRITTLE_ISSUE, 9)].details["likely_label_errors"] == [5]
    assert out[(findings.BRITTLE_ISSUE, 10)].severity == "low"  # one of four: not raised
    assert out[(findings.LABEL_ERROR_ISSUE, 5)].severity == "high"


def test_ranking_is_severity_then_issue_then_score():
    items = [finding(index=1, severity="low", score=9.0), finding(index=2, issue=findings.LEAK_ISSUE, split="test"),
             finding(index=3, score=2.0), finding(index=4, score=3.0), finding(index=5, severity="high", score=0.1)]
    assert [f.index for f in sorted(items, key=findings.rank_key)] == [5, 2, 4, 3, 1]


def test_refresh_saves_json_and_csv_and_counts_every_issue(found_run):
    found = findings.refresh(found_run)
    saved = json.loads((found_run / findings.FINDINGS_JSON).read_text())
    assert [r["rank"] for r in saved["findings"]] == list(range(1, len(found.items) + 1))
    assert [Finding.from_json({k: v for k, v in r.items() if k != "rank"}) for r in saved["findings"]] \
        == list(found.items)
    assert list(saved["counts"]) == list(findings.ISSUES)  # every audit ran, so every issue was looked for
    with open(found_run / findings.FINDINGS_CSV, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == findings.CSV_COLUMNS and len(rows) == len(found.items)
    assert [int(r["index"]) for r in rows] == [f.index for f in found.items]
    lines = findings.summary_lines(found)
    assert len(lines) == len(findings.ISSUES)
    for issue, line in zip(findings.ISSUES, lines):
        n = len(found.of(issue))
        assert line.startswith(f"{issue}: {n} (" if n else f"{issue}: none")


def test_a_run_without_audits_says_so(small_digits_run):
    found = findings.collect(small_digits_run)
    assert not found.items and not found.counts()
    assert findings.summary_lines(found)[0].startswith("no audit results yet")


def test_formula_text_in_findings_csv_is_neutralised(tmp_path):
    evil = finding(given_name='=HYPERLINK("http://evil","x")', evidence="+1+1", action="@SUM(A1)")
    findings.write(tmp_path, findings.Findings((evil,)))
    with open(tmp_path / findings.FINDINGS_CSV, newline="", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    assert row["given_label"] == "'" + evil.given_name and row["evidence"] == "'+1+1"
    assert row["suggested_action"] == "'@SUM(A1)"


def test_an_unreadable_result_costs_only_its_own_findings(found_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(found_run, run)
    (run / "audits" / "brittleness.json").write_text("{not json")
    found = findings.collect(run)
    assert "brittleness" in found.notes and not found.of(findings.BRITTLE_ISSUE)
    assert found.of(findings.LABEL_SENSITIVE_ISSUE)
    assert any(line.startswith("brittleness: findings not read") for line in findings.summary_lines(found))


@pytest.mark.parametrize("text", ["", "[]\n", "test_index,train_index,rank,weight,method\n"])
def test_an_emptied_candidates_table_is_unreadable_not_clean(found_run, tmp_path, text):
    """Every leakage audit lists neighbours for every test image: a table without them lost its leaks."""
    run = tmp_path / "run"
    shutil.copytree(found_run, run)
    (run / "audits" / "leakage_candidates.csv").write_text(text)
    found = findings.collect(run)
    assert "lists no candidates" in found.notes["leakage"] and "audit leakage" in found.notes["leakage"]


def test_an_unreadable_result_keeps_the_saved_findings(found_run, tmp_path):
    """Partial findings never replace saved ones that may hold the unreadable audit's; with none saved they are
    written (all there is)."""
    run = tmp_path / "run"
    shutil.copytree(found_run, run)
    findings.refresh(run)
    saved = {name: (run / name).read_bytes() for name in (findings.FINDINGS_JSON, findings.FINDINGS_CSV)}
    (run / "audits" / "label_errors.json").write_text("{not json")
    found = findings.refresh(run)
    assert found.kept and not found.of(findings.LABEL_ERROR_ISSUE)
    assert {name: (run / name).read_bytes() for name in saved} == saved
    assert any("kept as they were" in line for line in findings.summary_lines(found))
    error = str(findings.unread_error(found))
    assert error.startswith("the label-errors findings could not be read") and "kept as they were" in error
    assert findings.unread_error(found, {findings.BRITTLE_ISSUE}) is None  # not an issue it looks for
    for name in saved:
        (run / name).unlink()
    fresh = findings.refresh(run)
    assert not fresh.kept and (run / findings.FINDINGS_CSV).is_file()
    assert "kept" not in str(findings.unread_error(fresh))  # written now (all there was): nothing was kept


# ----- the commands ------------------------------------------------------------------------------
@pytest.mark.parametrize("runner", RUNNERS)
def test_audit_findings_prints_the_block_and_the_table(found_run, runner):
    proc = RUNNERS[runner]("findings", found_run, "--top", "3", "--issue", "likely label error")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.index("what we found") < out.index("likely label error: ") < out.index("findings (likely label error)")
    top = findings.collect(found_run).of(findings.LABEL_ERROR_ISSUE)[0]
    assert f"train {top.index}" in out


@pytest.mark.parametrize("runner", RUNNERS)
def test_audit_findings_bad_input_is_one_line(found_run, tmp_path, runner):
    assert_one_line_error(RUNNERS[runner]("findings", found_run, "--issue", "typo"))
    assert_one_line_error(RUNNERS[runner]("findings", tmp_path))  # a folder that is no run


@pytest.mark.parametrize("runner", RUNNERS)
def test_audit_findings_and_export_stop_on_an_unreadable_result(found_run, tmp_path, runner):
    """`audit findings` and `audit export` say which audit's result could not be read (one line, exit 2) instead of
    listing or exporting the rest as if complete, and leave the saved findings as they were."""
    run = tmp_path / "run"
    shutil.copytree(found_run, run)
    assert call_main("findings", run).returncode == 0
    saved = (run / findings.FINDINGS_CSV).read_bytes()
    (run / "audits" / "label_errors.json").write_text("{not json")
    for args in (("findings", run), ("export", run, "--to", "labelstudio", "-o", tmp_path / "out")):
        proc = RUNNERS[runner](*args)
        assert_one_line_error(proc)
        assert "label-errors findings could not be read" in proc.stderr and "audit label-errors" in proc.stderr
    assert (run / findings.FINDINGS_CSV).read_bytes() == saved and not (tmp_path / "out").exists()
    assert RUNNERS[runner]("findings", run, "--issue", "influential training example").returncode == 0
    (run / "run.json").write_text("{")
    proc = RUNNERS[runner]("findings", run)
    assert_one_line_error(proc)
    assert "run.json is unreadable" in proc.stderr


def test_an_audit_command_prints_what_we_found_before_its_tables(found_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(found_run, run)
    (run / findings.FINDINGS_CSV).unlink()
    proc = call_main("influence", run)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.index("what we found") < proc.stdout.index("influential training example: ") \
        < proc.stdout.index("train index")  # the influence table's first column
    assert (run / findings.FINDINGS_CSV).is_file()
