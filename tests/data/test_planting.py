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


# ----- perturbation families: what a real near-duplicate shows ------------------------------
def test_each_family_changes_its_copies_as_named(digits):
    from audit.data.planting import PLANT_FAMILIES, planted_families

    fams = "noise,shift,brightness,crop,flip,jpeg"
    ds = load_dataset("digits", plant=60, plant_seed=4, plant_families=fams)
    pairs, codes = planted_pairs(ds), planted_families(ds)
    assert np.bincount(codes, minlength=len(PLANT_FAMILIES)).tolist() == [10] * 6  # in turn over the copies
    assert load_dataset("digits", plant=60, plant_seed=4, plant_families=fams).fingerprint() == ds.fingerprint()
    for code, family in enumerate(PLANT_FAMILIES):
        rows = np.flatnonzero(codes == code)
        test = digits.x_test[pairs[rows, 0]].astype(np.float64)
        copy = ds.x_train[pairs[rows, 1]].astype(np.float64)
        assert not np.array_equal(test, copy), family
        if family == "flip":
            assert np.array_equal(copy, test[:, :, ::-1])
        if family == "shift":  # the same image moved by one pixel: some shift matches away from the edges
            inner = test[:, 1:-1, 1:-1]
            assert all(any(np.array_equal(c[1 + dy:7 + dy, 1 + dx:7 + dx], t)
                           for dy in (-1, 0, 1) for dx in (-1, 0, 1)) for c, t in zip(copy, inner))
        if family == "brightness":  # a linear change of the pixels (up to rounding and clipping)
            r = [np.corrcoef(c.ravel(), t.ravel())[0, 1] for c, t in zip(copy, test)]
            assert min(r) > 0.98
    assert ds.meta["planted_family_of_train"][:digits.n_train].tolist() == [-1] * digits.n_train


@pytest.mark.parametrize("families,needle", [("noise,blur", "choose among"), ("", "choose among")])
def test_unknown_family_is_one_error(families, needle):
    with pytest.raises(AuditError, match=needle):
        load_dataset("digits", plant=4, plant_families=families)


def test_feature_vectors_take_only_noise_and_brightness():
    from audit.data.planting import parse_families

    assert parse_families("noise,brightness", is_image=False) == ("noise", "brightness")
    with pytest.raises(AuditError, match="feature vectors take only"):
        parse_families("noise,shift", is_image=False)


def test_default_families_flip_only_where_classes_allow(digits):
    from audit.data.planting import default_families

    assert "flip" not in default_families(digits)  # a mirrored digit is another symbol
    assert "shift" in default_families(digits) and "jpeg" in default_families(digits)
