"""One-pixel moves of images ``[N, H, W, C]``, shared by planting (the shifted copies) and the pixel
leakage baseline (the variants that undo them): edge pixels repeated, so a move adds no artificial border."""

from __future__ import annotations

import numpy as np

ONE_PIXEL_MOVES = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))  # the 8 neighbours


def shift_images(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``images`` ``[N, H, W, C]`` moved by ``(dy, dx)`` pixels, each in {-1, 0, 1}: content moves down by ``dy``
    and right by ``dx``; the row or column uncovered repeats the edge. Same dtype as the input."""
    if dy not in (-1, 0, 1) or dx not in (-1, 0, 1):
        raise ValueError(f"a one-pixel move is in {{-1, 0, 1}} along each axis (got {(dy, dx)})")
    x = np.asarray(images)
    h, w = x.shape[1:3]
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return padded[:, 1 - dy:1 - dy + h, 1 - dx:1 - dx + w]
