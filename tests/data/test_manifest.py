"""csv:FILE: a manifest of paths round-trips to the npz arrays with lat/lon and metadata columns kept;
paths leaving the folder, repeated paths, unknown labels and missing splits are one error line."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from audit.data import load_dataset
from audit.errors import AuditError
from tests.cli_inprocess import call_main
from tests.conftest import assert_one_line_error
from tests.data.own import OWN, assert_same_arrays, reference, run_script


def test_fixture_manifest_round_trips_with_geo_and_metadata(cache):
    ds = load_dataset(f"csv:{OWN / 'manifest.csv'}")
    ref = reference()
    assert_same_arrays(ds, ref)
    for key in ("lat_train", "lon_train", "lat_test", "lon_test"):
        np.testing.assert_allclose(ds.meta[key], ref.meta[key])
    assert ds.captions == ("path", "camera", "note")
    assert ds.caption("test", 2) == [("path", "folder/test/cross/cross_00.bmp"), ("camera", ds.meta["camera_test"][2]),
                                     ("note", "bmp")]
    assert ds.name == "manifest"


def _rows(root):
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _write(root, rows, name="manifest.csv", columns=None):
    path = root / name
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns or list(rows[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_rows_in_any_order_absolute_paths_inside_and_val_rows(own_copy, cache):
    rows = _rows(own_copy)[::-1]
    rows[0]["path"] = str(own_copy / rows[0]["path"])  # absolute, inside the CSV's folder
    rows.append({**rows[1], "path": "nowhere.png", "split": "val"})  # skipped: never opened
    path = _write(own_copy, rows, columns=["split", "label", "path"])
    ds = load_dataset(f"csv:{path}")
    ref = reference()
    np.testing.assert_array_equal(ds.x_train, ref.x_train[::-1])
    assert ds.classes == ref.classes and ds.captions == ("path",) and "lat_train" not in ds.meta


def test_integer_labels_sort_as_numbers(own_copy, cache):
    rows = _rows(own_copy)
    for r in rows:
        r["label"] = {"circle": "2", "cross": "10", "stripes": "9"}[r["label"]]
    ds = load_dataset(f"csv:{_write(own_copy, rows)}")
    assert ds.classes == ("2", "9", "10")


def _escape_up(root, rows):
    (root.parent / "outside.png").write_bytes((root / rows[0]["path"]).read_bytes())
    rows[0]["path"] = "../outside.png"
    return "'../outside.png'", "leaves"


def _escape_absolute(root, rows):
    rows[1]["path"] = str(root.parent / "elsewhere.png")
    return rows[1]["path"], "leaves"


def _duplicate(root, rows):
    rows[5]["path"] = "./" + rows[2]["path"]
    return "line 7", "repeats path"


def _unknown_label(root, rows):
    rows[-1]["label"] = "square"
    return "'square'", "not among the train"


def _missing_test(root, rows):
    del rows[12:]
    return "split=test", "test split is missing"


def _unknown_split(root, rows):
    rows[3]["split"] = "holdout"
    return "'holdout'", "expected train or test"


def _missing_file(root, rows):
    rows[4]["path"] = "folder/train/circle/gone.png"
    return "gone.png", "does not exist"


def _bad_lat(root, rows):
    rows[2]["lat"] = "95"
    return "line 4", "outside -90..90"


BAD = {"escape-up": _escape_up, "escape-absolute": _escape_absolute, "duplicate": _duplicate,
       "unknown-label": _unknown_label, "missing-split": _missing_test, "unknown-split": _unknown_split,
       "missing-file": _missing_file, "bad-lat": _bad_lat}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_manifests_are_one_error_naming_the_file(case, own_copy, cache, tmp_path):
    rows = _rows(own_copy)
    named, phrase = BAD[case](own_copy, rows)
    path = _write(own_copy, rows)
    with pytest.raises(AuditError, match=phrase) as err:
        load_dataset(f"csv:{path}")
    assert named in str(err.value) and "manifest.csv" in str(err.value)
    result = call_main("train", f"csv:{path}", "--run", str(tmp_path / "run"), "-m", "2")
    assert_one_line_error(result)
    assert named in result.stderr
    assert not (tmp_path / "run").exists()


def test_missing_columns_and_half_geo(own_copy, cache):
    rows = _rows(own_copy)
    with pytest.raises(AuditError, match="no split column"):
        load_dataset(f"csv:{_write(own_copy, rows, 'a.csv', ['path', 'label'])}")
    with pytest.raises(AuditError, match="lat column but no lon"):
        load_dataset(f"csv:{_write(own_copy, rows, 'b.csv', ['path', 'label', 'split', 'lat'])}")


@pytest.mark.parametrize("case", ["escape-up", "duplicate"])
def test_bad_manifests_through_the_console_script(case, own_copy, cache, tmp_path):
    rows = _rows(own_copy)
    named, _ = BAD[case](own_copy, rows)
    result = run_script("train", f"csv:{_write(own_copy, rows)}", "--run", str(tmp_path / "run"), "-m", "2")
    assert_one_line_error(result)
    assert named in result.stderr


def test_report_shows_the_metadata_columns_under_each_image(cache, tmp_path, torch_one_thread):
    from audit import pipeline
    from audit.reports.render import render_html

    run = tmp_path / "run"
    pipeline.train(f"csv:{OWN / 'manifest.csv'}", run, n_models=20, block_size=20,
                   trainer_options={"hidden": 16, "epochs": 1, "batch_size": 8, "lr": 0.1})
    pipeline.fit(run, n_lambdas=4)
    html = render_html(run)
    assert "folder/test/cross/cross_00.bmp" in html and "camera: cam-" in html and "note: bmp" in html
