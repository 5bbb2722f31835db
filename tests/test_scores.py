"""Named score matrices of a run: import (npy, npz, TRAK), LDS in `audit evaluate`, rankings, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from audit import pipeline, scores
from audit.errors import AuditError
from audit.reports import render
from audit.store import RunStore
from tests.cli_inprocess import call_main
from tests.conftest import assert_one_line_error, run_cli

N_TRAIN, N_TEST = 1297, 500


@pytest.fixture
def run_copy(small_digits_run, tmp_path):
    dst = tmp_path / "digits"
    shutil.copytree(small_digits_run, dst)
    return dst


def test_imported_datamodel_weights_get_the_datamodels_lds(run_copy, tmp_path):
    w = pipeline.load_datamodels(run_copy).weights  # [n_train + n_test, n_train]
    np.save(tmp_path / "dm_test.npy", w[N_TRAIN:].T)  # [n_train, n_test]: the usual case
    np.savez(tmp_path / "both.npz", scores=w.T, other=np.zeros(3))  # [n_train, n_train + n_test]
    assert scores.import_scores(tmp_path / "dm_test.npy", run_copy, n_train=N_TRAIN, n_test=N_TEST).targets == "test"
    info = scores.import_scores(tmp_path / "both.npz", run_copy, n_train=N_TRAIN, n_test=N_TEST, name="dm_all",
                                key="scores")
    assert info.targets == "all" and info.shape_given == [N_TRAIN, N_TRAIN + N_TEST]
    assert scores.names(run_copy) == ["dm_all", "dm_test"]
    np.testing.assert_array_equal(scores.load(run_copy, "dm_test").weights, w[N_TRAIN:])
    result = pipeline.EvaluateResult.from_json(pipeline.evaluate(run_copy, n_subsets=12))
    test, all_ = result.scores["dm_test"], result.scores["dm_all"]
    assert test.train is None and test.test.n_targets == N_TEST
    assert test.test.lds_mean == pytest.approx(result.test.lds_mean, abs=1e-6)
    for group in ("all", "train", "test"):
        assert getattr(all_, group).lds_mean == pytest.approx(getattr(result, group).lds_mean, abs=1e-6)
    # beside the datamodels and difference of means in the summary table
    table = pipeline.EVALUATE.summary(result)[0]
    assert any(row[0] == "dm_test (test)" for row in table.rows)
    assert not any(row[0] == "dm_test (train)" for row in table.rows)
    # and in the report's quality table
    ctx = render.Context(files=render.RunFiles(run_copy), run=RunStore.read_config(run_copy))
    section = str(render.quality_section(ctx))
    assert "dm_test (imported from dm_test.npy)" in section and "dm_all (imported from both.npz (scores))" in section


def test_trak_scores_file_and_folder(run_copy, tmp_path, rng):
    """TRAK's saver writes SAVE_DIR/scores/EXP.mmap with numpy's open_memmap: [n_train, n_targets], float16 or 32;
    SAVE_DIR/experiments.json lists the experiments."""
    save_dir = tmp_path / "trak_results"
    (save_dir / "scores").mkdir(parents=True)
    mm = np.lib.format.open_memmap(save_dir / "scores" / "quick.mmap", mode="w+", dtype=np.float16,
                                   shape=(N_TRAIN, N_TEST))
    w = pipeline.load_datamodels(run_copy).weights[N_TRAIN:].T
    mm[:] = (w + 0.001 * rng.standard_normal(w.shape)).astype(np.float16)
    mm.flush()
    (save_dir / "experiments.json").write_text(json.dumps({"quick": {"num_targets": N_TEST, "scores_finalized": 1}}))
    info = scores.import_scores(save_dir, run_copy, n_train=N_TRAIN, n_test=N_TEST, name="trak")
    assert info.name == "trak" and info.targets == "test"
    scores.import_scores(save_dir / "scores" / "quick.mmap", run_copy, n_train=N_TRAIN, n_test=N_TEST)
    assert scores.names(run_copy) == ["quick", "trak"]
    result = pipeline.EvaluateResult.from_json(pipeline.evaluate(run_copy, n_subsets=12))
    lds = result.scores["trak"].test.lds_mean
    assert lds is not None and -1 <= lds <= 1 and result.scores["trak"].test.n_lds > N_TEST // 2


def test_top_k_is_the_largest_scores():
    w = np.array([[0.1, 0.5, -1.0, 0.5], [3.0, 2.0, 1.0, 0.0]], np.float32)
    np.testing.assert_array_equal(scores.top_k(w, 3), [[1, 3, 0], [0, 1, 2]])


@pytest.mark.parametrize("make, match", [
    (lambda p: np.save(p / "s.npy", np.zeros((N_TRAIN, 7), np.float32)), "shape"),
    (lambda p: np.save(p / "s.npy", np.zeros((N_TRAIN, N_TEST), bool)), "bool"),
    (lambda p: np.save(p / "s.npy", np.full((N_TRAIN, N_TEST), np.nan, np.float32)), "non-finite"),
    (lambda p: (p / "s.npy").write_bytes(b"not an array"), "not a readable"),
    (lambda p: np.savez(p / "s.npz", a=np.zeros((N_TRAIN, N_TEST)), b=np.zeros(2)), "--key"),
])
def test_bad_score_files_write_nothing(run_copy, tmp_path, make, match):
    make(tmp_path)
    src = next(tmp_path.glob("s.*"))
    with pytest.raises(AuditError, match=match):
        scores.import_scores(src, run_copy, n_train=N_TRAIN, n_test=N_TEST)
    assert not (run_copy / "scores").exists() or not any((run_copy / "scores").iterdir())
    res = call_main("import-scores", str(src), "--run", str(run_copy))
    assert_one_line_error(res)


def test_bad_names_and_console_script(run_copy, tmp_path):
    np.save(tmp_path / "s.npy", np.zeros((N_TRAIN, N_TEST), np.float32))
    for name in ("datamodels", "Bad Name"):
        with pytest.raises(AuditError, match="score name"):
            scores.import_scores(tmp_path / "s.npy", run_copy, n_train=N_TRAIN, n_test=N_TEST, name=name)
    proc = run_cli("import-scores", tmp_path / "s.npy", "--run", run_copy, "--name", "random")
    assert_one_line_error(proc)
    assert "built-in" in proc.stderr and not (run_copy / "scores" / "random.npy").exists()
    proc = run_cli("import-scores", tmp_path / "missing.npy", "--run", run_copy)
    assert_one_line_error(proc)
    ok = call_main("import-scores", str(tmp_path / "s.npy"), "--run", str(run_copy), "--name", "zeros")
    assert ok.returncode == 0, ok.stderr
    assert scores.load(run_copy, "zeros").weights.shape == (N_TEST, N_TRAIN)


def test_import_never_replaces_a_computed_matrix_nor_a_step_an_imported_one(run_copy, tmp_path):
    computed = np.ones((N_TRAIN, N_TEST), np.float32)
    scores.save_matrix(run_copy, "tracin", computed, n_train=N_TRAIN, n_test=N_TEST, source="audit gradients",
                       how="TracIn-CP, last layer")
    np.save(tmp_path / "tracin.npy", np.zeros((N_TRAIN, N_TEST), np.float32))
    proc = run_cli("import-scores", tmp_path / "tracin.npy", "--run", run_copy)
    assert_one_line_error(proc)
    assert "audit gradients" in proc.stderr and "--name" in proc.stderr
    assert np.array_equal(scores.load(run_copy, "tracin").weights, computed.T)  # the computed scores survive
    ok = call_main("import-scores", str(tmp_path / "tracin.npy"), "--run", str(run_copy), "--name", "mine")
    assert ok.returncode == 0, ok.stderr
    again = call_main("import-scores", str(tmp_path / "tracin.npy"), "--run", str(run_copy), "--name", "mine")
    assert again.returncode == 0, again.stderr  # re-importing a name replaces the earlier import
    with pytest.raises(AuditError, match="came from"):
        scores.save_matrix(run_copy, "mine", computed, n_train=N_TRAIN, n_test=N_TEST, source="audit gradients",
                           how="TracIn-CP, last layer")
    assert not scores.load(run_copy, "mine").weights.any()  # the import survives a step of the same name


def test_a_broken_matrix_names_the_broken_file_and_a_fix_that_works(run_copy, tmp_path):
    scores.save_matrix(run_copy, "tracin", np.ones((N_TRAIN, N_TEST), np.float32), n_train=N_TRAIN, n_test=N_TEST,
                       source="audit gradients", how="TracIn-CP, last layer")
    npy, meta = scores.matrix_path(run_copy, "tracin"), scores.info_path(run_copy, "tracin")
    npy.write_bytes(npy.read_bytes()[:5000])
    with pytest.raises(AuditError, match="tracin.npy is unreadable") as e:
        scores.load(run_copy, "tracin")
    assert f"audit gradients {run_copy}` again" in str(e.value) and "import-scores" not in str(e.value)
    meta.write_text('{"name":')
    with pytest.raises(AuditError, match=r"tracin\.json is unreadable"):
        scores.load(run_copy, "tracin")
