"""hf:DIR: a DatasetDict saved with save_to_disk, read offline: the fixture round-trips to the npz
arrays, columns are named by option, the decode is cached by the Arrow files' contents, and bad
input is one error line. Without the datasets package these tests skip, unless AUDIT_REQUIRE_HF=1
(CI sets it after installing the hf extra)."""

from __future__ import annotations

import importlib.util
import io
import os

import numpy as np
import pytest

from audit.data import load_dataset
from audit.errors import AuditError
from tests.cli_inprocess import call_main
from tests.conftest import assert_one_line_error
from tests.data.own import OWN, assert_same_arrays, reference, run_script

HAS_DATASETS = importlib.util.find_spec("datasets") is not None
REQUIRE_HF = os.environ.get("AUDIT_REQUIRE_HF") == "1"
pytestmark = pytest.mark.skipif(not HAS_DATASETS and not REQUIRE_HF,
                                reason="datasets is not installed (the optional extra: EXTRAS=hf bash scripts/setup.sh)")


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _save(path, splits: dict, image_feature=None, label_feature=None, image="image", label="label"):
    """Save {split: (images bytes or arrays, labels)} with save_to_disk."""
    import datasets

    features = datasets.Features({image: image_feature or datasets.Image(),
                                  label: label_feature or datasets.Value("int64")})
    out = {}
    for split, (images, labels) in splits.items():
        column = [{"bytes": b, "path": None} for b in images] if isinstance(features[image], datasets.Image) else images
        out[split] = datasets.Dataset.from_dict({image: column, label: labels}, features=features)
    datasets.disable_progress_bars()
    datasets.DatasetDict(out).save_to_disk(str(path))
    datasets.enable_progress_bars()
    return path


def test_fixture_round_trips_with_classlabel_names(cache, capfd):
    ds = load_dataset(f"hf:{OWN / 'hf'}")
    assert_same_arrays(ds, reference())
    assert ds.name == "hf"
    assert capfd.readouterr().err == ""  # no progress bars from datasets: library code prints nothing


def test_second_load_reads_the_cache(cache, monkeypatch):
    first = load_dataset(f"hf:{OWN / 'hf'}")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr("audit.data.decode.decode_sources", no_decoding)
    assert_same_arrays(load_dataset(f"hf:{OWN / 'hf'}"), first)


def test_columns_named_by_option_string_labels_and_size(tmp_path, cache, rng):
    imgs = rng.integers(0, 256, size=(6, 7, 5, 3), dtype=np.uint8)
    path = _save(tmp_path / "d", {"train": ([_png(i) for i in imgs[:4]], ["b", "a", "b", "a"]),
                                  "test": ([_png(i) for i in imgs[4:]], ["a", "b"])},
                 label_feature=__import__("datasets").Value("string"), image="img", label="kind")
    with pytest.raises(AuditError, match="no label column 'label'.*hf:DIR\\?label=COLUMN"):
        load_dataset(f"hf:{path}")
    with pytest.raises(AuditError, match="no image column 'image'.*hf:DIR\\?image=COLUMN"):
        load_dataset(f"hf:{path}?label=kind")
    ds = load_dataset(f"hf:{path}?image=img&label=kind")
    np.testing.assert_array_equal(ds.x_train, imgs[:4])
    assert ds.classes == ("a", "b") and ds.y_train.tolist() == [1, 0, 1, 0] and ds.y_test.tolist() == [0, 1]
    assert load_dataset(f"hf:{path}?image=img&label=kind&size=3x4").x_train.shape == (4, 3, 4, 3)


def test_numeric_array_column(tmp_path, cache, rng):
    import datasets

    imgs = rng.integers(0, 256, size=(5, 4, 6), dtype=np.uint8)
    path = _save(tmp_path / "d", {"train": (imgs[:3].tolist(), [0, 1, 1]), "test": (imgs[3:].tolist(), [1, 0])},
                 image_feature=datasets.Array2D(shape=(4, 6), dtype="uint8"))
    ds = load_dataset(f"hf:{path}")
    np.testing.assert_array_equal(ds.x_train[..., 0], imgs[:3])
    assert ds.classes == ("0", "1")


def _truncated(tmp_path, rng):
    good = [_png(i) for i in rng.integers(0, 256, size=(3, 4, 4, 3), dtype=np.uint8)]
    return _save(tmp_path / "d", {"train": (good[:2], [0, 1]), "test": ([good[2][:-30]], [0])}), "test row 0", \
        "truncated or corrupt"


def _label_out_of_range(tmp_path, rng):
    import datasets

    good = [_png(i) for i in rng.integers(0, 256, size=(3, 4, 4, 3), dtype=np.uint8)]
    return _save(tmp_path / "d", {"train": (good[:2], [0, 1]), "test": ([good[2]], [-1])},
                 label_feature=datasets.ClassLabel(names=["x", "y"])), "test row 0", "not one of the 2 classes"


def _no_test_split(tmp_path, rng):
    import datasets

    good = [_png(i) for i in rng.integers(0, 256, size=(2, 4, 4, 3), dtype=np.uint8)]
    path = tmp_path / "d"
    datasets.disable_progress_bars()
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in good], "label": [0, 1]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))}).save_to_disk(str(path))
    return path, "has train split", "test split is missing"


def _not_saved(tmp_path, rng):
    path = tmp_path / "d"
    path.mkdir()
    (path / "readme.txt").write_text("not a dataset")
    return path, str(path), "not a saved Hugging Face dataset"


BAD = {"truncated": _truncated, "label-out-of-range": _label_out_of_range, "missing-split": _no_test_split,
       "not-saved": _not_saved}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_hf_datasets_are_one_error_line(case, tmp_path, cache, rng):
    path, named, phrase = BAD[case](tmp_path, rng)
    with pytest.raises(AuditError, match=phrase) as err:
        load_dataset(f"hf:{path}")
    assert named in str(err.value)
    result = call_main("train", f"hf:{path}", "--run", str(tmp_path / "run"), "-m", "2")
    assert_one_line_error(result)
    assert named in result.stderr and not (tmp_path / "run").exists()


def test_bad_hf_dataset_through_the_console_script(tmp_path, cache, rng):
    path, named, phrase = _truncated(tmp_path, rng)
    result = run_script("train", f"hf:{path}", "--run", str(tmp_path / "run"), "-m", "2")
    assert_one_line_error(result)
    assert named in result.stderr and phrase in result.stderr


@pytest.mark.skipif(not REQUIRE_HF, reason="AUDIT_REQUIRE_HF is not 1")
def test_datasets_imports_when_required():
    from audit.data.hf import import_datasets

    assert import_datasets().load_from_disk
