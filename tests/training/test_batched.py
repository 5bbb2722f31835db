"""What the batched CPU trainers share: random translation of the training images (the `translate` option)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from audit.errors import AuditError
from audit.seeding import model_seed, subset_mask
from audit.training.batched import as_channels_first, translated_batches
from audit.training.registry import make_trainer
from tests.conftest import FAST_MLP

FAST = {"mlp": FAST_MLP, "cnn": {"channels": 4, "epochs": 2, "batch_size": 64, "lr": 0.1}}


def _moved(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` [C, H, W] moved down ``dy`` and right ``dx`` pixels, the uncovered border 0."""
    out = torch.zeros_like(image)
    h, w = image.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


@pytest.mark.parametrize("shift", [1, 2])
def test_each_image_is_moved_by_at_most_shift_pixels(shift):
    images = torch.arange(1, 1 + 6 * 2 * 5 * 7, dtype=torch.float32).reshape(6, 2, 5, 7)  # no zero pixel
    gens = [torch.Generator().manual_seed(s) for s in (4, 5, 6)]
    idx = torch.tensor([[0, 3, 5, 5], [1, 1, 2, 4], [0, 0, 0, 0]])
    out = translated_batches(images, shift, gens)(idx)
    assert out.shape == (3, 4, 2, 5, 7)
    moves = set()
    for b in range(3):
        for j in range(4):
            found = [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)
                     if torch.equal(out[b, j], _moved(images[idx[b, j]], dy, dx))]
            assert len(found) == 1
            moves.add(found[0])
    assert len(moves) > 3  # the moves vary between images and models
    again = translated_batches(images, shift, [torch.Generator().manual_seed(s) for s in (4, 5, 6)])(idx)
    assert torch.equal(out, again)  # drawn from the models' own generators
    assert torch.equal(translated_batches(images, 0, gens)(idx), images[idx])


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_a_translated_model_in_a_block_is_the_model_alone(digits, name, torch_one_thread):
    trainer = make_trainer(name, **FAST[name], translate=1)
    rows = [0, 1, 2]
    seeds = [model_seed(0, 0, i) for i in rows]
    masks = np.stack([subset_mask(0, 0, i, digits.n_train, 0.5) for i in rows])
    block = trainer.train_block(digits, masks, seeds).logits(digits.x_test)
    alone = trainer.train_block(digits, masks[1:2], seeds[1:2]).logits(digits.x_test)
    np.testing.assert_allclose(alone[0], block[1], rtol=1e-4, atol=1e-4)
    still = make_trainer(name, **FAST[name]).train_block(digits, masks, seeds).logits(digits.x_test)
    assert not np.allclose(block, still, atol=1e-3)  # the moves changed what the models learnt
    if name == "mlp":  # (two epochs of the small CNN learn little, moved or not)
        assert (block.argmax(-1) == digits.y_test).mean() > 0.6


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("value", [-1, 5, 1.5, True])
def test_translate_out_of_range_is_one_line(name, value):
    with pytest.raises(AuditError, match="translate must be a whole number of pixels from 0 to 4") as err:
        make_trainer(name, translate=value)
    assert "\n" not in str(err.value)


def test_the_mlp_moves_only_images(digits):
    flat = replace(digits, x_train=digits.x_train.reshape(digits.n_train, -1),
                   x_test=digits.x_test.reshape(digits.n_test, -1))
    with pytest.raises(AuditError, match="translate moves images.*leave translate at 0"):
        make_trainer("mlp", **FAST_MLP, translate=1).train_block(flat, np.ones((1, flat.n_train), bool), [1])


def test_channels_first():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    assert torch.equal(as_channels_first(x), torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_translate_is_recorded_only_when_set(name):
    """A run made before the option existed records no translate: it must still be the same run."""
    assert "translate" not in make_trainer(name).config()
    assert make_trainer(name, translate=2).config()["translate"] == 2


def test_the_cli_refuses_to_translate_flat_features_before_making_the_run(tmp_path, digits):
    from tests.conftest import assert_one_line_error, run_cli

    npz = tmp_path / "feat.npz"
    np.savez(npz, x_train=digits.x_train[:100].reshape(100, -1), y_train=digits.y_train[:100],
             x_test=digits.x_test[:20].reshape(20, -1), y_test=digits.y_test[:20])
    proc = run_cli("train", f"npz:{npz}", "--run", str(tmp_path / "flat"), "-m", "2", "-o", "translate=1")
    assert_one_line_error(proc)
    assert "translate moves images" in proc.stderr and not (tmp_path / "flat").exists()
