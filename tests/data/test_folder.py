"""folder:DIR: class folders round-trip to the npz arrays, decoding is cached by content, an edited
image is a new dataset, and every bad input is one error line naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from audit.data import load_dataset
from audit.errors import AuditError
from tests.cli_inprocess import call_main
from tests.conftest import FAST_MLP, assert_one_line_error
from tests.data.own import OWN, assert_same_arrays, reference, run_script, write_digits_folder


def test_fixture_folder_round_trips_to_the_npz_arrays(cache):
    ds = load_dataset(f"folder:{OWN / 'folder'}")
    assert_same_arrays(ds, reference())  # RGB, grayscale, RGBA, palette GIF and BMP files
    assert ds.x_train.shape == (12, 10, 12, 3) and ds.classes == ("circle", "cross", "stripes")
    assert ds.meta["path_test"][2] == "test/cross/cross_00.bmp" and ds.captions == ("path",)
    assert ds.caption("train", 0) == [("path", "train/circle/circle_00.png")]
    assert ds.name == "folder"


def test_grayscale_folder_stays_one_channel_and_matches_digits(tmp_path, cache, digits):
    expected = write_digits_folder(tmp_path / "digits", digits)
    ds = load_dataset(f"folder:{tmp_path / 'digits'}")
    assert ds.x_train.shape == (digits.n_train, 8, 8, 1) and ds.classes == tuple(str(c) for c in range(10))
    for key, value in expected.items():
        np.testing.assert_array_equal(getattr(ds, key), value)


def test_second_load_reads_the_cache_instead_of_decoding(cache, monkeypatch):
    first = load_dataset(f"folder:{OWN / 'folder'}")
    assert len(list(cache.glob("folder-*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr("audit.data.decode.decode_sources", no_decoding)
    again = load_dataset(f"folder:{OWN / 'folder'}")
    assert_same_arrays(again, first)


def test_unreadable_cache_is_rebuilt(cache):
    load_dataset(f"folder:{OWN / 'folder'}")
    (entry,) = cache.glob("*.npz")
    entry.write_bytes(b"not a zip")
    assert_same_arrays(load_dataset(f"folder:{OWN / 'folder'}"), reference())


def test_an_edited_image_is_a_new_dataset_and_the_old_run_refuses_it(own_copy, cache, tmp_path):
    from PIL import Image

    from audit import pipeline
    from audit.store import RunStore

    spec = f"folder:{own_copy / 'folder'}"
    before = load_dataset(spec)
    run = tmp_path / "run"
    pipeline.train(spec, run, n_models=2, block_size=2, trainer_options={**FAST_MLP, "epochs": 1})
    assert RunStore.open(run, writable=False).config.dataset == spec  # the spec in run.json reproduces it
    edited = own_copy / "folder" / "train" / "cross" / "cross_03.png"
    pixels = np.asarray(Image.open(edited)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(edited)
    after = load_dataset(spec)
    assert after.fingerprint() != before.fingerprint()
    assert len(list(cache.glob("*.npz"))) == 1  # the new contents replaced the old entry
    with pytest.raises(AuditError, match="no longer matches"):
        pipeline.dataset_of(RunStore.open(run, writable=False))


def test_mixed_sizes_are_refused_with_the_sizes_and_the_spec_to_pass(own_copy, cache):
    from PIL import Image

    Image.new("RGB", (20, 16)).save(own_copy / "folder" / "test" / "circle" / "big.png")
    spec = f"folder:{own_copy / 'folder'}"
    with pytest.raises(AuditError) as err:
        load_dataset(spec)
    message = str(err.value)
    assert "10x12 in 18 images" in message and "16x20 in 1 image" in message and "big.png" in message
    assert f"{spec}?size=10x12" in message
    resized = load_dataset(f"{spec}?size=10x12")
    assert resized.x_test.shape == (7, 10, 12, 3)
    np.testing.assert_array_equal(resized.x_train, reference().x_train)  # same-size images are not resampled
    small = load_dataset(f"{spec}?size=5x6")
    assert small.x_train.shape == (12, 5, 6, 3) and small.name == "folder-5x6"


def _truncate(root):
    path = root / "train" / "circle" / "circle_02.png"
    path.write_bytes(path.read_bytes()[:60])
    return path


def _not_an_image(root):
    path = root / "test" / "stripes" / "stripes_01.png"
    path.write_text("hello")
    return path


def _empty_class(root):
    path = root / "train" / "empty"
    path.mkdir()
    (path / "notes.txt").write_text("no images here")
    return path


def _unknown_test_class(root):
    path = root / "test" / "zebra"
    path.mkdir()
    (root / "test" / "circle" / "circle_00.png").rename(path / "z.png")
    return path


def _no_test_split(root):
    import shutil

    shutil.rmtree(root / "test")
    return root / "test"


def _loose_image(root):
    path = root / "train" / "loose.png"
    (root / "train" / "circle" / "circle_00.png").rename(path)
    return path


BAD = {"truncated": (_truncate, "truncated or corrupt"), "not-an-image": (_not_an_image, "not an image"),
       "empty-class": (_empty_class, "is empty"), "unknown-test-class": (_unknown_test_class, "not among the train"),
       "missing-split": (_no_test_split, "test split is missing"), "loose-image": (_loose_image, "class folder")}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_folders_are_one_error_naming_the_file(case, own_copy, cache, tmp_path):
    damage, phrase = BAD[case]
    named = damage(own_copy / "folder")
    spec = f"folder:{own_copy / 'folder'}"
    with pytest.raises(AuditError, match=phrase) as err:
        load_dataset(spec)
    assert str(named) in str(err.value)
    run = tmp_path / "run"
    result = call_main("train", spec, "--run", str(run), "-m", "2")
    assert_one_line_error(result)
    assert str(named) in result.stderr and phrase in result.stderr
    assert not run.exists()


@pytest.mark.parametrize("case", ["truncated", "missing-split"])
def test_bad_folders_through_the_console_script(case, own_copy, cache, tmp_path):
    damage, phrase = BAD[case]
    named = damage(own_copy / "folder")
    result = run_script("train", f"folder:{own_copy / 'folder'}", "--run", str(tmp_path / "run"), "-m", "2")
    assert_one_line_error(result)
    assert str(named) in result.stderr and phrase in result.stderr
    assert not (tmp_path / "run").exists()


def test_audit_run_on_a_digits_sized_folder_end_to_end(tmp_path, cache, digits):
    import json

    write_digits_folder(tmp_path / "digits", digits)
    spec = f"folder:{tmp_path / 'digits'}"
    run = tmp_path / "run"
    result = run_script("run", spec, "--run", str(run), "-m", "60", "--eval-subsets", "6", "--audits", "leakage",
                        *[f"-o{k}={v}" for k, v in FAST_MLP.items()])
    assert result.returncode == 0, result.stderr
    config = json.loads((run / "run.json").read_text())
    assert config["dataset"] == spec and config["n_train"] == digits.n_train and config["trainer"]["name"] == "mlp"
    steps = json.loads((run / "run_summary.json").read_text())["steps"]
    assert steps["train"]["trained"] == 60 and steps["fit"]["n_models"] == 60
    report = (run / "report.html").read_text()
    assert "train/3/" in report  # thumbnails carry the image's path
