"""The embedded digits dataset and Dataset validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from audit.data import load_dataset
from audit.data.dataset import Dataset, validate
from audit.data.digits import load_digits_dataset
from audit.errors import AuditError


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def _error(ds: Dataset) -> str:
    with pytest.raises(AuditError) as e:
        validate(ds)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_shapes_and_dtypes(digits):
    assert digits.x_train.shape == (1297, 8, 8, 1) and digits.x_test.shape == (500, 8, 8, 1)
    assert digits.x_train.dtype == np.uint8 and digits.y_train.dtype == np.int64
    assert digits.classes == tuple(str(i) for i in range(10))
    assert digits.is_image and digits.name == "digits"
    assert digits.x_train.max() > 200  # 0..16 was scaled up to 0..255
    assert sorted(np.unique(digits.y_test).tolist()) == list(range(10))


def test_split_is_fixed_across_calls(digits):
    again = load_digits_dataset("digits")
    assert np.array_equal(again.x_train, digits.x_train) and np.array_equal(again.y_test, digits.y_test)
    assert again.fingerprint() == digits.fingerprint()


def test_validate_rejects_nan(digits):
    x = digits.x_train[:20].astype(np.float32)
    x[7, 2, 3, 0] = np.nan
    msg = _error(dataclasses.replace(digits, x_train=x, y_train=digits.y_train[:20],
                                     x_test=digits.x_test.astype(np.float32)))
    assert "x_train[7]" in msg


def test_validate_rejects_labels_out_of_range(digits):
    y = digits.y_test.copy()
    y[11] = 10
    msg = _error(dataclasses.replace(digits, y_test=y))
    assert "y_test[11] = 10" in msg


def test_validate_rejects_shape_mismatch(digits):
    assert "they must match" in _error(dataclasses.replace(digits, y_train=digits.y_train[:-1]))
    assert "must match" in _error(dataclasses.replace(digits, x_test=digits.x_test[:, :4]))


def test_validate_rejects_metadata_length(digits):
    ds = dataclasses.replace(digits, meta={"lat_train": np.zeros(3)})
    assert "lat_train" in _error(ds)
