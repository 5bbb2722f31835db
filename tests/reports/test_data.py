"""Reading a run for the report: tolerant reads with notes, row access to datamodels without loading them."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from audit.reports.data import DatamodelRows, RunFiles, npz_member, num


def test_run_files_missing_broken_and_good(tmp_path):
    files = RunFiles(tmp_path)
    assert files.json("nothing.json") is None and files.csv("nothing.csv") is None and files.npz("n.npz") is None
    assert files.notes == []
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert files.json("bad.json") is None and files.npz("bad.npz") is None
    assert len(files.notes) == 2 and "bad.json could not be read" in files.notes[0]
    (tmp_path / "ok.json").write_text(json.dumps({"a": 1}), encoding="utf-8")
    (tmp_path / "ok.csv").write_text('x,y\n1,"a,b"\n', encoding="utf-8")
    assert files.json("ok.json") == {"a": 1} and files.csv("ok.csv") == [{"x": "1", "y": "a,b"}]


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_member_reads_rows_stored_or_compressed(tmp_path, compressed, rng):
    w = rng.normal(size=(30, 7)).astype(np.float32)
    b = rng.normal(size=30)
    path = tmp_path / "dm.npz"
    (np.savez_compressed if compressed else np.savez)(path, weights=w, bias=b)
    got = npz_member(path, "weights")
    assert isinstance(got, np.memmap) != compressed
    np.testing.assert_array_equal(got, w)
    rows = DatamodelRows(path)
    assert rows.n_targets == 30 and rows.n_train == 7
    np.testing.assert_array_equal(rows.rows([3, 0]), w[[3, 0]])
    with zipfile.ZipFile(path) as z:
        assert "weights.npy" in z.namelist()


def test_datamodel_rows_shape_mismatch(tmp_path):
    np.savez(tmp_path / "dm.npz", weights=np.zeros((3, 2)), bias=np.zeros(4))
    with pytest.raises(ValueError, match="do not fit"):
        DatamodelRows(tmp_path / "dm.npz")


def test_num():
    assert num(1) == 1.0 and num("2.5") == 2.5
    assert num(None) is None and num(True) is None and num("nan") is None and num("x") is None
    assert num(float("inf")) is None
