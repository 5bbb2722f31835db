"""Helpers for the users'-own-images tests: the reference arrays, digits as an image folder, the
installed console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import FIXTURES, ROOT

OWN = FIXTURES / "own"


def reference():
    from audit.data import load_dataset

    return load_dataset(f"npz:{OWN / 'reference.npz'}")


def assert_same_arrays(ds, ref) -> None:
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(ds, key), getattr(ref, key), err_msg=key)
    assert ds.classes == ref.classes
    assert ds.fingerprint() == ref.fingerprint()


def script() -> Path:
    """The installed console script (.venv/bin/audit beside this interpreter)."""
    path = Path(sys.executable).with_name("audit")
    assert path.is_file(), f"{path} is not installed; run scripts/setup.sh"
    return path


def run_script(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``audit ARGS`` through the installed console script, in a subprocess (one torch thread: on a
    shared, loaded machine two spinning threads make the LASSO fit several times slower)."""
    env = {**os.environ, "AUDIT_QUIET": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(script()), *map(str, args)], cwd=cwd or ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def write_digits_folder(root: Path, digits) -> dict[str, np.ndarray]:
    """Digits as 8x8 grayscale PNGs in ``root/{train,test}/<digit>/<index>.png``; returns the
    arrays the folder must load as (rows in folder order: class, then file name)."""
    from PIL import Image

    expected = {}
    for split in ("train", "test"):
        x, y = getattr(digits, f"x_{split}"), getattr(digits, f"y_{split}")
        for i, (img, label) in enumerate(zip(x, y)):
            folder = root / split / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[:, :, 0], mode="L").save(folder / f"{i:04d}.png")
        order = np.lexsort((np.arange(len(y)), y))
        expected[f"x_{split}"], expected[f"y_{split}"] = x[order], y[order]
    return expected
