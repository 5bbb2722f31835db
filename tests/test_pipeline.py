"""The pipeline steps as library calls and through the CLI: fit, evaluate, resolving runs, errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from audit import pipeline
from audit.errors import AuditError
from audit.jsonio import read_json
from tests.cli_inprocess import call_main
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
    for result in (run_cli("fit", str(tmp_path / "nowhere")), call_main("embed", str(tmp_path / "nowhere"))):
        assert_one_line_error(result)  # a mistyped run directory is named as one, not as an unknown dataset
        assert "nowhere does not exist: give a run directory" in result.stderr and "unknown dataset" not in result.stderr
    empty = tmp_path / "run"
    shutil.copytree(small_digits_run, empty, ignore=shutil.ignore_patterns("datamodels.npz"))
    proc = run_cli("evaluate", str(empty))
    assert_one_line_error(proc)
    assert "audit fit" in proc.stderr
    assert_one_line_error(run_cli("fit", str(small_digits_run), "--device", "cuda")) if not _cuda() else None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ----- planted label errors: --plant-labels ---------------------------------------------------------
def test_plant_labels_is_recorded_in_the_run_and_kept_by_a_rerun(tmp_path):
    from audit.data.planting import planted_label_errors
    from tests.cli_inprocess import call_main

    run = tmp_path / "planted"
    opts = [a for k, v in FAST_MLP.items() for a in ("-o", f"{k}={v}")]
    first = call_main("train", "digits", "--run", run, "-m", "20", "--plant-labels", "0.05", *opts)
    assert first.returncode == 0, first.stderr
    store = pipeline.RunStore.open(run, writable=False)
    assert store.config.dataset_options == {"plant_labels": 0.05, "plant_labels_seed": 0}
    flipped, _ = planted_label_errors(pipeline.dataset_of(store))
    assert len(flipped) == round(0.05 * 1297)
    again = call_main("train", "digits", "--run", run, "-m", "20", *opts)  # the flag left out: the run's planting
    assert again.returncode == 0, again.stderr
    assert pipeline.TRAIN.is_current(run, pipeline.TrainConfig(n_models=20))
    assert not pipeline.TRAIN.is_current(run, pipeline.TrainConfig(n_models=20, plant_labels=0.1))
    other = call_main("train", "digits", "--run", run, "-m", "20", "--plant-labels", "0.1", *opts)
    assert_one_line_error(other)
    assert "--plant-labels 0.05" in other.stderr
    plain = tmp_path / "plain"
    pipeline.train("digits", plain, n_models=20, trainer_options=FAST_MLP)
    assert_one_line_error(call_main("train", "digits", "--run", plain, "-m", "20", "--plant-labels", "0.05", *opts))


def test_planted_labels_get_their_own_default_run():
    assert pipeline.default_run_dir("digits", plant_labels=0.05) == pipeline.default_run_dir("digits").with_name(
        "digits-labels0.05")


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1", "nan", "many"])
def test_bad_plant_labels_are_one_line_before_anything_is_written(tmp_path, value):
    from tests.cli_inprocess import call_main

    for command in ("train", "run"):
        assert_one_line_error(call_main(command, "digits", "--plant-labels", value, cwd=tmp_path))
    if value == "1.5":  # the installed script too
        assert_one_line_error(run_cli("run", "digits", "--plant-labels", value, cwd=tmp_path))
    assert list(tmp_path.iterdir()) == []
