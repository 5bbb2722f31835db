"""The counterfactual audit: removed sets by heuristic, predicted = sum of weights, retraining reused, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from audit import checks, pipeline
from audit.audits import counterfactual as cf
from audit.audits import support
from audit.audits.counterfactual import COUNTERFACTUAL, CounterfactualConfig, removal_lists, run_counterfactual
from audit.errors import AuditError
from audit.reference import Reference
from tests.cli_inprocess import call_main
from tests.conftest import assert_one_line_error, run_cli

TINY = dict(n=3, T=1, k_grid=(2, 4))


# ----- pure pieces ---------------------------------------------------------------------------
def test_default_grid_is_six_sizes_of_the_support_grid():
    assert cf.default_k_grid(1297) == [2, 4, 8, 16, 32, 64]
    assert cf.default_k_grid(50_000) == [10, 20, 40, 80, 160, 320]
    assert cf.default_k_grid(40) == [2]


def test_heuristics_choose_the_right_sets():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 30)).astype(np.float32)
    y_train = np.repeat(np.arange(3), 10)
    targets, y_t = np.array([5, 9, 11, 2]), np.array([0, 1, 2, 1])
    top = removal_lists("top", w, None, y_train, targets, y_t, 5, 0)
    bottom = removal_lists("bottom", w, None, y_train, targets, y_t, 5, 0)
    for t in range(4):
        assert set(top[t]) == set(np.argsort(w[t])[-5:])  # the 5 largest weights
        assert set(bottom[t]) == set(np.argsort(w[t])[:5])  # the 5 most negative
        assert np.all(np.diff(w[t, top[t]]) <= 0) and np.all(np.diff(w[t, bottom[t]]) >= 0)
    same = removal_lists("random_same_class", w, None, y_train, targets, y_t, 5, 0)
    assert all((y_train[same[t]] == y_t[t]).all() and len(set(same[t])) == 5 for t in range(4))
    # the brittleness audit's random ranking, same draw (so its retrained models are reused)
    assert (same == support._ranking("random", w, None, _Data(y_train, y_t), np.arange(4), 5, 0)).all()
    rand = removal_lists("random", w, None, y_train, targets, y_t, 5, 0)
    assert all(len(set(r)) == 5 and r.min() >= 0 and r.max() < 30 for r in rand)
    assert not all((y_train[rand[t]] == y_t[t]).all() for t in range(4))  # not restricted to the class
    # one draw per (seed, target), whichever other targets are sampled
    assert (removal_lists("random", w[1:2], None, y_train, targets[1:2], y_t[1:2], 5, 0)[0] == rand[1]).all()
    assert not (removal_lists("random", w, None, y_train, targets, y_t, 5, 1) == rand).all()
    feats = np.eye(34, dtype=np.float32)
    feats[30 + 1] = feats[7] + 0.1 * feats[8]  # test 1 looks like train 7, then train 8
    ref = Reference(features=feats, mean_logits=np.zeros((34, 3), np.float32), n_models=1)
    near = removal_lists("representation", w, ref, y_train, np.array([1]), y_t[:1], 2, 0)
    assert near.tolist() == [[7, 8]]
    with pytest.raises(AuditError, match="reference"):
        removal_lists("representation", w, None, y_train, targets, y_t, 5, 0)
    with pytest.raises(AuditError, match="unknown heuristic"):
        removal_lists("nearest", w, None, y_train, targets, y_t, 5, 0)


class _Data:
    def __init__(self, y_train, y_test):
        self.y_train, self.y_test, self.n_train = y_train, y_test, len(y_train)


def test_predicted_effect_sums_the_weights_of_the_set():
    w = np.array([[3.0, -1.0, 2.0, 0.5], [1.0, 1.0, -4.0, 0.0]])
    lists = np.array([[0, 2, 3, -1], [2, 1, -1, -1]])
    assert np.allclose(cf.predicted_effects(w, lists, [1, 2, 4]), [[3.0, 5.0, 5.5], [-4.0, -3.0, -3.0]])


def test_correlation_needs_three_varying_points():
    c = cf.correlation(np.array([1.0, 2.0, 3.0, np.nan]), np.array([2.0, 4.0, 7.0, 1.0]))
    assert c.n_points == 3 and c.spearman == pytest.approx(1.0) and 0.9 < c.pearson < 1.0
    assert cf.correlation(np.ones(4), np.arange(4.0)).spearman is None
    assert cf.correlation(np.arange(2.0), np.arange(2.0)).pearson is None


# ----- the audit on a small fitted run ---------------------------------------------------------
def _counting(monkeypatch):
    from audit.training.mlp import MLPTrainer

    real = MLPTrainer.train_block
    calls = {"models": 0}

    def counting(self, dataset, masks, seeds, labels=None, progress=None):
        calls["models"] += len(seeds)
        return real(self, dataset, masks, seeds, labels)

    monkeypatch.setattr(MLPTrainer, "train_block", counting)
    return calls


def test_audit_predicts_sums_of_weights_and_resumes(audit_run, digits, monkeypatch):
    calls = _counting(monkeypatch)
    config = CounterfactualConfig(**TINY, heuristics=("top", "bottom", "random_same_class", "representation"))
    r = run_counterfactual(audit_run, config, dataset=digits)
    # no reference features in this run: representation is left out, and says why
    assert r.heuristics == ["top", "bottom", "random_same_class"] and "reference" in r.skipped["representation"]
    store, dm, _ = pipeline.open_fitted(audit_run, digits)
    req = cf.requests(store, dm, digits, config)
    sets = {tuple(sorted(req.lists[t, h, :k])) for t in range(3) for h in range(3) for k in (2, 4)}
    # T full-data models + one per distinct removed set (targets x heuristics x k, fewer where sets coincide)
    assert calls["models"] == r.models_trained_now == 1 + len(sets) and len(sets) > 6
    assert r.n_targets == 3 and r.k_grid == [2, 4] and len(r.points) == 3 * 3 * 2
    targets = support.sample_targets(digits.y_test, 3, 0)
    n_train = digits.n_train
    for p in r.points:
        w = np.asarray(dm.weights[n_train + p.target], dtype=np.float64)
        if p.heuristic == "top":
            assert p.predicted == pytest.approx(np.sort(w)[::-1][:p.k].sum(), abs=1e-5)
        elif p.heuristic == "bottom":
            assert p.predicted == pytest.approx(np.sort(w)[:p.k].sum(), abs=1e-5)
        else:
            same = removal_lists("random_same_class", dm.weights[n_train + targets], None, digits.y_train, targets,
                                 digits.y_test[targets], 4, 0)[list(targets).index(p.target)]
            assert p.predicted == pytest.approx(w[same[:p.k]].sum(), abs=1e-5)
        assert p.actual == pytest.approx(p.full_margin - p.margin_without, abs=1e-5) and p.n_models == 1
    assert r.overall.n_points == 18 and -1 <= r.overall.spearman <= 1
    saved = json.loads((audit_run / "audits" / "counterfactual.json").read_text())
    assert COUNTERFACTUAL.load(audit_run).overall == r.overall and saved["heuristics"] == r.heuristics
    csv = (audit_run / "audits" / "counterfactual.csv").read_text().splitlines()
    assert len(csv) == 1 + 18 and csv[0].startswith("target,label,label_name,heuristic,k,size,predicted,actual")
    # again: nothing trained, the same points; a new heuristic trains only its own sets
    calls["models"] = 0
    again = run_counterfactual(audit_run, config, dataset=digits)
    assert calls["models"] == again.models_trained_now == 0 and again.points == r.points
    more = run_counterfactual(audit_run, CounterfactualConfig(**TINY, heuristics=("top", "random")), dataset=digits)
    rand = removal_lists("random", req.weights, None, digits.y_train, req.targets, digits.y_test[req.targets], 4, 0)
    assert calls["models"] == more.models_trained_now == len({tuple(sorted(r_[:k])) for r_ in rand for k in (2, 4)})
    assert [p for p in more.points if p.heuristic == "top"] == [p for p in r.points if p.heuristic == "top"]


def test_killed_audit_resumes_without_retraining_finished_blocks(audit_run, digits, monkeypatch):
    from audit.training.mlp import MLPTrainer

    real = MLPTrainer.train_block
    calls = {"models": 0, "fail_after": 4}

    def counting(self, dataset, masks, seeds, labels=None, progress=None):
        if calls["fail_after"] is not None and calls["models"] >= calls["fail_after"]:
            raise KeyboardInterrupt("killed")
        calls["models"] += len(seeds)
        return real(self, dataset, masks, seeds, labels)

    monkeypatch.setattr(MLPTrainer, "train_block", counting)
    config = CounterfactualConfig(**TINY, heuristics=("top", "bottom"))
    with pytest.raises(KeyboardInterrupt):
        run_counterfactual(audit_run, config, dataset=digits, block_size=4)
    assert calls["models"] == 4 and not (audit_run / "audits").exists()
    calls.update(models=0, fail_after=None)
    r = run_counterfactual(audit_run, config, dataset=digits, block_size=4)
    assert calls["models"] == r.models_trained_now > 0 and r.models_reused >= 4
    store, dm, _ = pipeline.open_fitted(audit_run, digits)
    req = cf.requests(store, dm, digits, config)
    sets = {tuple(sorted(req.lists[t, h, :k])) for t in range(3) for h in range(2) for k in (2, 4)}
    assert r.models_trained_now + 4 == 1 + len(sets)  # every model trained once over the two calls


def test_brittleness_models_are_reused(audit_run, digits, monkeypatch):
    """The removed sets the brittleness audit already retrained (same targets, seed, T) are not trained again."""
    calls = _counting(monkeypatch)
    support.run_brittleness(audit_run, n=3, T=1, k_grid=[2, 4], methods=["datamodels", "random"], dataset=digits)
    assert COUNTERFACTUAL.cost(audit_run, CounterfactualConfig(**TINY, heuristics=("top", "random_same_class"))) \
        .models == 0
    calls["models"] = 0
    r = run_counterfactual(audit_run, CounterfactualConfig(**TINY, heuristics=("top", "random_same_class")),
                           dataset=digits)
    assert calls["models"] == r.models_trained_now == 0 and r.models_reused == r.n_rows
    b = json.loads((audit_run / "audits" / "brittleness.json").read_text())["targets"]
    for rec in b:
        for p in (p for p in r.points if p.target == rec["target"]):
            method = "datamodels" if p.heuristic == "top" else "random"
            assert p.margin_without == pytest.approx(rec["methods"][method]["curve"][str(p.k)], abs=1e-5)
            assert p.full_margin == pytest.approx(rec["full_margin"], abs=1e-5)


BAD = (["--n", "0"], ["--k-grid", "2,5000"], ["--heuristics", "nearest"], ["--T", "0"])


@pytest.mark.parametrize("args", BAD)
def test_bad_input_is_one_error_line(audit_run, args):
    assert_one_line_error(call_main("counterfactual", str(audit_run), *args))
    assert not (audit_run / "audits").exists() and not (audit_run / "retrain").exists()


def test_bad_input_from_the_console_script(audit_run, tmp_path):
    assert_one_line_error(run_cli("counterfactual", str(audit_run), "--heuristics", "nearest"))
    unfitted = tmp_path / "unfitted"
    shutil.copytree(audit_run, unfitted, ignore=shutil.ignore_patterns("datamodels.npz"))
    proc = run_cli("counterfactual", str(unfitted), "--n", "2")
    assert_one_line_error(proc)
    assert "audit fit" in proc.stderr
    assert_one_line_error(call_main("counterfactual", str(unfitted), "--n", "2"))
    assert not (audit_run / "audits").exists() and not (unfitted / "audits").exists()


def test_cli_prints_the_table_and_the_check_gates(audit_run):
    proc = call_main("counterfactual", str(audit_run), "--n", "3", "--T", "1", "--k-grid", "2,4", "--heuristics",
                     "top,bottom")
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "Spearman" in out and "top" in out and "bottom" in out, proc.stdout
    assert "counterfactual.json" in proc.stdout.replace("\n", "")
    value = COUNTERFACTUAL.load(audit_run).overall.spearman
    assert value is not None
    passed = checks.run_checks(audit_run, {"min_counterfactual_spearman": max(-1.0, value - 0.01)}, save=False)
    failed = checks.run_checks(audit_run, {"min_counterfactual_spearman": min(1.0, value + 0.01)}, save=False)
    assert passed["passed"] and not failed["passed"]
    check = next(c for c in failed["checks"] if c["key"] == "min_counterfactual_spearman")
    assert check["value"] == pytest.approx(value) and check["status"] == "fail"
    assert call_main("check", str(audit_run), "--min-counterfactual-spearman", str(min(1.0, value + 0.01))) \
        .returncode == 1
    assert_one_line_error(call_main("check", str(audit_run), "--min-counterfactual-spearman", "1.5"))
    # current until reference models appear (the representation heuristic's sets come from their features)
    config = CounterfactualConfig(n=3, T=1, k_grid=(2, 4), heuristics=("top", "bottom"))
    assert COUNTERFACTUAL.is_current(audit_run, config)
    assert not COUNTERFACTUAL.is_current(audit_run, CounterfactualConfig(n=3, T=1, k_grid=(2, 4)))
    from audit.jsonio import save_npz

    n = 1797  # digits: train and test targets
    save_npz(audit_run / "reference.npz", features=np.ones((n, 4), np.float32),
             mean_logits=np.zeros((n, 10), np.float32),
             n_models=np.array(1))
    assert not COUNTERFACTUAL.is_current(audit_run, config)


def test_counterfactual_on_ray_equals_local(audit_run, digits, tmp_path, local_ray):
    """The retraining as Ray tasks (local instance, CPU trainer) gives the local points."""
    ray_run = tmp_path / "ray_run"
    shutil.copytree(audit_run, ray_run)
    config = dict(n=2, T=1, k_grid=(4,), heuristics=("top", "bottom"))
    local = run_counterfactual(audit_run, CounterfactualConfig(**config), dataset=digits)
    remote = run_counterfactual(ray_run, CounterfactualConfig(**config, engine="ray"), dataset=digits)
    assert remote.models_trained_now == local.models_trained_now > 0
    for a, b in zip(local.points, remote.points):
        assert (a.target, a.heuristic, a.k) == (b.target, b.heuristic, b.k) and a.predicted == b.predicted
        assert b.actual == pytest.approx(a.actual, abs=1e-3)
