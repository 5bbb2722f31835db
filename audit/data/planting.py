"""Planted duplicates as a dataset option: a known answer for the leakage audit.

``load_dataset(spec, plant=N, plant_seed=S, plant_noise=f, plant_shift=None)`` appends
slightly perturbed copies of N test images (chosen with ``plant_seed``) to the training
set: gaussian noise of ``f`` × each pixel's spread, and a one-pixel shift for images of
at least 16×16 (``plant_shift`` None = that rule; True/False forces it). The planting
is deterministic, so a run created with these ``dataset_options`` reloads exactly the
same data (same fingerprint). The copies are recorded in ``meta["planted_test_of_train"]``
(one value per training example: the test index it copies, -1 for an original training
example); other ``<name>_train`` metadata with a
matching ``<name>_test`` array (FMoW lat/lon) gets the test image's value.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from audit.audits.leakage import DEFAULT_PLANT_NOISE, plant_duplicates
from audit.data.dataset import Dataset
from audit.errors import AuditError

PLANT_OPTIONS = ("plant", "plant_seed", "plant_noise", "plant_shift")
PLANTED_META = "planted_test_of_train"


def split_plant_options(options: dict) -> tuple[dict, dict]:
    """``(loader options, planting options)``: the planting keys are taken out of ``options``."""
    loader = {k: v for k, v in options.items() if k not in PLANT_OPTIONS}
    plant = {k: v for k, v in options.items() if k in PLANT_OPTIONS}
    return loader, plant


def plant_options(n: int, seed: int = 0, noise: float = DEFAULT_PLANT_NOISE, shift: bool | None = None) -> dict:
    """The ``dataset_options`` entries for a planted run (all explicit, so run.json says what was done)."""
    return {"plant": int(n), "plant_seed": int(seed), "plant_noise": float(noise),
            "plant_shift": None if shift is None else bool(shift)}


def apply_planting(ds: Dataset, plant: int = 0, plant_seed: int = 0, plant_noise: float = DEFAULT_PLANT_NOISE,
                   plant_shift: bool | None = None) -> Dataset:
    """``ds`` with perturbed copies of ``plant`` test images appended to its training set."""
    try:
        n = int(plant)
    except (TypeError, ValueError):
        raise AuditError(f"plant = {plant!r}; give the number of test images to copy into the training set") from None
    try:
        noise = float(plant_noise)
    except (TypeError, ValueError):
        raise AuditError(f"plant_noise = {plant_noise!r}; give a fraction of the per-pixel spread like 0.1") from None
    if n < 1:
        raise AuditError(f"plant = {n}; plant at least 1 test image (or leave the option out)")
    if PLANTED_META in ds.meta:
        raise AuditError(f"{ds.spec} already has planted duplicates; plant once")
    x_new, y_new, pairs = plant_duplicates(ds.x_train, ds.y_train, ds.x_test, ds.y_test, n, int(plant_seed),
                                           noise=noise,
                                           shift=None if plant_shift is None else bool(plant_shift))
    picks = pairs[:, 0]
    meta: dict[str, np.ndarray] = {}
    for key, arr in ds.meta.items():
        name, _, part = key.rpartition("_")
        if part == "train":
            test_arr = ds.meta.get(f"{name}_test")
            if test_arr is None:
                continue  # no value to give the copies: drop rather than misalign
            arr = np.concatenate([arr, np.asarray(test_arr)[picks].astype(arr.dtype)])
        meta[key] = arr
    meta[PLANTED_META] = np.concatenate([np.full(ds.n_train, -1, np.int64), picks.astype(np.int64)])
    return dataclasses.replace(ds, x_train=x_new, y_train=y_new, meta=meta)


def planted_pairs(ds: Dataset) -> np.ndarray | None:
    """Rows ``(test_index, train_index)`` of the planted copies, or None for an unplanted dataset."""
    marks = ds.meta.get(PLANTED_META)
    if marks is None:
        return None
    train = np.flatnonzero(np.asarray(marks) >= 0)
    return np.column_stack([np.asarray(marks)[train], train]).astype(np.int64)
