"""The batched CPU convolutional trainer: a model in a block is the model alone, it sees only its subset
(labels and input statistics), bad settings and flat features are one line, and `--trainer cnn` trains."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from audit.errors import AuditError
from audit.execution import BlockTask, train_task
from audit.seeding import model_seed, subset_mask
from audit.training.base import correct_class_margins
from audit.training.cnn import CNNTrainer, channel_statistics
from audit.training.registry import make_trainer
from tests.conftest import assert_one_line_error, run_cli

FAST_CNN = {"channels": 4, "epochs": 2, "batch_size": 64, "lr": 0.1}


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    """Small grouped convolutions: one thread is faster, and stable on a busy machine."""


def _masks(ds, rows):
    return np.stack([subset_mask(0, 0, i, ds.n_train, 0.5) for i in rows])


def test_a_model_in_a_block_is_the_model_alone(digits):
    trainer = CNNTrainer(**FAST_CNN)
    rows = [0, 1, 2]
    seeds = [model_seed(0, 0, i) for i in rows]
    block = trainer.train_block(digits, _masks(digits, rows), seeds)
    a = block.logits(digits.x_test)
    assert np.array_equal(a, trainer.train_block(digits, _masks(digits, rows), seeds).logits(digits.x_test))
    alone = trainer.train_block(digits, _masks(digits, [1]), seeds[1:2])
    np.testing.assert_allclose(alone.logits(digits.x_test)[0], a[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alone.features(digits.x_test)[0], block.features(digits.x_test)[1], rtol=1e-5,
                               atol=1e-5)
    assert not np.allclose(a[0], a[1])


def test_labels_outside_the_subset_do_not_change_the_model(digits):
    trainer = CNNTrainer(**FAST_CNN)
    masks = _masks(digits, [5, 6])
    base = trainer.train_block(digits, masks, [11, 12]).logits(digits.x_test)
    labels = np.tile(digits.y_train, (2, 1))
    labels[~masks] = (labels[~masks] + 3) % 10
    assert np.array_equal(base, trainer.train_block(digits, masks, [11, 12], labels=labels).logits(digits.x_test))
    labels[masks] = (labels[masks] + 3) % 10
    assert not np.allclose(base, trainer.train_block(digits, masks, [11, 12], labels=labels).logits(digits.x_test))


def test_each_model_normalises_with_its_own_subset_only(digits):
    """Brightening the images outside a model's subset changes neither its statistics nor the model."""
    masks = _masks(digits, [3])
    x = torch.from_numpy(digits.x_train.astype(np.float32).transpose(0, 3, 1, 2))
    mean, std = channel_statistics(x, masks)
    inside = digits.x_train[masks[0]].astype(np.float64)
    np.testing.assert_allclose(mean[0, 0], inside.mean(), rtol=1e-5)
    assert abs(float(std[0, 0]) - inside.std()) < 0.01 * inside.std()  # sqrt(var + small floor)
    brighter = digits.x_train.copy()
    brighter[~masks[0]] = np.minimum(brighter[~masks[0]].astype(np.int64) * 2 + 40, 255).astype(np.uint8)
    moved = replace(digits, x_train=brighter)
    np.testing.assert_array_equal(channel_statistics(torch.from_numpy(
        brighter.astype(np.float32).transpose(0, 3, 1, 2)), masks)[0], mean)
    trainer = CNNTrainer(**FAST_CNN)
    assert np.array_equal(trainer.train_block(digits, masks, [7]).logits(digits.x_test),
                          trainer.train_block(moved, masks, [7]).logits(digits.x_test))


def test_learns_digits_and_keeps_checkpoints(digits):
    trainer = CNNTrainer(channels=8, epochs=12)
    models = trainer.train_block(digits, _masks(digits, range(2)), [1, 2], checkpoints=True)
    margins = correct_class_margins(models.logits(digits.x_test), digits.y_test)
    assert (margins > 0).mean() > 0.9
    assert models.features(digits.x_test[:7]).shape == (2, 7, 4 * 16)  # 2x2 grid of the 16 second-layer channels
    assert len(models.checkpoints) == 12
    assert np.array_equal(models.checkpoints[-1][1].logits(digits.x_test), models.logits(digits.x_test))
    # what the gradient baselines read: logits, features and the epoch's learning rate after every epoch
    task = BlockTask(masks=np.ones((1, digits.n_train), bool), seeds=[3], targets=np.arange(5), outputs="checkpoints")
    out = train_task(digits, CNNTrainer(**FAST_CNN), task)
    assert out.shape == (1, 2, 5, 10 + 4 * 8 + 1) and np.isfinite(out).all() and out[0, 0, 0, -1] > 0


def test_variable_subset_sizes_and_odd_image_sizes(digits):
    masks = np.ones((2, digits.n_train), bool)
    masks[1, :300] = False
    odd = replace(digits, x_train=digits.x_train[:, :7, :5], x_test=digits.x_test[:, :7, :5])  # 7x5 images
    for ds in (digits, odd):
        out = CNNTrainer(**FAST_CNN).train_block(ds, masks, [1, 2]).logits(ds.x_test[:5])
        assert out.shape == (2, 5, 10) and np.isfinite(out).all()


@pytest.mark.parametrize("options,match", [({"channels": 0}, "channels must be a whole number >= 1"),
                                           ({"epochs": 2.5}, "epochs must be a whole number"),
                                           ({"lr": -1.0}, "lr must be a finite number > 0"),
                                           ({"momentum": 1.0}, "momentum must be a finite number >= 0 and < 1"),
                                           ({"hidden": 64}, "unknown option for the cnn trainer")])
def test_bad_settings_are_one_line(options, match):
    with pytest.raises(AuditError, match=match) as err:
        make_trainer("cnn", **options)
    assert "\n" not in str(err.value)


def test_flat_features_are_one_line(digits):
    flat = replace(digits, x_train=digits.x_train.reshape(digits.n_train, -1),
                   x_test=digits.x_test.reshape(digits.n_test, -1))
    with pytest.raises(AuditError, match="needs images.*use --trainer mlp"):
        CNNTrainer(**FAST_CNN).train_block(flat, _masks(flat, [0]), [1])


def test_cli_trains_digits_with_the_cnn_and_refuses_flat_npz(tmp_path, digits):
    opts = [a for k, v in FAST_CNN.items() for a in ("-o", f"{k}={v}")]
    run = tmp_path / "run"
    proc = run_cli("train", "digits", "--trainer", "cnn", "--run", str(run), "-m", "4", "--block-size", "2", *opts)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "run.json").read_text())["trainer"] == {"name": "cnn", **FAST_CNN, "momentum": 0.9,
                                                                     "weight_decay": 5e-4, "label_smoothing": 0.0}
    assert np.load(run / "done.npy").all() and np.isfinite(np.load(run / "margins.npy")).all()
    npz = tmp_path / "feat.npz"
    np.savez(npz, x_train=digits.x_train[:100].reshape(100, -1), y_train=digits.y_train[:100],
             x_test=digits.x_test[:20].reshape(20, -1), y_test=digits.y_test[:20])
    proc = run_cli("train", f"npz:{npz}", "--trainer", "cnn", "--run", str(tmp_path / "flat"), "-m", "2", *opts)
    assert_one_line_error(proc)
    assert "needs images" in proc.stderr and "--trainer mlp" in proc.stderr
    assert not (tmp_path / "flat").exists()  # refused before the run directory was made
