"""Full-data reference models go through the executor: same models as a direct trainer call,
resumable per block, and the Ray engine gives the local engine's reference."""

import shutil

import numpy as np
import pytest

from audit.errors import AuditError
from audit.execution import run_blocks
from audit.reference import REFERENCE_DIR, REFERENCE_FILE, ReferenceStore, load_reference, reference_models, unit_rows
from audit.seeding import STREAM_REFERENCE, model_seed
from audit.store import RunStore
from audit.training.registry import trainer_from_config


@pytest.fixture
def run(tmp_path, small_digits_run):
    """A writable copy of the small digits run without its reference models."""
    dst = tmp_path / "run"
    shutil.copytree(small_digits_run, dst, ignore=shutil.ignore_patterns(REFERENCE_FILE, REFERENCE_DIR))
    return RunStore.open(dst)


def test_reference_equals_the_trainers_full_data_models(run, digits, torch_one_thread):
    ref = reference_models(run, digits, n_models=2)
    trainer = trainer_from_config(run.config.trainer)
    seeds = [model_seed(run.config.seed, STREAM_REFERENCE, i) for i in range(2)]
    models = trainer.train_block(digits, np.ones((2, digits.n_train), bool), seeds)
    x = digits.targets_x()
    np.testing.assert_array_equal(ref.mean_logits, models.logits(x).mean(0).astype(np.float32))
    expected = np.concatenate([unit_rows(f) for f in models.features(x)], axis=1) / np.sqrt(2)
    np.testing.assert_allclose(ref.features, expected, rtol=1e-6, atol=1e-7)
    assert not (run.path / REFERENCE_DIR).exists()  # the blocks are folded into reference.npz
    assert load_reference(run.path).n_models == 2


def test_reference_blocks_resume(run, digits, torch_one_thread):
    """Blocks finished before an interruption are not trained again."""
    blocks = ReferenceStore(run, n_models=3)
    blocks.block_size = 1  # one model per block, to interrupt between them
    trainer = trainer_from_config(run.config.trainer)
    assert run_blocks(blocks, digits, trainer, max_blocks=2) == 2 and blocks.pending_blocks() == [2]
    assert run_blocks(blocks, digits, trainer) == 1 and blocks.pending_blocks() == []
    out = blocks.outputs()
    assert out.shape[:2] == (3, digits.n_train + digits.n_test) and out.shape[2] > digits.n_classes


def test_reference_blocks_for_other_settings_are_discarded(run, digits):
    blocks = ReferenceStore(run, n_models=2)
    (blocks.path / "block_0.npy").write_bytes(b"stale")
    again = ReferenceStore(run, n_models=3)  # other settings: the folder is a cache, it starts over
    assert again.pending_blocks() == [0] and not (again.path / "block_0.npy").exists()


def test_diverged_reference_is_one_error(run, digits, monkeypatch):
    import audit.execution as execution

    monkeypatch.setattr(execution, "train_task", lambda ds, trainer, task, progress=None: np.full(
        (len(task.seeds), ds.n_train + ds.n_test, ds.n_classes + 4), np.nan, np.float32))
    with pytest.raises(AuditError, match="reference model diverged"):
        reference_models(run, digits, n_models=1)
    assert not (run.path / REFERENCE_FILE).exists() and not (run.path / REFERENCE_DIR).exists()


def test_ray_reference_equals_local(tmp_path, run, digits, local_ray, torch_one_thread):
    local = reference_models(run, digits, n_models=2)
    (run.path / REFERENCE_FILE).unlink()
    remote = reference_models(run, digits, n_models=2, engine="ray")
    np.testing.assert_allclose(remote.mean_logits, local.mean_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(remote.features, local.features, rtol=1e-5, atol=1e-5)
