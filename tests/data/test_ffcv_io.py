"""FFCV .beton write -> FFCV Loader read, on the CPU (needs the ffcv extra: scripts/setup-ffcv.sh).

Without ffcv these tests skip, unless AUDIT_REQUIRE_FFCV=1 (CI sets it after setup-ffcv.sh):
then a missing or broken ffcv fails the run instead of passing it silently.
"""

import importlib.util
import os

import numpy as np
import pytest
import torch

from audit.data import ffcv_io
from audit.data.dataset import Dataset
from audit.errors import AuditError
from tests.conftest import FIXTURES, assert_one_line_error, run_cli

# numba (under ffcv) can complain while garbage-collecting compiled functions: harmless
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

HAS_FFCV = importlib.util.find_spec("ffcv") is not None
REQUIRE_FFCV = os.environ.get("AUDIT_REQUIRE_FFCV") == "1"
needs_ffcv = pytest.mark.skipif(not HAS_FFCV and not REQUIRE_FFCV,
                                reason="ffcv is not installed (the optional extra: bash scripts/setup-ffcv.sh)")


@pytest.fixture(autouse=True)
def torch_threads_survive():
    """ffcv sets torch's thread count (to 1 on import, to num_workers per pass): nothing of that
    may reach the next test. An odd count that ffcv never picks here makes the check bite."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        yield
        assert torch.get_num_threads() == 3, "ffcv changed torch's thread count"
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not REQUIRE_FFCV, reason="AUDIT_REQUIRE_FFCV is not 1")
def test_ffcv_imports_when_required():
    from importlib.metadata import version

    ffcv_io.import_ffcv()  # AuditError naming setup-ffcv.sh if it is missing or does not import
    assert tuple(int(p) for p in version("ffcv").split(".")[:2]) >= (1, 0)  # (ffcv.__version__ says 0.0.3rc1)


@pytest.fixture(scope="module")
def cifar():
    from audit.data import load_dataset

    return load_dataset(f"cifar10:{FIXTURES / 'cifar10'}")


@needs_ffcv
def test_prepare_then_ffcv_loader_round_trip(tmp_path, cifar):
    out = tmp_path / "beton"
    proc = run_cli("data", "prepare", f"cifar10:{FIXTURES / 'cifar10'}", "--out", str(out), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    meta = ffcv_io.read_meta(out)
    assert meta["fingerprint"] == cifar.fingerprint() and meta["image_field"] == "rgb"

    back = ffcv_io.read_beton(out, batch_size=16, num_workers=1)  # every batch through ffcv.loader.Loader
    assert torch.get_num_threads() == 3  # ffcv's thread setting does not leak (see torch_threads_survive)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(back, name), getattr(cifar, name))
    assert back.classes == cifar.classes and back.fingerprint() == cifar.fingerprint()

    # a model's subset in random order: the loader yields exactly those examples
    subset = np.flatnonzero(np.arange(cifar.n_train) % 3 == 0)
    loader = ffcv_io.ffcv_loader(out / "train.beton", 8, order="random", indices=subset, num_workers=1, seed=1)
    seen = [(x.numpy().copy(), y.numpy().copy(), i.numpy().copy()) for x, y, i in loader]
    idx = np.concatenate([s[2] for s in seen])
    assert sorted(idx.tolist()) == subset.tolist() and not np.array_equal(idx, subset)
    np.testing.assert_array_equal(np.concatenate([s[0] for s in seen]), cifar.x_train[idx])
    np.testing.assert_array_equal(np.concatenate([s[1] for s in seen]), cifar.y_train[idx])

    # same data again: the files are kept, not rewritten
    stamp = (out / "train.beton").stat().st_mtime_ns
    ffcv_io.write_beton(cifar, out, num_workers=1)
    assert (out / "train.beton").stat().st_mtime_ns == stamp


@needs_ffcv
def test_feature_rows_round_trip_as_ndarrays(tmp_path, rng):
    ds = Dataset(spec="npz:feat.npz", x_train=rng.normal(size=(12, 5)).astype(np.float32),
                 y_train=rng.integers(0, 3, 12), x_test=rng.normal(size=(4, 5)).astype(np.float32),
                 y_test=rng.integers(0, 3, 4), classes=("a", "b", "c"))
    ffcv_io.write_beton(ds, tmp_path, num_workers=1)
    assert ffcv_io.read_meta(tmp_path)["image_field"] == "ndarray"
    back = ffcv_io.read_beton(tmp_path, batch_size=5, num_workers=1)
    np.testing.assert_array_equal(back.x_train, ds.x_train)
    np.testing.assert_array_equal(back.y_test, ds.y_test)


def test_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(AuditError, match="audit data prepare"):
        ffcv_io.read_meta(tmp_path)
    if HAS_FFCV:
        with pytest.raises(AuditError, match="no FFCV file"):
            ffcv_io.ffcv_loader(tmp_path / "train.beton", 8)


def test_prepare_without_ffcv_says_how_to_install(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    fake = tmp_path / "site" / "ffcv"  # shadows any installed ffcv: as if it were missing
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ffcv')\n")
    env = {**os.environ, "AUDIT_QUIET": "1", "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{ROOT}"}
    proc = subprocess.run([sys.executable, "-m", "audit", "data", "prepare", "digits", "--out", str(tmp_path / "b")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc)
    assert "setup-ffcv.sh" in proc.stderr and not (tmp_path / "b").exists()


def test_default_folder_is_named_after_the_dataset(monkeypatch, tmp_path):
    monkeypatch.setenv("AUDIT_DATA", str(tmp_path))
    assert ffcv_io.default_beton_dir("cifar10:/data/x") == tmp_path / "ffcv" / "cifar10"
    assert ffcv_io.default_beton_dir("npz:/d/feat.npz") == tmp_path / "ffcv" / "feat"
    assert ffcv_io.default_beton_dir("fmow", year=2013) == tmp_path / "ffcv" / "fmow-2013"
