"""CIFAR-10 loader on the checked-in fixture (real pickle format) and its error cases."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from audit.data import load_dataset
from audit.data.cifar10 import load_cifar10
from audit.errors import AuditError

FIXTURE_PARENT = Path(__file__).resolve().parents[2] / "fixtures" / "cifar10"
FIXTURE = FIXTURE_PARENT / "cifar-10-batches-py"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _raw(name: str) -> dict:
    with open(FIXTURE / name, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "cifar-10-batches-py"
    shutil.copytree(FIXTURE, dst)
    return dst


def _error(directory: str | Path | None) -> str:
    with pytest.raises(AuditError) as e:
        load_cifar10(None if directory is None else str(directory), spec="cifar10")
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_loads_fixture_shapes_labels_classes():
    ds = load_cifar10(str(FIXTURE), spec="cifar10")
    assert ds.x_train.shape == (40, 32, 32, 3) and ds.x_test.shape == (20, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.x_test.dtype == np.uint8
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.classes == CLASSES
    assert np.bincount(ds.y_train).tolist() == [4] * 10
    assert np.bincount(ds.y_test).tolist() == [2] * 10
    expected = np.concatenate([_raw(f"data_batch_{i}")[b"labels"] for i in range(1, 6)])
    assert ds.y_train.tolist() == expected.tolist()
    assert ds.y_test.tolist() == _raw("test_batch")[b"labels"]


def test_pixels_are_rgb_planes_row_major():
    ds = load_cifar10(str(FIXTURE), spec="cifar10")
    data = _raw("data_batch_2")[b"data"]  # images 8..15 of the train split
    img = ds.x_train[8 + 3]
    for c in range(3):
        assert np.array_equal(img[:, :, c].ravel(), data[3, c * 1024:(c + 1) * 1024])
    assert img[5, 7, 1] == data[3, 1024 + 5 * 32 + 7]
    test_data = _raw("test_batch")[b"data"]
    assert np.array_equal(ds.x_test[19].transpose(2, 0, 1).ravel(), test_data[19])


def test_parent_folder_and_load_dataset_agree():
    a = load_cifar10(str(FIXTURE), spec="cifar10")
    b = load_dataset(f"cifar10:{FIXTURE_PARENT}")
    assert a.fingerprint() == b.fingerprint()
    assert b.name == "cifar10"


def test_default_directory_from_env(monkeypatch):
    monkeypatch.setenv("AUDIT_DATA", str(FIXTURE_PARENT))
    assert load_cifar10(None, spec="cifar10").n_train == 40


def test_missing_default_directory_says_where_and_how(monkeypatch, tmp_path):
    monkeypatch.setenv("AUDIT_DATA", str(tmp_path / "nothing"))
    msg = _error(None)
    assert str(tmp_path / "nothing" / "cifar-10-batches-py") in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in msg and "cifar10:DIR" in msg


def test_missing_directory(tmp_path):
    msg = _error(tmp_path / "absent")
    assert "absent" in msg and "cifar-10-python.tar.gz" in msg


def test_missing_file(tmp_path):
    root = _copy(tmp_path)
    (root / "data_batch_3").unlink()
    msg = _error(root)
    assert "data_batch_3" in msg and "data_batch_2" not in msg


def test_truncated_pickle(tmp_path):
    root = _copy(tmp_path)
    blob = (root / "data_batch_2").read_bytes()
    (root / "data_batch_2").write_bytes(blob[: len(blob) // 2])
    msg = _error(root)
    assert "data_batch_2" in msg and "truncated" in msg


def test_corrupt_meta(tmp_path):
    root = _copy(tmp_path)
    (root / "batches.meta").write_bytes(b"not a pickle at all")
    assert "batches.meta" in _error(root)


def test_unexpected_objects_are_refused(tmp_path):
    import collections

    root = _copy(tmp_path)
    with open(root / "data_batch_1", "wb") as f:
        pickle.dump({b"data": collections.OrderedDict(), b"labels": []}, f, protocol=2)
    assert "data_batch_1" in _error(root)


def test_labels_out_of_range(tmp_path):
    root = _copy(tmp_path)
    batch = _raw("test_batch")
    batch[b"labels"][4] = 10
    with open(root / "test_batch", "wb") as f:
        pickle.dump(batch, f, protocol=2)
    msg = _error(root)
    assert "test_batch" in msg and "10" in msg


def test_wrong_data_shape(tmp_path):
    root = _copy(tmp_path)
    batch = _raw("data_batch_4")
    batch[b"data"] = batch[b"data"][:, :3000]
    with open(root / "data_batch_4", "wb") as f:
        pickle.dump(batch, f, protocol=2)
    msg = _error(root)
    assert "data_batch_4" in msg and "3000" in msg


def test_label_count_mismatch(tmp_path):
    root = _copy(tmp_path)
    batch = _raw("data_batch_5")
    batch[b"labels"] = batch[b"labels"][:-1]
    with open(root / "data_batch_5", "wb") as f:
        pickle.dump(batch, f, protocol=4)
    assert "data_batch_5" in _error(root)
