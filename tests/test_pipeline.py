"""The pipeline steps as library calls and through the CLI: fit, evaluate, resolving runs, errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from audit import pipeline
from audit.errors import AuditError
from audit.jsonio import read_json
from tests.conftest import FAST_MLP, assert_one_line_error, run_cli


@pytest.fixture
def run_copy(small_digits_run, tmp_path):
    dst = tmp_path / "digits"
    shutil.copytree(small_digits_run, dst)
    return dst


def test_fit_saves_datamodels_and_summary(small_digits_run):
    dm = pipeline.load_datamodels(small_digits_run)
    fit = read_json(small_digits_run / "fit.json")
    assert dm.weights.shape == (fit["n_targets"], 1297) and fit["n_models"] == 400
    assert np.isfinite(dm.weights).all() and np.isfinite(dm.bias).all()
    assert 0 < fit["mean_nonzero_weights"] < 1297
    # train targets never weigh themselves
    assert np.all(np.diag(dm.weights[:, :1297]) == 0)


def test_evaluate_scores_datamodels_and_baseline(run_copy):
    result = pipeline.evaluate(run_copy, n_subsets=12, repeats=2)
    saved = read_json(run_copy / "evaluation.json")
    assert saved["n_subsets"] == 12 and saved["repeats"] == 2
    for group in ("all", "train", "test"):
        g = saved[group]
        assert -1 <= g["lds_mean"] <= 1 and -1 <= g["baseline_lds_mean"] <= 1 and g["mse_mean"] > 0
    assert saved["noise_floor_mse"] is not None and 0 < saved["noise_floor_mse"] < saved["all"]["mse_mean"]
    assert result["all"]["lds_mean"] == saved["all"]["lds_mean"]
    with np.load(run_copy / "evaluation_targets.npz") as z:
        assert z["lds"].shape == (1797,) and z["baseline_lds"].shape == (1797,)
        k = len(z["scatter_targets"])
        assert z["scatter_pred"].shape == (12, k) == z["scatter_measured"].shape
        train_cols = z["scatter_targets"] < 1297
        assert train_cols.any() and (~train_cols).any()
    # held-out models come from their own seed stream: none equals a fitting model's subset
    eval_masks = np.load(run_copy / "eval_r2" / "masks.npy")
    fit_masks = np.load(run_copy / "masks.npy")
    assert not (eval_masks[:, None, :] == fit_masks[None, :, :]).all(2).any()


def test_resolve_run(tmp_path, small_digits_run):
    assert pipeline.resolve_run(str(small_digits_run)) == small_digits_run
    assert pipeline.resolve_run("digits") == pipeline.default_run_dir("digits")
    with pytest.raises(AuditError, match="not a run directory"):
        pipeline.resolve_run(str(tmp_path))


def test_fit_refuses_a_run_with_too_few_models(tmp_path, digits):
    pipeline.train("digits", tmp_path / "few", n_models=10, trainer_options=FAST_MLP, dataset=digits)
    with pytest.raises(AuditError, match="finished models"):
        pipeline.fit(tmp_path / "few")


def test_cli_errors_are_one_line(tmp_path, small_digits_run):
    assert_one_line_error(run_cli("fit", str(tmp_path / "nowhere")))
    empty = tmp_path / "run"
    shutil.copytree(small_digits_run, empty, ignore=shutil.ignore_patterns("datamodels.npz"))
    proc = run_cli("evaluate", str(empty))
    assert_one_line_error(proc)
    assert "audit fit" in proc.stderr
    assert_one_line_error(run_cli("fit", str(small_digits_run), "--device", "cuda")) if not _cuda() else None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
