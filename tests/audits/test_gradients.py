"""Gradient baselines: TracIn-CP and last-layer influence, their signs, and the step on a tiny digits run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from audit import pipeline, scores
from audit.audits import gradients
from audit.audits.gradients import GRADIENTS, GradientsConfig, influence_scores, tracin_scores
from audit.errors import AuditError

N_TRAIN, N_TEST, C, F = 60, 6, 4, 5


def _outputs(rng, n_epochs=3):
    """Checkpoint outputs [1 model, epochs, targets, C + F + 1] where test target 0 is a copy of train example 7."""
    out = np.zeros((1, n_epochs, N_TRAIN + N_TEST, C + F + 1), np.float32)
    out[..., :C] = rng.standard_normal(out[..., :C].shape)
    out[..., C:-1] = np.abs(rng.standard_normal(out[..., C:-1].shape))  # ReLU features
    out[..., -1] = np.linspace(0.1, 0.01, n_epochs)[None, :, None]
    out[:, :, N_TRAIN] = out[:, :, 7]
    y = rng.integers(0, C, N_TRAIN + N_TEST)
    y[N_TRAIN] = y[7]
    return out, y


@pytest.mark.parametrize("method", [tracin_scores, influence_scores])
def test_a_duplicate_of_the_target_gets_a_large_positive_score(method, rng):
    out, y = _outputs(rng)
    s = method(out, y, N_TRAIN, C)
    assert s.shape == (N_TEST, N_TRAIN) and np.isfinite(s).all()
    # positive and among the largest (not always the largest: an unnormalised dot product favours examples with
    # large gradients, a known trait of TracIn)
    assert s[0, 7] > 0 and s[0, 7] >= np.quantile(s[0], 0.9)
    # the same example with another label pulls the other way: its gradient points against the target's
    y_other = y.copy()
    y_other[7] = (y[7] + 1) % C
    assert method(out, y_other, N_TRAIN, C)[0, 7] < s[0, 7]


def test_tracin_is_the_learning_rate_weighted_gradient_dot_product(rng):
    out, y = _outputs(rng, n_epochs=2)
    s = tracin_scores(out, y, N_TRAIN, C)
    want = 0.0
    for e in range(2):
        o = out[0, e].astype(np.float64)
        p = np.exp(o[:, :C]) / np.exp(o[:, :C]).sum(1, keepdims=True)
        g = [np.outer(p[i] - np.eye(C)[y[i]], np.r_[o[i, C:-1], 1.0]).ravel() for i in (N_TRAIN + 2, 11)]
        want += o[0, -1] * g[0] @ g[1]
    assert s[2, 11] == pytest.approx(want, rel=1e-4)


@pytest.fixture
def fast_run(small_digits_run, tmp_path):
    """A writable copy of the shared run with its own trainer (4 epochs: 4 checkpoints)."""
    dst = tmp_path / "run"
    shutil.copytree(small_digits_run, dst)
    return dst


def test_gradients_step_saves_score_matrices(fast_run, digits):
    audit_run = fast_run
    r = GRADIENTS.run(audit_run, GradientsConfig(n_reference=2), dataset=digits)
    assert r.methods == ["tracin", "influence"] and r.n_checkpoints == 4  # one per epoch
    assert scores.names(audit_run) == ["influence", "tracin"]
    assert not (audit_run / "reference_checkpoints").exists()  # read and removed
    w = pipeline.load_datamodels(audit_run).weights[digits.n_train:]
    for name in ("tracin", "influence"):
        m = scores.load(audit_run, name)
        assert m.info.targets == "test" and m.weights.shape == (digits.n_test, digits.n_train)
        # same sign convention as datamodel weights: the examples a datamodel says help most score above those it
        # says hurt most, and training examples of the target's own class score above the others
        s = np.asarray(m.weights)
        order = np.argsort(-w, axis=1)
        top, bottom = np.take_along_axis(s, order[:, :10], 1), np.take_along_axis(s, order[:, -10:], 1)
        assert (top.mean(1) > bottom.mean(1)).mean() > 0.6, name
        same = digits.y_train[None, :] == digits.y_test[:, None]
        assert ((s * same).sum(1) / same.sum(1) > (s * ~same).sum(1) / (~same).sum(1)).mean() > 0.9, name
    saved = json.loads((audit_run / "audits" / "gradients.json").read_text())
    assert saved["files"] == r.files and GRADIENTS.load(audit_run) == r
    assert any("influence" in str(b.rows) for b in GRADIENTS.summary(r) if hasattr(b, "rows"))


def test_bad_settings_and_trainers_without_checkpoints(audit_run, digits):
    with pytest.raises(AuditError, match="--gradient-methods"):
        gradients.compute_gradients(audit_run, GradientsConfig(gradient_methods=("trak",)), digits)
    cfg = json.loads((audit_run / "run.json").read_text())
    cfg["trainer"] = {**cfg["trainer"], "name": "resnet9"}
    (audit_run / "run.json").write_text(json.dumps(cfg))
    with pytest.raises(AuditError, match="per-epoch checkpoints.*import-scores"):
        gradients.compute_gradients(audit_run, GradientsConfig(), digits)
    assert not (audit_run / "scores").exists()


def test_gradients_step_reads_the_cnn_trainers_checkpoints(audit_run, digits):
    """The cnn trainer keeps per-epoch checkpoints too: its last layer sits on the 2x2-pooled features."""
    cfg = json.loads((audit_run / "run.json").read_text())
    cfg["trainer"] = {"name": "cnn", "channels": 4, "epochs": 3, "batch_size": 64, "lr": 0.1, "momentum": 0.9,
                      "weight_decay": 5e-4, "label_smoothing": 0.0}
    (audit_run / "run.json").write_text(json.dumps(cfg))
    r = GRADIENTS.run(audit_run, GradientsConfig(n_reference=1), dataset=digits)
    assert r.n_checkpoints == 3 and r.parameters == 10 * (4 * 8 + 1)
    same = digits.y_train[None, :] == digits.y_test[:, None]
    for name in ("tracin", "influence"):
        s = np.asarray(scores.load(audit_run, name).weights)
        assert s.shape == (digits.n_test, digits.n_train) and np.isfinite(s).all()
        assert ((s * same).sum(1) / same.sum(1) > (s * ~same).sum(1) / (~same).sum(1)).mean() > 0.9, name
