import numpy as np

from audit.seeding import model_seed, subset_mask
from audit.training.base import correct_class_margins
from audit.training.mlp import MLPTrainer
from tests.conftest import FAST_MLP


def _masks(ds, rows):
    return np.stack([subset_mask(0, 0, i, ds.n_train, 0.5) for i in rows])


def test_margins_definition():
    logits = np.array([[[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]]], np.float32)
    m = correct_class_margins(logits, np.array([0, 2]))
    assert np.allclose(m, [[1.0, -4.0]])
    logits[0, 1, 0] = np.nan
    assert np.isnan(correct_class_margins(logits, np.array([0, 2]))[0, 1])


def test_deterministic_and_independent_of_block(digits):
    trainer = MLPTrainer(**FAST_MLP)
    rows = [0, 1, 2]
    seeds = [model_seed(0, 0, i) for i in rows]
    a = trainer.train_block(digits, _masks(digits, rows), seeds).logits(digits.x_test)
    b = trainer.train_block(digits, _masks(digits, rows), seeds).logits(digits.x_test)
    assert np.array_equal(a, b)
    alone = trainer.train_block(digits, _masks(digits, [1]), seeds[1:2]).logits(digits.x_test)
    np.testing.assert_allclose(alone[0], a[1], rtol=1e-4, atol=1e-4)
    assert not np.allclose(a[0], a[1])


def test_models_see_only_their_subset(digits):
    """Labels of examples outside a model's subset cannot change that model."""
    trainer = MLPTrainer(**FAST_MLP)
    masks = _masks(digits, [5, 6])
    seeds = [11, 12]
    base = trainer.train_block(digits, masks, seeds).logits(digits.x_test)
    labels = np.tile(digits.y_train, (2, 1))
    labels[~masks] = (labels[~masks] + 3) % 10
    same = trainer.train_block(digits, masks, seeds, labels=labels).logits(digits.x_test)
    assert np.array_equal(base, same)
    labels[masks] = (labels[masks] + 3) % 10  # now change labels inside the subset: results must move
    moved = trainer.train_block(digits, masks, seeds, labels=labels).logits(digits.x_test)
    assert not np.allclose(base, moved)


def test_learns_digits(digits):
    trainer = MLPTrainer(hidden=64, epochs=10)
    models = trainer.train_block(digits, _masks(digits, range(4)), [1, 2, 3, 4])
    margins = correct_class_margins(models.logits(digits.x_test), digits.y_test)
    assert (margins > 0).mean() > 0.9
    assert models.features(digits.x_test[:7]).shape == (4, 7, 64)


def test_variable_subset_sizes(digits):
    """Blocks may mix subset sizes (the brittleness audit removes k examples per model)."""
    masks = np.ones((2, digits.n_train), bool)
    masks[1, :300] = False
    out = MLPTrainer(**FAST_MLP).train_block(digits, masks, [1, 2]).logits(digits.x_test[:5])
    assert out.shape == (2, 5, 10) and np.isfinite(out).all()


def test_a_handful_of_steps_trains(digits):
    """Tiny datasets (e.g. the FMoW fixture) give ≤ 4 optimiser steps in all; the schedule must cope."""
    masks = _masks(digits, [0, 1])
    for epochs in (1, 2, 4):
        out = MLPTrainer(hidden=16, epochs=epochs, batch_size=4096).train_block(digits, masks, [1, 2])
        assert np.isfinite(out.logits(digits.x_test[:5])).all()
