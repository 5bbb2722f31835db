"""`audit run`: every step in order, a second run skips what is current, bad options are one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from audit import pipeline
from audit.errors import AuditError
from audit.workflow import RunOptions, check_score_matrices, evaluation_is_current, fit_is_current, run_pipeline
from tests.conftest import FAST_MLP, assert_one_line_error, run_cli


def test_fit_is_current_follows_the_finished_models(small_digits_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_digits_run, run)
    assert fit_is_current(run)
    fit = json.loads((run / "fit.json").read_text())
    fit["n_models"] -= 1  # fitted on fewer models than the run now has
    (run / "fit.json").write_text(json.dumps(fit))
    assert not fit_is_current(run)
    (run / "datamodels.npz").unlink()
    assert not fit_is_current(run)


def test_evaluation_is_current_needs_the_same_datamodels_and_subsets(small_digits_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_digits_run, run)
    assert not evaluation_is_current(run, 10)  # never evaluated
    pipeline.evaluate(run, n_subsets=10)
    assert evaluation_is_current(run, 10)
    assert not evaluation_is_current(run, 20)
    pipeline.fit(run, n_lambdas=8)  # newer datamodels: the evaluation is stale
    assert not evaluation_is_current(run, 10)


@pytest.mark.parametrize("bad, match", [({"alpha": 1.0}, "alpha"), ({"n_models": 5}, "n-models"),
                                        ({"n_subsets": 2}, "eval-subsets"), ({"audits": ("typo",)}, "typo")])
def test_bad_options_stop_before_anything_runs(tmp_path, bad, match):
    with pytest.raises(AuditError, match=match):
        run_pipeline("digits", tmp_path / "run", RunOptions.from_values(**bad))
    assert not (tmp_path / "run").exists()


def test_run_does_every_step_then_skips_what_is_current(tmp_path):
    run = tmp_path / "run"
    args = ("run", "digits", "--run", str(run), "-m", "60", "--eval-subsets", "6", "--audits", "leakage",
            *[f"-o{k}={v}" for k, v in FAST_MLP.items()])
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    summary = json.loads((run / "run_summary.json").read_text())
    assert list(summary["steps"]) == ["train", "fit", "evaluate", "leakage", "report"]
    assert summary["steps"]["train"]["trained"] == 60 and summary["steps"]["fit"]["n_models"] == 60
    assert (run / "report.html").stat().st_size > 0 and "report.html" in first.stdout.replace("\n", "")
    assert "what we found" in first.stdout and "leaked test image: " in first.stdout
    out = " ".join(first.stdout.split())  # an audit left out by default says what it would cost and how to run it
    assert "counterfactual: up to" in out and "not part of `audit run` by default" in out
    assert "--audits leakage,counterfactual" in out
    assert (run / "findings.json").is_file() and (run / "findings.csv").is_file()
    weights = np.load(run / "datamodels.npz")["weights"]

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    steps = json.loads((run / "run_summary.json").read_text())["steps"]
    assert steps["train"]["trained_now"] == 0 and steps["fit"]["skipped"] and steps["evaluate"]["skipped"]
    np.testing.assert_array_equal(np.load(run / "datamodels.npz")["weights"], weights)


def test_the_cost_line_names_the_option_that_skips_the_audit():
    from audit.audits.support import BRITTLENESS
    from audit.workflow import skip_hint

    assert skip_hint(BRITTLENESS, RunOptions(audits=("brittleness", "leakage", "influence"))) == \
        "skip it with --audits leakage,influence"
    assert skip_hint(BRITTLENESS, RunOptions(audits=("brittleness",))) == "skip it with --audits ''"


def test_counterfactual_runs_only_when_named():
    from audit.steps import REGISTRY
    from audit.workflow import left_out

    assert "counterfactual" in REGISTRY.audits() and "counterfactual" not in REGISTRY.default_audits()
    assert RunOptions().audits == RunOptions.from_values().audits == REGISTRY.default_audits()
    assert [s.name for s in left_out(RunOptions())] == ["counterfactual"]
    assert left_out(RunOptions(audits=("counterfactual",))) == []


@pytest.mark.parametrize("values, match", [
    ({"methods": ("datamodels", "trak")}, "unknown method trak: .*this run has or its earlier steps write influence"),
    ({"score_methods": ("trak",)}, "unknown method trak"),
    ({"methods": ("datamodels", "tracin"), "audits": ("brittleness",)}, "unknown method tracin: .*none yet"),
    ({"methods": ("datamodels", "tracin"), "gradient_methods": ("influence",)}, "unknown method tracin")])
def test_a_score_matrix_no_step_writes_stops_the_run_before_it_trains(tmp_path, values, match):
    with pytest.raises(AuditError, match=match):
        run_pipeline("digits", tmp_path / "run", RunOptions.from_values(**values))
    assert not (tmp_path / "run").exists()


def test_score_matrices_the_run_has_or_its_gradients_write_are_accepted(tmp_path):
    from audit import scores

    run = tmp_path / "run"
    check_score_matrices(run, RunOptions.from_values(methods=("datamodels", "tracin", "influence")))  # gradients: first
    with pytest.raises(AuditError, match="unknown method mine"):
        check_score_matrices(run, RunOptions.from_values(score_methods=("mine",)))
    scores.save_matrix(run, "mine", np.zeros((5, 3), np.float32), n_train=5, n_test=3, source="test", how="import")
    check_score_matrices(run, RunOptions.from_values(score_methods=("mine",), audits=("leakage",)))


def test_run_refuses_a_bad_method_before_its_heading(tmp_path):
    proc = run_cli("run", "digits", "--run", str(tmp_path / "r"), "--methods", "datamodels,trak")
    assert_one_line_error(proc)
    assert "unknown method trak" in proc.stderr and proc.stdout.strip() == ""
    assert not (tmp_path / "r").exists()


def test_run_rejects_bad_options_in_one_line(tmp_path):
    assert_one_line_error(run_cli("run", "digits", "--run", str(tmp_path / "r"), "--alpha", "1.5"))
    assert not (tmp_path / "r").exists()
