"""The label-error finding (audit.audits.label_errors) and label planting (audit.data.planting)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from audit.audits import label_errors as le
from audit.data import load_dataset
from audit.data.planting import (PLANTED_LABEL_META, apply_label_planting, flip_labels, label_plant_options,
                                 planted_label_errors)
from audit.errors import AuditError
from audit.store import RunStore
from tests.conftest import FAST_MLP

PLANT = label_plant_options(0.05, seed=3)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, torch_one_thread):
    """A 400-model digits run (fast MLP) with 5% of the training labels flipped: (store, dataset)."""
    from audit import pipeline

    ds = load_dataset("digits", **PLANT)
    run_dir = tmp_path_factory.mktemp("label_errors") / "run"
    pipeline.train("digits", run_dir, n_models=400, block_size=200, trainer_options=FAST_MLP, dataset_options=PLANT,
                   dataset=ds)
    return RunStore.open(run_dir, writable=False), ds


# ----- planting -----------------------------------------------------------------------
def test_label_planting_is_seeded_and_records_the_truth(digits):
    a = load_dataset("digits", **PLANT)
    b = load_dataset("digits", **PLANT)
    c = load_dataset("digits", **label_plant_options(0.05, seed=4))
    idx, original = planted_label_errors(a)
    assert len(idx) == round(0.05 * digits.n_train)
    assert np.array_equal(original, digits.y_train[idx]) and (a.y_train[idx] != original).all()
    untouched = np.setdiff1d(np.arange(digits.n_train), idx)
    assert np.array_equal(a.y_train[untouched], digits.y_train[untouched])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint() != digits.fingerprint()
    assert not np.array_equal(planted_label_errors(c)[0], idx)
    assert planted_label_errors(digits) is None
    assert (a.meta[PLANTED_LABEL_META] >= 0).sum() == len(idx)
    new_classes = a.y_train[idx]
    assert len(np.unique(new_classes)) > 3  # flips go to every other class, not one fixed offset


def test_label_planting_spares_planted_copies_and_plants_once(digits):
    ds = load_dataset("digits", plant=20, plant_seed=1, plant_labels=0.5)
    idx, _ = planted_label_errors(ds)
    assert idx.max() < digits.n_train and len(idx) == round(0.5 * digits.n_train)
    assert np.array_equal(ds.y_train[digits.n_train:], ds.y_test[ds.meta["planted_test_of_train"][digits.n_train:]])
    with pytest.raises(AuditError, match="once"):
        apply_label_planting(ds, plant_labels=0.1)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, "many"])
def test_bad_label_fraction_is_refused(fraction):
    with pytest.raises(AuditError, match="plant_labels"):
        flip_labels(np.zeros(10, np.int64), 3, fraction)


# ----- the finding ----------------------------------------------------------------------
def test_planted_flips_rank_first_and_their_class_is_recovered(planted):
    store, ds = planted
    res = le.find_label_errors(store, ds, None, n_replay=16)
    truth, original = planted_label_errors(ds)
    assert res.planted["precision_at_k"] >= 0.85 and res.planted["flagged_recall"] >= 0.95
    top = [f.index for f in res.findings[:20]]
    assert len(set(top) & set(truth.tolist())) >= 18
    assert [f.rank for f in res.findings[:20]] == list(range(1, 21))
    recovered = {f.index: f.predicted_label for f in res.findings if f.flagged}
    hits = [recovered[j] == o for j, o in zip(truth.tolist(), original.tolist()) if j in recovered]
    assert len(hits) >= 0.95 * len(truth) and np.mean(hits) >= 0.85
    for f in res.findings:
        assert f.flagged == (f.mean_margin < 0)
        assert (f.predicted_label == f.given_label) == (not f.flagged)
        assert f.likely == (f.flagged and f.test_share <= res.likely_test_share) and 0 <= f.test_share <= 1
    # the test-calibrated tier is stricter than the sign rule, and more precise on planted flips
    likely = res.planted["likely"]
    assert res.n_likely == likely["n_flagged"] < res.n_flagged
    assert likely["flagged_precision"] > res.planted["flagged_precision"] and likely["flagged_recall"] >= 0.8
    assert res.n_flagged == len(res.flagged()) and res.n_replay == 16
    # the replayed models are the run's own: same subset and seed give the stored margins again
    assert res.replay_max_margin_diff < 1e-3


def test_streaming_equals_a_dense_computation(planted):
    store, _ = planted
    rows = store.finished_rows()[::3]
    masks = np.asarray(store.masks[rows])
    m = np.asarray(store.margins[rows, :store.config.n_train], dtype=np.float64)
    out = np.where(~masks, m, np.nan)
    s = le.oos_margin_stats(store, rows=rows, block_rows=7)
    assert s.n_models == len(rows)
    assert np.array_equal(s.n_oos, (~masks).sum(0)) and np.array_equal(s.n_in, masks.sum(0))
    np.testing.assert_allclose(s.mean, np.nanmean(out, 0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(s.std, np.nanstd(out, 0, ddof=1), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(s.frac_wrong, np.nansum(out < 0, 0) / (~masks).sum(0))
    np.testing.assert_allclose(s.mean_in, np.nanmean(np.where(masks, m, np.nan), 0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(s.test_mean, np.asarray(store.margins[rows, store.config.n_train:], np.float64).mean(0),
                               rtol=1e-9, atol=1e-9)
    share = le.test_share(s)
    j = int(np.nanargmin(s.mean))
    assert share[j] == (s.test_mean <= s.mean[j]).mean()
    whole = le.oos_margin_stats(store, rows=rows)  # one block
    np.testing.assert_allclose(whole.mean, s.mean, rtol=1e-12)


def test_rules_rank_differently_but_consistently(planted):
    store, _ = planted
    s = le.oos_margin_stats(store)
    for rule in le.RULES:
        scores = le.label_error_scores(s, rule, min_models=20)
        order = le.rank_examples(scores, s)
        assert sorted(order.tolist()) == list(range(s.n_train))
        finite = scores[order][np.isfinite(scores[order])]
        assert (np.diff(finite) <= 0).all()
    few = le.label_error_scores(s, "margin", min_models=10**6)
    assert np.isnan(few).all() and not le.flag_mask(s, 10**6).any()
    with pytest.raises(AuditError, match="rule"):
        le.label_error_scores(s, "vote")


def test_json_round_trip(planted, tmp_path):
    store, ds = planted
    res = le.find_label_errors(store, ds, None, n_replay=8, limit=30, rule="zscore")
    path = tmp_path / "label_errors.json"
    res.save(path)
    assert json.loads(path.read_text())["findings"][0]["index"] == res.findings[0].index
    back = le.LabelErrors.load(path)
    assert back == res
    assert len(res.findings) >= max(30, res.n_flagged)  # the top 30 ranks and every flagged example
    path.write_text("{")
    with pytest.raises(AuditError, match="unreadable"):
        le.LabelErrors.load(path)


def test_wrong_dataset_is_refused(planted, digits):
    store, _ = planted
    with pytest.raises(AuditError, match="does not match"):
        le.find_label_errors(store, digits, None, n_replay=0)


def test_voting_against_takes_the_most_negative_weights_but_not_itself():
    w = np.array([0.5, -0.2, -3.0, 0.0, -0.7, -9.0, 0.1])
    idx, wt = le.voting_against(w, j=5, k=3)
    assert idx.tolist() == [2, 4, 1] and wt.tolist() == [-3.0, -0.7, -0.2]
    idx, _ = le.voting_against(w, j=0, k=10)  # only negative weights vote against
    assert idx.tolist() == [5, 2, 4, 1]


def test_run_label_errors_on_a_fitted_run_gives_datamodel_evidence(audit_run):
    from audit.pipeline import load_datamodels

    res = le.run_label_errors(audit_run, n_replay=4, limit=10)
    assert (audit_run / "audits" / le.LABEL_ERRORS_JSON).exists()
    dm = load_datamodels(audit_run)
    with_evidence = [f for f in res.findings if f.evidence]
    assert with_evidence, "the top findings should have negative datamodel weights"
    for f in with_evidence:
        row = dm.weights[f.index].astype(np.float64)
        row[f.index] = 0.0
        want = np.argsort(row, kind="stable")[:len(f.evidence)]
        assert sorted(f.evidence) == sorted(want.tolist()) and f.index not in f.evidence
        assert all(w < 0 for w in f.evidence_weights) and list(f.evidence_weights) == sorted(f.evidence_weights)
    assert res.planted is None and res.n_models == 400


def test_the_label_error_step_saves_its_table_and_gates(audit_run, digits):
    """As a registered step: typed result, CSV table, summary, and a check metric, on a fitted run."""
    from audit import checks
    from audit.audits.label_errors import LABEL_ERRORS, LabelErrorsConfig
    from audit.steps import REGISTRY

    assert "label-errors" in REGISTRY.audits()
    r = LABEL_ERRORS.run(audit_run, LabelErrorsConfig(n_replay=2), dataset=digits)
    assert r.n_train == digits.n_train and r.classes == list(digits.classes) and r.findings
    assert LABEL_ERRORS.load(audit_run) == r and LABEL_ERRORS.is_current(audit_run, LabelErrorsConfig(n_replay=2))
    table = LABEL_ERRORS.path(audit_run, "table").read_text().splitlines()
    assert table[0].startswith("rank,train_index,given_label,predicted_label") and len(table) == len(r.findings) + 1
    assert any("training labels flagged" in getattr(b, "text", "") for b in LABEL_ERRORS.summary(r))
    result = checks.run_checks(audit_run, {"max_label_error_fraction": 1.0}, save=False)
    check = next(c for c in result["checks"] if c["key"] == "max_label_error_fraction")
    assert check["status"] == "pass" and check["value"] == r.n_likely / r.n_train
