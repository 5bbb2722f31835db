"""Planted duplicates as a dataset option (audit/data/planting.py)."""

from __future__ import annotations

import numpy as np
import pytest

from audit.data import load_dataset
from audit.data.planting import PLANTED_META, apply_planting, plant_options, planted_pairs, split_plant_options
from audit.errors import AuditError
from tests.conftest import FIXTURES

FMOW = f"fmow:{FIXTURES / 'fmow'}"


def test_digits_plant_appends_close_copies_with_test_labels(digits):
    ds = load_dataset("digits", **plant_options(12, seed=3))
    pairs = planted_pairs(ds)
    assert pairs.shape == (12, 2) and planted_pairs(digits) is None
    assert ds.n_train == digits.n_train + 12 and ds.n_test == digits.n_test
    assert np.array_equal(ds.x_train[:digits.n_train], digits.x_train)       # originals untouched, in place
    assert np.array_equal(pairs[:, 1], digits.n_train + np.arange(12))
    assert len(set(pairs[:, 0].tolist())) == 12
    assert np.array_equal(ds.y_train[pairs[:, 1]], digits.y_test[pairs[:, 0]])
    assert ds.x_train.dtype == digits.x_train.dtype
    # each copy is nearer to its own test image than to any other test image, yet not identical
    copies = ds.x_train[pairs[:, 1]].reshape(12, -1).astype(np.float64)
    tests = digits.x_test.reshape(digits.n_test, -1).astype(np.float64)
    dist = ((copies[:, None, :] - tests[None, :, :]) ** 2).sum(-1)
    assert np.array_equal(dist.argmin(1), pairs[:, 0])
    assert (dist[np.arange(12), pairs[:, 0]] > 0).all()


def test_planting_is_deterministic_and_seeded():
    a = load_dataset("digits", plant=8, plant_seed=1)
    b = load_dataset("digits", plant=8, plant_seed=1)
    c = load_dataset("digits", plant=8, plant_seed=2)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert not np.array_equal(planted_pairs(a)[:, 0], planted_pairs(c)[:, 0])


def test_no_noise_no_shift_gives_exact_copies(digits):
    ds = apply_planting(digits, plant=5, plant_noise=0.0, plant_shift=False)
    pairs = planted_pairs(ds)
    assert np.array_equal(ds.x_train[pairs[:, 1]], digits.x_test[pairs[:, 0]])


def test_fmow_copies_get_the_test_coordinates():
    base = load_dataset(FMOW)
    ds = load_dataset(FMOW, plant=3)
    pairs = planted_pairs(ds)
    for key in ("lat", "lon", "image_id"):
        assert len(ds.meta[f"{key}_train"]) == ds.n_train
        assert np.array_equal(ds.meta[f"{key}_train"][:base.n_train], base.meta[f"{key}_train"])
        assert np.array_equal(ds.meta[f"{key}_train"][pairs[:, 1]], base.meta[f"{key}_test"][pairs[:, 0]])
    assert ds.meta[PLANTED_META].tolist() == [-1] * base.n_train + pairs[:, 0].tolist()


def test_split_plant_options():
    loader, plant = split_plant_options({"year": 2012, "plant": 4, "plant_noise": 1.0})
    assert loader == {"year": 2012} and plant == {"plant": 4, "plant_noise": 1.0}


@pytest.mark.parametrize("options,needle", [
    ({"plant": "many"}, "number of test images"),
    ({"plant": 10_000}, "cannot plant 10000 duplicates from 500"),
    ({"plant": 3, "plant_noise": -1.0}, "noise = -1.0"),
])
def test_bad_plant_options(options, needle):
    with pytest.raises(AuditError, match=needle):
        load_dataset("digits", **options)


def test_plant_zero_is_refused_when_asked_for_directly(digits):
    assert load_dataset("digits", plant=0).fingerprint() == digits.fingerprint()   # option off
    with pytest.raises(AuditError, match="plant at least 1"):
        apply_planting(digits, plant=0)


def test_plant_once(digits):
    with pytest.raises(AuditError, match="plant once"):
        apply_planting(apply_planting(digits, plant=2), plant=2)
