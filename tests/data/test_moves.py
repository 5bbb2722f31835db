"""One-pixel moves: direction, repeated edges, dtype, and the moves planting and the pixel baseline share."""

import numpy as np
import pytest

from audit.data.moves import ONE_PIXEL_MOVES, shift_images


def test_a_move_shifts_content_down_and_right_and_repeats_the_edge():
    img = np.arange(12, dtype=np.uint8).reshape(1, 3, 4, 1)
    out = shift_images(img, 1, 1)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert out[0, 1:, 1:, 0].tolist() == img[0, :-1, :-1, 0].tolist()  # content moved by one row and column
    assert out[0, 0, 1:, 0].tolist() == img[0, 0, :-1, 0].tolist()  # the uncovered top row repeats the edge
    assert out[0, 1:, 0, 0].tolist() == img[0, :-1, 0, 0].tolist()


def test_opposite_moves_undo_each_other_away_from_the_border():
    rng = np.random.default_rng(0)
    x = rng.random((2, 6, 7, 3)).astype(np.float32)
    for dy, dx in ONE_PIXEL_MOVES:
        back = shift_images(shift_images(x, dy, dx), -dy, -dx)
        np.testing.assert_array_equal(back[:, 1:-1, 1:-1], x[:, 1:-1, 1:-1])


def test_the_eight_moves_are_the_neighbours_and_bigger_moves_are_refused():
    assert sorted(ONE_PIXEL_MOVES) == sorted((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
    with pytest.raises(ValueError):
        shift_images(np.zeros((1, 4, 4, 1)), 2, 0)
