"""`audit import` of a release in the published layout (fixtures/make_release.py), and streamed evaluate."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from audit import pipeline
from audit.audits.influence import INFLUENCE
from audit.datamodels import (Datamodels, block_columns, difference_of_means, evaluate, evaluation_targets,
                              lasso_objective, streamed_evaluate, target_columns)
from audit.errors import AuditError
from audit.release import ReleaseWeights, release_paths
from audit.release_import import import_release
from audit.store import RunStore
from tests.cli_inprocess import call_main
from tests.conftest import FIXTURES, assert_one_line_error, run_cli

SPEC = f"cifar10:{FIXTURES / 'cifar10'}"  # 40 train, 20 test, 10 classes
N_MODELS, N_EVAL = 60, 20


def _maker():
    spec = importlib.util.spec_from_file_location("make_release", FIXTURES / "make_release.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


write_release = _maker().write_release


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("release") / "cifar"
    truth = write_release(folder, n_models=N_MODELS)
    return folder, truth


@pytest.fixture(scope="module")
def imported(release, tmp_path_factory):
    folder, truth = release
    run_dir = tmp_path_factory.mktemp("runs") / "cifar-release"
    import_release(folder, SPEC, run_dir, eval_models=N_EVAL)
    return run_dir, truth


def test_imported_weights_are_the_pt_values_transposed(imported, release):
    run_dir, truth = imported
    dm = pipeline.load_datamodels(run_dir)
    folder = release[0]
    train = torch.load(folder / release_paths(50)["train_weights"], weights_only=True)
    test = torch.load(folder / release_paths(50)["test_weights"], weights_only=True)
    np.testing.assert_array_equal(dm.weights[:40], train["weight"].numpy().T)
    np.testing.assert_array_equal(dm.weights[40:], test["weight"].numpy().T)
    np.testing.assert_array_equal(dm.bias, np.r_[train["bias"].numpy(), test["bias"].numpy()])
    np.testing.assert_array_equal(dm.weights, truth["weights"])
    assert not (run_dir / pipeline.DATAMODELS_FILE).exists()  # read from the release, not copied


def test_imported_weights_are_read_lazily_like_a_memory_map(imported):
    run_dir, truth = imported
    w, want = pipeline.load_datamodels(run_dir).weights, truth["weights"]
    assert isinstance(w, ReleaseWeights) and w.shape == want.shape  # no [targets, n_train] copy made
    view = w[35:50]  # a slice is another lazy view, across the train and test .pt files
    assert isinstance(view, ReleaseWeights) and len(view) == 15
    np.testing.assert_array_equal(np.asarray(view), want[35:50])
    rows = np.array([59, 3, 41, 40, 3, 39])  # unsorted, repeated, both files
    np.testing.assert_array_equal(w[rows], want[rows])
    np.testing.assert_array_equal(view[[0, 14]], want[[35, 49]])
    np.testing.assert_array_equal(w[-1], want[-1])
    assert w[42, 7] == want[42, 7]
    np.testing.assert_array_equal(w[5:9, [1, 2]], want[5:9][:, [1, 2]])
    with pytest.raises(IndexError):
        w[60]


@pytest.mark.parametrize("gap, slab", [(0, 4), (3, 64), (1024, 2**26)])  # a read per target .. one slab
def test_weights_read_in_clusters_and_slabs_equal_the_values(imported, monkeypatch, gap, slab):
    run_dir, truth = imported
    monkeypatch.setattr(ReleaseWeights, "CLUSTER_GAP", gap)
    monkeypatch.setattr(ReleaseWeights, "SLAB_BYTES", slab)
    monkeypatch.setattr(ReleaseWeights, "FAULT_AROUND", 1)
    w, want = pipeline.load_datamodels(run_dir).weights, truth["weights"]
    rows = np.array([0, 2, 3, 9, 20, 38, 39, 40, 41, 47, 59, 2])  # gaps of 1..11, both files, a repeat
    np.testing.assert_array_equal(w[rows], want[rows])


def test_training_and_evaluation_rows(imported, release):
    run_dir, _ = imported
    folder = release[0]
    masks = np.load(folder / release_paths(50)["train_masks"])
    margins = np.c_[np.load(folder / release_paths(50)["train_margins"]),
                    np.load(folder / release_paths(50)["test_margins"])].astype(np.float32)
    store = RunStore.open(run_dir, writable=False)
    assert store.config.n_models == N_MODELS - N_EVAL
    np.testing.assert_array_equal(np.asarray(store.masks), masks[: N_MODELS - N_EVAL])
    np.testing.assert_array_equal(store.margins[:], margins[: N_MODELS - N_EVAL])
    for rows, cols in (([3, 1], slice(38, 45)), (slice(2, 9), [44, 0, 39]), (5, slice(None, None, 3)),
                       (np.arange(40) % 2 == 0, slice(41, 41))):
        np.testing.assert_array_equal(store.margins[rows, cols], margins[: N_MODELS - N_EVAL][rows, cols])
    assert pipeline.TRAIN.is_current(run_dir) and pipeline.FIT.is_current(run_dir)


def test_evaluate_scores_the_last_rows_against_difference_of_means(imported, release):
    run_dir, truth = imported
    folder = release[0]
    r = pipeline.EVALUATE.run(run_dir)
    masks = np.load(folder / release_paths(50)["train_masks"])
    margins = np.c_[np.load(folder / release_paths(50)["train_margins"]),
                    np.load(folder / release_paths(50)["test_margins"])].astype(np.float32)
    dm = pipeline.load_datamodels(run_dir)
    k = N_MODELS - N_EVAL
    base = difference_of_means(masks[:k], margins[:k], 40)
    dense, _ = evaluate(dm, masks[k:], margins[k:], 40, baseline_weights=base)
    assert r.n_subsets == N_EVAL and r.n_fit_models == k
    assert r.all.lds_mean == pytest.approx(dense["all"]["lds_mean"], abs=1e-9)
    assert r.all.baseline_lds_mean == pytest.approx(dense["all"]["baseline_lds_mean"], abs=1e-9)
    assert r.all.lds_mean > r.all.baseline_lds_mean  # the true weights beat difference of means


def _synthetic_models(rng):
    """Datamodels of 30 train + 12 test targets, 80 training and 25 evaluation models (float16 margins)."""
    n_train, n_test, m, m_eval = 30, 12, 80, 25
    w = rng.normal(size=(n_train + n_test, n_train)).astype(np.float32)
    dm = Datamodels(weights=w, bias=rng.normal(size=n_train + n_test).astype(np.float32), lam=np.zeros(0),
                    val_mse=np.zeros(0), lam_ratio=np.zeros(0), n_models_fit=m, n_train=n_train)
    masks = rng.random((m, n_train)) < 0.5
    margins = (masks @ w.T + rng.normal(size=(m, n_train + n_test))).astype(np.float16)
    masks_e = rng.random((m_eval, n_train)) < 0.5
    margins_e = (masks_e @ w.T + rng.normal(size=(m_eval, n_train + n_test))).astype(np.float16)
    return n_train, n_test, m, dm, masks, margins, masks_e, margins_e


@pytest.mark.parametrize("memory_gb", [None, 1e-6])  # the default, and a budget of one target and model a block
def test_streamed_evaluate_equals_dense(rng, memory_gb):
    n_train, n_test, m, dm, masks, margins, masks_e, margins_e = _synthetic_models(rng)
    base = difference_of_means(masks, margins.astype(np.float32), n_train)
    dense, dense_t = evaluate(dm, masks_e, margins_e.astype(np.float32), n_train, baseline_weights=base)
    streamed, streamed_t = streamed_evaluate(dm, masks_e, margins_e, n_train, masks.astype(np.uint8), margins,
                                             np.arange(m), memory_gb=memory_gb)
    for key in ("lds", "mse", "baseline_lds"):
        np.testing.assert_allclose(streamed_t[key], dense_t[key], rtol=1e-6, atol=1e-7)
    for group in ("all", "train", "test"):
        for key in ("lds_mean", "mse_mean", "baseline_lds_mean"):
            assert streamed[group][key] == pytest.approx(dense[group][key], rel=1e-6)


def test_replicates_streamed_equals_dense(rng):
    n_train, m_eval, reps = 10, 15, 3
    w = rng.normal(size=(n_train + 4, n_train)).astype(np.float32)
    dm = Datamodels(weights=w, bias=np.zeros(n_train + 4, np.float32), lam=np.zeros(0), val_mse=np.zeros(0),
                    lam_ratio=np.zeros(0), n_models_fit=1, n_train=n_train)
    masks_e = rng.random((m_eval, n_train)) < 0.5
    r = masks_e[:, None] @ w.T + rng.normal(size=(m_eval, reps, n_train + 4))
    dense, dense_t = evaluate(dm, masks_e, None, n_train, margins_replicates=r)
    streamed, streamed_t = streamed_evaluate(dm, masks_e, r.mean(1), n_train, margins_replicates=r, memory_gb=1e-6)
    np.testing.assert_allclose(streamed_t["noise_floor_mse"], dense_t["noise_floor_mse"], rtol=1e-6)
    assert streamed["noise_floor_mse"] == pytest.approx(dense["noise_floor_mse"], rel=1e-6)


def test_a_weight_only_audit_runs_on_an_imported_run(imported):
    run_dir, _ = imported
    result = INFLUENCE.run(run_dir)
    assert INFLUENCE.is_current(run_dir) and result is not None


def test_retraining_steps_say_what_they_need(imported):
    run_dir, _ = imported
    with pytest.raises(AuditError, match="resnet9 on a CUDA GPU"):
        pipeline.make_trainer("imported", trainer="resnet9")
    with pytest.raises(AuditError, match="imported from a published release"):
        pipeline.TRAIN.run(run_dir)
    result = call_main("leakage", str(run_dir))  # its FAISS baseline trains full-data reference models
    assert_one_line_error(result)
    assert "full-data models" in result.stderr and "CUDA GPU" in result.stderr
    for command in ("brittleness", "mislabel"):  # they retrain: --features (the FAISS baseline's fix) is no way out
        result = call_main(command, str(run_dir), "--n", "2")
        assert_one_line_error(result)
        assert "no models of its own to train" in result.stderr and "--features" not in result.stderr


def test_weights_only_and_data_only(tmp_path):
    write_release(tmp_path / "w", data=False)
    import_release(tmp_path / "w", SPEC, tmp_path / "rw", eval_models=N_EVAL)
    assert pipeline.load_datamodels(tmp_path / "rw").weights.shape == (60, 40)
    assert RunStore.open(tmp_path / "rw", writable=False).config.n_models == 0
    assert INFLUENCE.run(tmp_path / "rw") is not None  # weights are all it needs
    with pytest.raises(AuditError, match="without the release's data/ files"):
        pipeline.EVALUATE.run(tmp_path / "rw")
    write_release(tmp_path / "d", weights=False, logits=False)
    import_release(tmp_path / "d", SPEC, tmp_path / "rd", eval_models=N_EVAL)
    with pytest.raises(AuditError, match="audit fit"):
        pipeline.load_datamodels(tmp_path / "rd")
    fitted = pipeline.FIT.run(tmp_path / "rd", pipeline.FitConfig(n_lambdas=4))  # on the release's training rows
    assert fitted.n_models == N_MODELS - N_EVAL
    dense = pipeline.load_datamodels(tmp_path / "rd")
    assert dense.weights.shape == (60, 40) and dense.info["masks_held_as"] == "float32"
    # a budget too small for the masks as float32: read from the release's files a block of models at a time
    pipeline.FIT.run(tmp_path / "rd", pipeline.FitConfig(n_lambdas=4, memory_gb=2e-6))
    streamed = pipeline.load_datamodels(tmp_path / "rd")
    assert streamed.info["masks_held_as"] == "source" and streamed.info["n_chunks"] > dense.info["n_chunks"]
    assert np.isnan(dense.val_mse).any()  # targets without validation models: the same λ rule on both paths
    same = streamed.lam_ratio == dense.lam_ratio
    # a different λ only where two path steps tie on validation MSE (float summation order decides)
    k_d = np.searchsorted(-dense.ratios, -dense.lam_ratio.astype(np.float64) * (1 + 1e-6))
    k_s = np.searchsorted(-dense.ratios, -streamed.lam_ratio.astype(np.float64) * (1 + 1e-6))
    rows = np.flatnonzero(~same)
    np.testing.assert_allclose(dense.val_mse_path[rows, k_d[rows]], dense.val_mse_path[rows, k_s[rows]], rtol=1e-5)
    assert same.mean() >= 0.95
    # every target here has fewer rows (12-40) than features (40), so its LASSO weights need not be unique and
    # the two paths' float rounding may end at different optimal points; what is unique is the objective and
    # the fit on the target's own rows: both paths reach the same ones within the solver's tolerance
    store = RunStore.open(tmp_path / "rd", writable=False)
    x_all = np.asarray(store.masks[:N_MODELS - N_EVAL], dtype=np.float64)
    y_all = np.asarray(store.margins[:N_MODELS - N_EVAL], dtype=np.float64)
    n_train = dense.n_train
    for j in np.flatnonzero(same):
        rows = ~x_all[:, j].astype(bool) if j < n_train else slice(None)
        x, y = x_all[rows], y_all[rows, j]
        a, b = (lasso_objective(x, y, dm.weights[j], dm.bias[j], float(dm.lam[j])) for dm in (dense, streamed))
        assert abs(a - b) <= 1e-4 * y.var(), (j, a, b)  # the fit's tol: duality gap ≤ 1e-4 × variance
        fitted = [x @ dm.weights[j] + dm.bias[j] for dm in (dense, streamed)]
        np.testing.assert_allclose(fitted[1], fitted[0], atol=2e-3, err_msg=f"target {j}")


def test_one_split_of_weights_serves_the_steps_that_read_it(release, tmp_path, monkeypatch):
    """Only datamodels/test_50pct.pt (what leakage needs): imported, its targets scored and audited; a step
    reading the train targets' weights says which file it needs, in one line, and `audit run` skips it."""
    from audit.audits import leakage_audit as la
    from audit.release import MissingWeights
    from audit.workflow import RunOptions, run_pipeline

    folder, truth = release
    shutil.copytree(folder, tmp_path / "cifar")
    (tmp_path / "cifar" / release_paths(50)["train_weights"]).unlink()
    result = call_main("import", str(tmp_path / "cifar"), "--dataset", SPEC, "--eval-models", str(N_EVAL),
                       "--run", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert "datamodels of the test targets only" in " ".join(result.stdout.split())
    run = tmp_path / "run"
    dm = pipeline.load_datamodels(run)
    assert dm.weights.shape == (60, 40) and np.isnan(dm.bias[:40]).all()
    np.testing.assert_array_equal(dm.weights[40:], truth["weights"][40:])
    with pytest.raises(MissingWeights, match="without datamodels/train_50pct.pt, so its train targets"):
        dm.weights[3]
    with pytest.raises(MissingWeights):
        dm.weights[[45, 2]]  # any train target in the rows asked for
    c = RunStore.open(run, writable=False).config
    from audit import scores
    np.save(tmp_path / "mine.npy", np.random.default_rng(1).normal(size=(c.n_train, c.n_targets)).astype(np.float32))
    scores.import_scores(tmp_path / "mine.npy", run, n_train=c.n_train, n_test=c.n_test)
    r = pipeline.EVALUATE.run(run)  # the test targets, on the release's evaluation models
    assert r.train.n_targets == 0 and r.train.targets_text() == "none (no weights imported)" and r.test.n_targets == 20
    assert r.all.targets_text() == "20 of 60 (test targets only: no train weights imported)"
    assert not (r.all.sampled or r.train.sampled or r.test.sampled)  # no random sample: no ± and no hint
    assert r.test.lds_mean > r.test.baseline_lds_mean
    assert r.scores["mine"].train.n_targets == 40  # a score matrix needs no datamodel weights: every target
    check = call_main("check", str(run), "--min-lds", "-1", "--lds-group", "all")
    assert check.returncode == 0 and "test targets' weights only" in " ".join(check.stdout.split())
    from audit.audits import embed
    from audit.audits.embed import EMBED
    monkeypatch.setattr(embed, "read_embeddings", lambda *a, **k: pytest.fail("read weights before the check"))
    with pytest.raises(MissingWeights, match="train_50pct.pt"):
        EMBED.run(run)  # before reading a weight (at CIFAR-10 size, 10 GB of train rows and a PCA)
    np.save(tmp_path / "feats.npy", np.random.default_rng(0).normal(size=(c.n_train + c.n_test, 8)).astype(np.float32))
    leak = la.run_leakage(run, k=5, features=tmp_path / "feats.npy")
    assert leak["n_test"] == 20  # test weights are all it reads: no embeddings (train rows), so by weights, saying so
    assert leak["datamodel_ranking"] == "weights" and "no train-target datamodels" in leak["datamodel_ranking_note"]
    with pytest.raises(AuditError, match="test targets only; use --datamodel-ranking weights"):
        la.run_leakage(run, k=5, features=tmp_path / "feats.npy", datamodel_ranking="embedding")
    summary = run_pipeline(SPEC, run, RunOptions.from_values(audits=("influence", "embed", "support-heuristic")))
    for name, entry in summary["steps"].items():  # ran, or skipped saying why
        assert "reason" not in entry or "train_50pct.pt" in entry["reason"] or "trains models" in entry["reason"], name
    assert Path(summary["report"]).is_file()
    from audit import findings  # the terminal's "what we found" and the report say what was not run, and why
    found = findings.collect(run)
    assert "train_50pct.pt" in found.skipped["embed"] and "leakage" not in found.skipped  # leakage ran (--features)
    assert any(line.startswith("embed: not run (this run was imported without") for line in findings.summary_lines(found))
    report = Path(summary["report"]).read_text().replace("&#96;", "`").replace("&#39;", "'")
    assert "embed: not run by `audit run`" in report
    assert pipeline.FIT.load(run).targets_text() == "60 (test targets' weights only)" and "60 (test targets' weights only)" in report
    # the other way round, a step that reads test targets names the test file, through the console script
    (tmp_path / "cifar" / release_paths(50)["train_weights"]).write_bytes(
        (folder / release_paths(50)["train_weights"]).read_bytes())
    (tmp_path / "cifar" / release_paths(50)["test_weights"]).unlink()
    import_release(tmp_path / "cifar", SPEC, tmp_path / "run2", eval_models=N_EVAL)
    proc = run_cli("leakage", str(tmp_path / "run2"), "--features", str(tmp_path / "feats.npy"))
    assert_one_line_error(proc)
    assert "datamodels/test_50pct.pt" in proc.stderr


def test_a_moved_or_changed_file_is_one_error(release, tmp_path):
    folder = tmp_path / "cifar"
    shutil.copytree(release[0], folder)
    import_release(folder, SPEC, tmp_path / "run", eval_models=N_EVAL)
    margins = folder / release_paths(50)["test_margins"]
    arr = np.load(margins)
    arr[-1, -1] += 1
    np.save(margins, arr)
    for args in (["evaluate", str(tmp_path / "run")], ["influence", str(tmp_path / "run")]):
        result = call_main(*args)
        assert_one_line_error(result)
        assert "changed since" in result.stderr
    margins.rename(tmp_path / "moved.npy")
    assert_one_line_error(proc := call_main("evaluate", str(tmp_path / "run")))
    assert "not there any more" in proc.stderr


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 100)


def _wrong_dtype(path: Path) -> None:
    np.save(path, np.load(path).astype(np.float64))


def _wrong_shape(path: Path) -> None:
    np.save(path, np.load(path)[:, :-1])


def _bad_pt(path: Path) -> None:
    d = torch.load(path, weights_only=True)
    torch.save({**d, "weight": d["weight"][:-1]}, path)


BAD = {  # name -> (role, change)
    "missing margins": ("train_margins", lambda p: p.unlink()),
    "truncated masks": ("train_masks", _truncate),
    "float64 margins": ("test_margins", _wrong_dtype),
    "wrong shape": ("train_margins", _wrong_shape),
    "wrong weight shape": ("train_weights", _bad_pt),
    "truncated .pt": ("test_weights", _truncate),
    "text file as .pt": ("train_weights", lambda p: p.write_text("not a torch file\n")),
    "logits of another class count": ("test_logits", lambda p: np.save(p, np.load(p)[..., :3])),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_release_is_one_error_and_writes_nothing(release, tmp_path, name):
    folder = tmp_path / "cifar"
    shutil.copytree(release[0], folder)
    role, change = BAD[name]
    change(folder / release_paths(50)[role])
    result = call_main("import", str(folder), "--dataset", SPEC, "--eval-models", str(N_EVAL),
                       "--run", str(tmp_path / "run"))
    assert_one_line_error(result)
    assert release_paths(50)[role] in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_bad_release_in_a_real_process(release, tmp_path):
    folder = tmp_path / "cifar"
    shutil.copytree(release[0], folder)
    _truncate(folder / release_paths(50)["train_masks"])
    _wrong_dtype(folder / release_paths(50)["test_margins"])
    proc = run_cli("import", str(folder), "--dataset", SPEC, "--eval-models", str(N_EVAL), "--run", str(tmp_path / "run"))
    assert_one_line_error(proc)
    assert "train_masks_50pct.npy is truncated" in proc.stderr and "test_margins_50pct.npy is float64" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_uint8_masks_give_the_same_evaluation(imported, release, tmp_path):
    folder = tmp_path / "cifar"
    shutil.copytree(release[0], folder)
    masks = folder / release_paths(50)["train_masks"]
    np.save(masks, np.load(masks).astype(np.uint8))
    import_release(folder, SPEC, tmp_path / "run", eval_models=N_EVAL)
    assert pipeline.EVALUATE.run(tmp_path / "run").all == pipeline.EVALUATE.run(imported[0]).all


@pytest.mark.parametrize("args, says", [(["--pct", "20"], "--pct 50"), (["--eval-models", "59"], "--eval-models"),
                                        (["--dataset", "digits"], "N_train=1")])
def test_wrong_options_in_a_real_process(release, tmp_path, args, says):
    options = {"--dataset": SPEC, "--eval-models": str(N_EVAL), **dict(zip(args[::2], args[1::2]))}
    opts = [x for kv in options.items() for x in kv]
    proc = run_cli("import", str(release[0]), *opts, "--run", str(tmp_path / "run"))
    assert_one_line_error(proc)
    assert says in proc.stderr
    assert not (tmp_path / "run").exists()


def test_import_in_a_real_process_then_evaluate(release, tmp_path):
    proc = run_cli("import", str(release[0]), "--dataset", SPEC, "--eval-models", str(N_EVAL),
                   "--run", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "run" / "release.json").read_text())
    assert set(saved["fingerprints"]) == set(release_paths(50))
    assert all(set(f) == {"size", "mtime_ns", "sha256"} for f in saved["fingerprints"].values())
    assert_one_line_error(call_main("import", str(release[0]), "--dataset", SPEC, "--run", str(tmp_path / "run")))


def test_audit_run_on_an_imported_run_does_the_weight_only_steps(release, tmp_path):
    from audit.workflow import IMPORTED_SKIP, RunOptions, run_pipeline

    import_release(release[0], SPEC, tmp_path / "run", eval_models=N_EVAL)
    summary = run_pipeline(SPEC, tmp_path / "run", RunOptions.from_values(audits=("influence", "brittleness")))
    steps = summary["steps"]
    assert steps["train"]["skipped"] and steps["fit"]["skipped"]  # the release's models and weights
    assert steps["evaluate"]["n_subsets"] == N_EVAL and not steps["influence"].get("skipped")
    assert steps["brittleness"] == {"skipped": True, "reason": IMPORTED_SKIP}
    assert Path(summary["report"]).is_file()


def test_imported_run_gets_leakage_and_scores_with_your_own_features(imported, tmp_path):
    """No reference models on an imported run: --features gives leakage its FAISS baseline, and an imported
    score matrix is scored on the release's evaluation models."""
    from audit import scores
    from audit.audits import leakage_audit as la

    run_dir, _ = imported
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    c = RunStore.open(run, writable=False).config
    rng = np.random.default_rng(0)
    np.save(tmp_path / "feats.npy", rng.normal(size=(c.n_train + c.n_test, 8)).astype(np.float32))
    s = la.run_leakage(run, k=5, features=tmp_path / "feats.npy")
    assert s["n_reference_models"] == 0 and not (run / "reference.npz").exists()
    assert (run / "audits" / la.CANDIDATES_CSV).exists()
    w = pipeline.load_datamodels(run).weights[c.n_train:]
    np.save(tmp_path / "copy.npy", np.asarray(w).T)
    scores.import_scores(tmp_path / "copy.npy", run, n_train=c.n_train, n_test=c.n_test)
    result = pipeline.EVALUATE.run(run)
    assert result.scores["copy"].test.lds_mean == pytest.approx(result.test.lds_mean, abs=1e-6)


def test_evaluation_targets_sample_each_group():
    assert evaluation_targets(1297, 1797, 5000) is None and evaluation_targets(50, 60, 0) is None
    ids = evaluation_targets(1000, 1300, 200, seed=3)
    assert np.all(np.diff(ids) > 0) and ids.dtype == np.int64
    assert (ids < 1000).sum() == 200 and (ids >= 1000).sum() == 200 and ids.max() < 1300
    np.testing.assert_array_equal(ids, evaluation_targets(1000, 1300, 200, seed=3))  # seeded
    assert not np.array_equal(ids, evaluation_targets(1000, 1300, 200, seed=4))
    small = evaluation_targets(1000, 1100, 200)  # a group with fewer than the sample keeps all of them
    np.testing.assert_array_equal(small[small >= 1000], np.arange(1000, 1100))


def test_block_columns_reads_ids_like_fancy_indexing(rng, tmp_path):
    a = np.lib.format.open_memmap(tmp_path / "m.npy", "w+", np.float16, (37, 11))
    a[:] = rng.normal(size=(37, 11))
    cols = np.array([0, 3, 4, 10])
    for rows in (slice(None), np.array([1, 2, 3, 9, 30]), np.arange(5, 20)):
        want = a[rows][:, cols].astype(np.float64)
        np.testing.assert_array_equal(block_columns(a, rows, cols, max_bytes=50), want)
        np.testing.assert_array_equal(block_columns(a, rows, target_columns(np.arange(2, 6))),
                                      a[rows][:, 2:6].astype(np.float64))


@pytest.mark.parametrize("memory_gb", [None, 1e-6])
def test_a_sample_of_targets_scores_as_the_whole_evaluation_does(rng, memory_gb):
    n_train, n_test, m, dm, masks, margins, masks_e, margins_e = _synthetic_models(rng)
    full, full_t = streamed_evaluate(dm, masks_e, margins_e, n_train, masks, margins, np.arange(m))
    sample = evaluation_targets(n_train, n_train + n_test, 7, seed=1)
    part, part_t = streamed_evaluate(dm, masks_e, margins_e, n_train, masks, margins, np.arange(m),
                                     memory_gb=memory_gb, targets=sample)
    scored = np.zeros(n_train + n_test, bool)
    scored[sample] = True
    for key in ("lds", "mse", "baseline_lds"):
        np.testing.assert_allclose(part_t[key][scored], full_t[key][scored], rtol=1e-6, atol=1e-7)
        assert np.isnan(part_t[key][~scored]).all()
    assert part["sampled"] and not full["sampled"]
    assert part["train"]["n_targets"] == 7 and part["train"]["n_targets_total"] == n_train
    assert part["test"]["n_targets"] == 7 and part["test"]["n_targets_total"] == n_test
    assert part["test"]["lds_mean"] == pytest.approx(np.nanmean(full_t["lds"][sample[sample >= n_train]]))
    assert part["test"]["lds_se"] > 0


def test_evaluate_targets_samples_an_imported_run(imported):
    run_dir, _ = imported
    r = pipeline.EVALUATE.run(run_dir, pipeline.EvaluateConfig(lds_targets=5))
    assert r.train.n_targets == 5 and r.train.n_targets_total == 40 and r.train.sampled
    assert r.test.n_targets == 5 and r.test.sampled and r.test.lds_se is not None
    text = r.train.targets_text()
    assert text == "5 of 40" and "±" in r.train.lds_text()
    full = pipeline.EVALUATE.run(run_dir, pipeline.EvaluateConfig(lds_targets=0))
    assert full.train.n_targets == 40 and not full.train.sampled and "±" not in full.train.lds_text()
