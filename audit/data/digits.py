"""scikit-learn's digits (1,797 real 8x8 images): the embedded default dataset."""

from __future__ import annotations

import numpy as np

from audit.data.dataset import Dataset

DIGITS_TEST_SIZE = 500
DIGITS_SPLIT_SEED = 0


def load_digits_dataset(spec: str = "digits") -> Dataset:
    """Digits as uint8 images [N, 8, 8, 1] (0..16 scaled to 0..255), split with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.clip(bunch.images * 16.0, 0, 255).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=DIGITS_TEST_SIZE,
                                              random_state=DIGITS_SPLIT_SEED, stratify=labels)
    return Dataset(spec=spec, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
                   classes=tuple(str(c) for c in range(10)))
