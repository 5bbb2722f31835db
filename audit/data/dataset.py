"""The one dataset type every loader returns, and its checks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from audit.data.spec import dataset_name
from audit.errors import AuditError


@dataclass(frozen=True)
class Dataset:
    """A train/test image dataset held in memory.

    ``x_*`` are images ``[N, H, W, C]`` uint8 (or ``[N, D]`` features for ``npz`` data
    without image structure); ``y_*`` are int64 class indices into ``classes``.
    ``meta`` holds optional per-example arrays keyed ``<name>_train`` / ``<name>_test``
    (FMoW: ``lat_*``, ``lon_*``, ``image_id_*``; folder/csv: ``path_*`` and a CSV's extra columns).
    ``captions`` names the metadata the report shows under each image (e.g. ``("path",)``).
    """

    spec: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    captions: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """Short name used for the default run directory (``digits``, ``cifar10``, ``pets-32x32``...)."""
        return dataset_name(self.spec)

    def caption(self, split: str, index: int) -> list[tuple[str, str]]:
        """``[(name, value), ...]`` of the ``captions`` metadata of one example (for the report)."""
        out = []
        for name in self.captions:
            values = self.meta.get(f"{name}_{split}")
            if values is not None and 0 <= int(index) < len(values):
                value = values[int(index)]
                out.append((name, value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)))
        return out

    @property
    def n_train(self) -> int:
        return int(len(self.y_train))

    @property
    def n_test(self) -> int:
        return int(len(self.y_test))

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def is_image(self) -> bool:
        return self.x_train.ndim == 4

    def targets_x(self) -> np.ndarray:
        """All targets in store order: train examples first, then test."""
        return np.concatenate([self.x_train, self.x_test])

    def targets_y(self) -> np.ndarray:
        return np.concatenate([self.y_train, self.y_test])

    def fingerprint(self) -> str:
        """A hash of the arrays, so a run directory can refuse a different dataset."""
        h = hashlib.sha256()
        for arr in (self.x_train, self.y_train, self.x_test, self.y_test):
            a = np.ascontiguousarray(arr)
            h.update(str((a.shape, a.dtype.str)).encode())
            h.update(a.tobytes())
        h.update("\x00".join(self.classes).encode())
        return h.hexdigest()[:16]


MAX_ABS_VALUE = 1e12  # beyond this, float32 standardisation (sums of squares) overflows


def check_values(x: np.ndarray, where: str) -> None:
    """Pixels/features must be finite and within +-MAX_ABS_VALUE; the message names the first bad example
    and its real value (checked in the array's own dtype, before any conversion)."""
    if not np.issubdtype(x.dtype, np.number) or x.size == 0:
        return
    flat = x.reshape(len(x), -1)
    if np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(flat) | (np.abs(flat) > MAX_ABS_VALUE)
    elif np.iinfo(x.dtype).max > MAX_ABS_VALUE:
        bad = (flat > MAX_ABS_VALUE) | (flat < -MAX_ABS_VALUE) if np.iinfo(x.dtype).min < 0 else flat > MAX_ABS_VALUE
    else:
        return
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise AuditError(f"{where}[{i}] has the value {flat[i, j].item():.6g} (NaN or infinite values, and values "
                         f"beyond +-{MAX_ABS_VALUE:g}, are refused); clean, rescale or drop that example")


def validate(ds: Dataset) -> Dataset:
    """Check shapes, labels and values; raise AuditError naming the first problem."""
    if len(ds.classes) < 2:
        raise AuditError(f"{ds.spec}: the data has {len(ds.classes)} class; a classifier needs at least 2 "
                         "(give class_names, or labels of two or more classes)")
    names = [str(c).strip() for c in ds.classes]
    if not all(names):
        raise AuditError(f"{ds.spec}: class {names.index('')} has an empty name; name every class (findings, the "
                         "report and the labelling exports show the names)")
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        first = [i for i, c in enumerate(names) if c == twice[0]]
        raise AuditError(f"{ds.spec}: classes {first[0]} and {first[1]} are both named {twice[0]!r}; give every class "
                         "its own name (findings and the labelling exports could not tell them apart)")
    for part in ("train", "test"):
        x, y = getattr(ds, f"x_{part}"), getattr(ds, f"y_{part}")
        if len(x) == 0:
            raise AuditError(f"{ds.spec}: the {part} split is empty; it needs at least one example")
        if len(x) != len(y):
            raise AuditError(f"{ds.spec}: x_{part} has {len(x)} rows but y_{part} has {len(y)}; they must match")
        if x.ndim not in (2, 4):
            raise AuditError(f"{ds.spec}: x_{part} has shape {x.shape}; expected [N, H, W, C] images or [N, D] features")
        if not np.issubdtype(x.dtype, np.number):
            raise AuditError(f"{ds.spec}: x_{part} has dtype {x.dtype}; expected numbers")
        check_values(x, f"{ds.spec}: x_{part}")
        if not np.issubdtype(y.dtype, np.integer):
            raise AuditError(f"{ds.spec}: y_{part} has dtype {y.dtype}; expected integer class labels")
        if y.ndim != 1:
            raise AuditError(f"{ds.spec}: y_{part} has shape {y.shape}; expected one label per example")
        if len(y) and (y.min() < 0 or y.max() >= len(ds.classes)):
            bad = int(np.argmax((y < 0) | (y >= len(ds.classes))))
            raise AuditError(f"{ds.spec}: y_{part}[{bad}] = {int(y[bad])} is outside 0..{len(ds.classes) - 1} "
                             f"({len(ds.classes)} classes)")
    if ds.x_train.shape[1:] != ds.x_test.shape[1:]:
        raise AuditError(f"{ds.spec}: train examples have shape {ds.x_train.shape[1:]} but test examples "
                         f"{ds.x_test.shape[1:]}; they must match")
    for key, arr in ds.meta.items():
        part = key.rsplit("_", 1)[-1]
        n = ds.n_train if part == "train" else ds.n_test if part == "test" else None
        if n is not None and len(arr) != n:
            raise AuditError(f"{ds.spec}: metadata {key} has {len(arr)} values for {n} examples")
    return ds
