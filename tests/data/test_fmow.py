"""FMoW (WILDS fmow_v1.1) loader on the checked-in fixture and its error cases."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from audit.data import load_dataset
from audit.data.fmow import load_fmow
from audit.errors import AuditError

FIXTURE_PARENT = Path(__file__).resolve().parents[2] / "fixtures" / "fmow"
FIXTURE = FIXTURE_PARENT / "fmow_v1.1"


def _rows() -> list[dict]:
    """CSV rows with 'k' (image index among non-seq rows) and 'line' (file line) added."""
    out, k = [], 0
    with open(FIXTURE / "rgb_metadata.csv", newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            row["line"] = line
            row["k"] = None if row["split"] == "seq" else k
            k += row["split"] != "seq"
            out.append(row)
    return out


def _selected(split: str, year: int = 2012) -> list[dict]:
    return [r for r in _rows() if r["split"] == split and r["timestamp"].startswith(str(year))]


@pytest.fixture(scope="module")
def ds():
    return load_fmow(str(FIXTURE), spec="fmow")


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "fmow_v1.1"
    shutil.copytree(FIXTURE, dst)
    return dst


def _edit_csv(root: Path, edit: Callable[[list[dict]], None], drop_column: str | None = None) -> None:
    with open(root / "rgb_metadata.csv", newline="") as f:
        reader = csv.DictReader(f)
        columns = [c for c in reader.fieldnames if c != drop_column]
        rows = list(reader)
    edit(rows)
    with open(root / "rgb_metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _error(directory: str | Path | None, **kw) -> str:
    with pytest.raises(AuditError) as e:
        load_fmow(None if directory is None else str(directory), spec="fmow", **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _first_selected_after_seq() -> dict:
    """A 2012 train row after the seq rows, where CSV row index and image index differ."""
    rows = _rows()
    for i, r in enumerate(rows):
        if r["split"] == "train" and r["timestamp"].startswith("2012") and r["k"] != i:
            return r
    raise AssertionError("fixture has no seq row before a 2012 train row")


def test_shapes_dtypes_classes(ds):
    assert ds.x_train.shape == (24, 32, 32, 3) and ds.x_test.shape == (13, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert ds.classes == ("airport", "crop_field", "dam", "port")
    train = _selected("train")
    assert [ds.classes[y] for y in ds.y_train] == [r["category"] for r in train]
    assert [ds.classes[y] for y in ds.y_test] == [r["category"] for r in _selected("test")]


def test_image_index_skips_seq_rows(ds):
    train = _selected("train")
    assert ds.meta["image_id_train"].dtype == np.int64
    assert ds.meta["image_id_train"].tolist() == [r["k"] for r in train]
    assert ds.meta["image_id_test"].tolist() == [r["k"] for r in _selected("test")]
    row = _first_selected_after_seq()
    i = [r["line"] for r in train].index(row["line"])
    expected = np.asarray(Image.open(FIXTURE / "images" / f"rgb_img_{row['k']}.png").convert("RGB"))
    assert np.array_equal(ds.x_train[i], expected)
    # every image carries its own index in binary in pixels [0, 0:8] (red = 1)
    for x, k in zip(np.concatenate([ds.x_train, ds.x_test]),
                    np.concatenate([ds.meta["image_id_train"], ds.meta["image_id_test"]])):
        assert sum(1 << b for b in range(8) if x[0, b, 0] > 128) == k


def test_year_filter_and_fractional_timestamps(ds):
    rows = _rows()
    assert any(r["split"] in ("train", "test") and not r["timestamp"].startswith("2012") for r in rows)
    assert any(r["split"] == "val" for r in rows)
    assert any("." in r["timestamp"] for r in _selected("train"))
    other = load_fmow(str(FIXTURE), spec="fmow", year=2013)
    assert (other.n_train, other.n_test) == (len(_selected("train", 2013)), len(_selected("test", 2013)))
    assert set(other.meta["image_id_train"]).isdisjoint(ds.meta["image_id_train"])
    assert "2010" in _error(FIXTURE, year=2010)


def test_lat_lon_meta(ds):
    for split in ("train", "test"):
        rows = _selected(split)
        assert ds.meta[f"lat_{split}"].dtype == np.float64
        assert np.allclose(ds.meta[f"lat_{split}"], [float(r["lat"]) for r in rows])
        assert np.allclose(ds.meta[f"lon_{split}"], [float(r["lon"]) for r in rows])


def test_some_test_images_near_training_images(ds):
    def miles(lat1, lon1, lat2, lon2):
        p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
        h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
        return 2 * 3958.8 * math.asin(math.sqrt(h))

    nearest = [min(miles(a, b, c, d) for c, d in zip(ds.meta["lat_train"], ds.meta["lon_train"]))
               for a, b in zip(ds.meta["lat_test"], ds.meta["lon_test"])]
    near = [m for m in nearest if 0.25 <= m <= 3]
    assert len(near) >= 3
    assert sum(m > 10 for m in nearest) >= 5


def test_parent_folder_default_dir_and_load_dataset(monkeypatch, ds):
    assert load_dataset(f"fmow:{FIXTURE_PARENT}").fingerprint() == ds.fingerprint()
    monkeypatch.setenv("AUDIT_DATA", str(FIXTURE_PARENT))
    assert load_fmow(None, spec="fmow").fingerprint() == ds.fingerprint()


def test_missing_directory_says_how_to_get_it(monkeypatch, tmp_path):
    msg = _error(tmp_path / "absent")
    assert "absent" in msg and "wilds" in msg and "fmow:DIR" in msg
    monkeypatch.setenv("AUDIT_DATA", str(tmp_path))
    assert str(tmp_path / "fmow_v1.1") in _error(None)


def test_missing_metadata(tmp_path):
    root = _copy(tmp_path)
    (root / "rgb_metadata.csv").unlink()
    assert "rgb_metadata.csv" in _error(root)


def test_missing_image(tmp_path):
    root = _copy(tmp_path)
    row = _first_selected_after_seq()
    (root / "images" / f"rgb_img_{row['k']}.png").unlink()
    msg = _error(root)
    assert f"rgb_img_{row['k']}.png" in msg and f"line {row['line']}" in msg


def test_corrupt_image(tmp_path):
    root = _copy(tmp_path)
    k = _selected("test")[-1]["k"]
    (root / "images" / f"rgb_img_{k}.png").write_bytes(b"\x89PNG broken")
    assert f"rgb_img_{k}.png" in _error(root)


def test_images_of_different_sizes(tmp_path):
    root = _copy(tmp_path)
    k = _selected("train")[5]["k"]
    Image.new("RGB", (16, 16)).save(root / "images" / f"rgb_img_{k}.png")
    msg = _error(root)
    assert f"rgb_img_{k}.png" in msg and "same size" in msg


@pytest.mark.parametrize("column,value,expect", [
    ("lat", "", "no lat value"),
    ("lat", "95", "lat = 95"),
    ("lon", "-181.5", "lon = -181.5"),
    ("lon", "east", "not a number"),
])
def test_bad_coordinates_name_the_row(tmp_path, column, value, expect):
    root = _copy(tmp_path)
    row = _first_selected_after_seq()

    def edit(rows):
        rows[row["line"] - 2][column] = value

    _edit_csv(root, edit)
    msg = _error(root)
    assert expect in msg and f"line {row['line']}" in msg


def test_bad_coordinates_outside_chosen_year_are_ignored(tmp_path):
    root = _copy(tmp_path)
    lines = [r["line"] for r in _selected("train", 2013)]

    def edit(rows):
        for line in lines:
            rows[line - 2]["lat"] = ""

    _edit_csv(root, edit)
    assert load_fmow(str(root), spec="fmow").n_train == 24


def test_missing_lat_column(tmp_path):
    root = _copy(tmp_path)
    _edit_csv(root, lambda rows: None, drop_column="lat")
    assert "'lat'" in _error(root)


def test_bad_timestamp_names_the_row(tmp_path):
    root = _copy(tmp_path)
    row = _selected("test")[0]

    def edit(rows):
        rows[row["line"] - 2]["timestamp"] = "yesterday"

    _edit_csv(root, edit)
    assert f"line {row['line']}" in _error(root)
