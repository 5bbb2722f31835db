"""CIFAR-10 from the standard python-pickle folder ``cifar-10-batches-py``."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from audit.data.dataset import Dataset
from audit.data.paths import resolve_data_dir
from audit.errors import AuditError

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
IMAGE_BYTES = 3 * 32 * 32
HOW_TO_GET = ("download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
              "and extract it there, or pass cifar10:DIR")


def _numpy_multiarray() -> Any:
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        return importlib.import_module("numpy.core.multiarray")


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only what CIFAR-10 files hold: numpy arrays, lists, dicts."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(_numpy_multiarray(), name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "_codecs" and name == "encode":
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


def _read_pickle(path: Path, spec: str) -> dict:
    """One CIFAR pickle as a dict with bytes keys; AuditError naming the file otherwise."""
    if not path.is_file():
        raise AuditError(f"{spec}: {path} is missing; the CIFAR-10 folder needs {', '.join(TRAIN_FILES)}, "
                         f"{TEST_FILE} and {META_FILE}: {HOW_TO_GET}")
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise AuditError(f"{spec}: cannot read {path}: {e.strerror or e}") from e
    except Exception as e:  # truncated or foreign pickles raise many types
        raise AuditError(f"{spec}: {path} is truncated or not a CIFAR-10 python pickle "
                         f"({type(e).__name__}); re-extract it: {HOW_TO_GET}") from e
    if not isinstance(obj, dict):
        raise AuditError(f"{spec}: {path} holds a {type(obj).__name__}, not a CIFAR-10 batch dict; {HOW_TO_GET}")
    return obj


def _read_batch(path: Path, spec: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 32, 32, 3] uint8 and labels [N] int64 of one batch file."""
    batch = _read_pickle(path, spec)
    for key in (b"data", b"labels"):
        if key not in batch:
            raise AuditError(f"{spec}: {path} has no {key.decode()!r} entry; it is not a CIFAR-10 batch")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        shape = getattr(data, "shape", type(data).__name__)
        raise AuditError(f"{spec}: {path} 'data' has shape {shape}; expected [N, {IMAGE_BYTES}] uint8")
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer) or (data.size and (data.min() < 0 or data.max() > 255)):
            raise AuditError(f"{spec}: {path} 'data' has dtype {data.dtype} with values outside 0..255; "
                             "expected uint8 pixels")
        data = data.astype(np.uint8)
    try:
        labels = np.asarray(batch[b"labels"])
    except Exception as e:
        raise AuditError(f"{spec}: {path} 'labels' is not a list of integers") from e
    if labels.ndim != 1 or len(labels) != len(data) or (len(labels) and not np.issubdtype(labels.dtype, np.integer)):
        raise AuditError(f"{spec}: {path} has {len(data)} images but 'labels' has shape {labels.shape} "
                         f"and dtype {labels.dtype}; expected one integer label per image")
    labels = labels.astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if len(bad):
        i = int(bad[0])
        raise AuditError(f"{spec}: {path} label {i} is {int(labels[i])}, outside 0..{n_classes - 1} "
                         f"({n_classes} classes in {META_FILE})")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _read_classes(path: Path, spec: str) -> tuple[str, ...]:
    meta = _read_pickle(path, spec)
    names = meta.get(b"label_names")
    if not isinstance(names, (list, tuple)) or not names:
        raise AuditError(f"{spec}: {path} has no 'label_names' list; it is not the CIFAR-10 batches.meta")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names)


def load_cifar10(directory: str | None, spec: str = "cifar10") -> Dataset:
    """Load CIFAR-10 (50,000 train / 10,000 test, uint8 [N, 32, 32, 3]).

    ``directory`` is the ``cifar-10-batches-py`` folder or its parent; ``None`` means
    ``$AUDIT_DATA/cifar-10-batches-py`` (default ``~/.cache/datamodel-audit/...``).
    """
    root = resolve_data_dir(directory, FOLDER)
    if not root.is_dir():
        raise AuditError(f"{spec}: no CIFAR-10 folder at {root} ({FOLDER} with data_batch_1..5, {TEST_FILE}, "
                         f"{META_FILE}); {HOW_TO_GET}")
    missing = [name for name in (*TRAIN_FILES, TEST_FILE, META_FILE) if not (root / name).is_file()]
    if missing:
        raise AuditError(f"{spec}: {root} lacks {', '.join(missing)}; {HOW_TO_GET}")
    classes = _read_classes(root / META_FILE, spec)
    parts = [_read_batch(root / name, spec, len(classes)) for name in TRAIN_FILES]
    x_test, y_test = _read_batch(root / TEST_FILE, spec, len(classes))
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return Dataset(spec=spec, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, classes=classes)
