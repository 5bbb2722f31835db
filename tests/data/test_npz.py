"""npz:FILE loader: users' own arrays, and its error cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audit.data import load_dataset
from audit.data.npz import load_npz
from audit.errors import AuditError


def _arrays(rng: np.random.Generator | None = None, **over) -> dict:
    rng = rng or np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, size=(12, 6, 5), dtype=np.uint8),
                  y_train=np.arange(12) % 3,
                  x_test=rng.integers(0, 256, size=(4, 6, 5), dtype=np.uint8),
                  y_test=np.array([0, 1, 2, 1]))
    arrays.update(over)
    return {k: v for k, v in arrays.items() if v is not None}


def _write(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "mine.npz"
    np.savez(path, **arrays)
    return path


def _error(path: Path) -> str:
    with pytest.raises(AuditError) as e:
        load_npz(str(path), spec=f"npz:{path}")
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_grayscale_images_get_a_channel_axis(tmp_path):
    arrays = _arrays()
    ds = load_npz(str(_write(tmp_path, **arrays)), spec="npz:x")
    assert ds.x_train.shape == (12, 6, 5, 1) and ds.x_train.dtype == np.uint8
    assert np.array_equal(ds.x_test[..., 0], arrays["x_test"])
    assert ds.y_train.dtype == np.int64 and ds.classes == ("0", "1", "2")
    assert ds.meta == {}


def test_color_images_class_names_and_load_dataset(tmp_path):
    rng = np.random.default_rng(1)
    path = _write(tmp_path, **_arrays(x_train=rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8),
                                      x_test=rng.integers(0, 256, (4, 4, 4, 3), dtype=np.uint8)),
                  class_names=np.array(["cat", "dog", "emu", "fox"]))
    ds = load_dataset(f"npz:{path}")
    assert ds.x_train.shape == (12, 4, 4, 3)
    assert ds.classes == ("cat", "dog", "emu", "fox")
    assert ds.name == "mine"


def test_float_features_kept_as_float32(tmp_path):
    x_train = np.linspace(-3, 7, 12 * 5).reshape(12, 5)
    path = _write(tmp_path, **_arrays(x_train=x_train, x_test=x_train[:4] * 2))
    ds = load_dataset(f"npz:{path}")
    assert ds.x_train.dtype == np.float32 and ds.x_train.shape == (12, 5)
    assert np.allclose(ds.x_train, x_train)  # not rescaled


def test_lat_lon_meta(tmp_path):
    lat, lon = np.linspace(-60, 60, 16), np.linspace(-170, 170, 16)
    path = _write(tmp_path, **_arrays(), lat_train=lat[:12], lon_train=lon[:12],
                  lat_test=lat[12:].astype(np.float32), lon_test=lon[12:])
    ds = load_dataset(f"npz:{path}")
    assert set(ds.meta) == {"lat_train", "lon_train", "lat_test", "lon_test"}
    assert ds.meta["lat_test"].dtype == np.float64
    assert np.allclose(ds.meta["lon_train"], lon[:12])


def test_missing_file(tmp_path):
    assert "nope.npz" in _error(tmp_path / "nope.npz")


def test_not_a_zip(tmp_path):
    path = tmp_path / "mine.npz"
    path.write_text("x_train,y_train\n1,2\n")
    assert "not a readable .npz" in _error(path)


def test_single_npy_array(tmp_path):
    path = tmp_path / "mine.npy"
    np.save(path, np.zeros(3))
    assert ".npy" in _error(path)


def test_missing_key(tmp_path):
    msg = _error(_write(tmp_path, **_arrays(y_test=None)))
    assert "y_test" in msg and "x_train" in msg


def test_pickled_object_array(tmp_path):
    path = _write(tmp_path, **_arrays(y_train=np.array([{"a": 1}] * 12, dtype=object)))
    msg = _error(path)
    assert "y_train" in msg and "pickled" in msg


def test_labels_out_of_range_for_class_names(tmp_path):
    path = _write(tmp_path, **_arrays(y_test=np.array([0, 1, 5, 1])), class_names=np.array(["a", "b", "c"]))
    msg = _error(path)
    assert "y_test" in msg and "5" in msg


@pytest.mark.parametrize("names, needle", [(["a", "b", "a"], "classes 0 and 2 are both named 'a'"),
                                           (["a", " ", "c"], "class 1 has an empty name")])
def test_class_names_must_tell_the_classes_apart(tmp_path, names, needle):
    path = _write(tmp_path, **_arrays(), class_names=np.array(names))
    with pytest.raises(AuditError, match=needle):
        load_dataset(f"npz:{path}")


def test_negative_and_fractional_labels(tmp_path):
    assert "y_train" in _error(_write(tmp_path, **_arrays(y_train=np.arange(12) - 1)))
    assert "y_test" in _error(_write(tmp_path, **_arrays(y_test=np.array([0.5, 1, 2, 1]))))


def test_bad_shapes_and_partial_geo(tmp_path):
    assert "x_train" in _error(_write(tmp_path, **_arrays(x_train=np.zeros((12, 2, 2, 2, 2)))))
    assert "lon_test" in _error(_write(tmp_path, **_arrays(), lat_train=np.zeros(12), lon_train=np.zeros(12),
                                       lat_test=np.zeros(4)))
    bad_lat = np.zeros(12)
    bad_lat[3] = 95
    msg = _error(_write(tmp_path, **_arrays(), lat_train=bad_lat, lon_train=np.zeros(12),
                        lat_test=np.zeros(4), lon_test=np.zeros(4)))
    assert "lat_train[3]" in msg


def test_validate_catches_row_mismatch(tmp_path):
    path = _write(tmp_path, **_arrays(y_train=np.arange(11) % 3))
    with pytest.raises(AuditError, match="x_train has 12 rows"):
        load_dataset(f"npz:{path}")
