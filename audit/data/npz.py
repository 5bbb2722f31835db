"""Users' own data as one ``.npz`` file (keys x_train, y_train, x_test, y_test, ...)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from audit.data.dataset import Dataset, check_values
from audit.errors import AuditError

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")
GEO_KEYS = ("lat_train", "lon_train", "lat_test", "lon_test")
HOW_TO_MAKE = "write it with numpy.savez(PATH, x_train=..., y_train=..., x_test=..., y_test=...)"


def _check_header(npz: np.lib.npyio.NpzFile, key: str, path: Path, spec: str) -> None:
    """Refuse a member whose header claims more bytes than the archive holds (before allocating them)."""
    try:
        info = npz.zip.getinfo(f"{key}.npy")
        with npz.zip.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
            have = info.file_size - fh.tell()
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError):
        return  # reading the member reports these properly
    if dtype.hasobject:
        return
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if need > have:
        raise AuditError(f"{spec}: {path} key {key!r} claims shape {shape} ({need / 2**30:.3g} GiB) but holds only "
                         f"{have} bytes; the file is truncated or corrupt")


def _get(npz: np.lib.npyio.NpzFile, key: str, path: Path, spec: str) -> np.ndarray:
    _check_header(npz, key, path, spec)
    try:
        return npz[key]
    except MemoryError:
        raise AuditError(f"{spec}: {path} key {key!r} does not fit in memory; use a smaller dataset") from None
    except ValueError as e:  # object arrays need pickle, which is refused
        raise AuditError(f"{spec}: {path} key {key!r} holds pickled Python objects; store plain numeric "
                         "(or string) arrays") from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise AuditError(f"{spec}: {path} key {key!r} cannot be read ({type(e).__name__}); "
                         "the file is truncated or corrupt") from e


def _features(x: np.ndarray, key: str, path: Path, spec: str) -> np.ndarray:
    """[N,H,W] -> [N,H,W,1]; [N,H,W,C] and [N,D] kept; floats as float32, bools as uint8."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim not in (2, 4):
        raise AuditError(f"{spec}: {path} {key} has shape {x.shape}; expected [N, H, W], [N, H, W, C] or [N, D]")
    if x.ndim == 4 and 0 in x.shape[1:]:
        raise AuditError(f"{spec}: {path} {key} has shape {x.shape}; images need a height, width and channels of at "
                         f"least 1")
    if x.ndim == 2 and x.shape[1] == 0:
        raise AuditError(f"{spec}: {path} {key} has shape {x.shape}; each example needs at least one feature")
    check_values(x, f"{spec}: {path} {key}")
    if x.dtype == np.bool_:
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32, copy=False)
    if not np.issubdtype(x.dtype, np.integer):
        raise AuditError(f"{spec}: {path} {key} has dtype {x.dtype}; expected numbers")
    return x


def _labels(y: np.ndarray, key: str, path: Path, spec: str) -> np.ndarray:
    if y.ndim != 1:
        raise AuditError(f"{spec}: {path} {key} has shape {y.shape}; expected one label per example")
    if np.issubdtype(y.dtype, np.integer):
        if len(y) and np.iinfo(y.dtype).max > np.iinfo(np.int64).max and y.max() > np.iinfo(np.int64).max:
            i = int(np.argmax(y))
            raise AuditError(f"{spec}: {path} {key}[{i}] = {int(y[i])}; class labels must be 0..C-1")
        y = y.astype(np.int64)
    elif np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all() \
            and np.abs(y).max(initial=0) < 2.0**62:
        y = y.astype(np.int64)
    else:
        raise AuditError(f"{spec}: {path} {key} has dtype {y.dtype}; expected integer class labels")
    if len(y) and y.min() < 0:
        i = int(np.argmax(y < 0))
        raise AuditError(f"{spec}: {path} {key}[{i}] = {int(y[i])}; class labels start at 0")
    return y


def load_npz(path: str, spec: str | None = None) -> Dataset:
    """Load ``npz:FILE``: required x/y train/test arrays, optional class_names and lat/lon."""
    file = Path(path).expanduser()
    spec = spec or f"npz:{path}"
    if not file.is_file():
        raise AuditError(f"{spec}: {file} does not exist; {HOW_TO_MAKE}")
    try:
        npz = np.load(file, allow_pickle=False)
    except Exception as e:  # not a zip/npy, truncated, pickled
        raise AuditError(f"{spec}: {file} is not a readable .npz file ({type(e).__name__}); {HOW_TO_MAKE}") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise AuditError(f"{spec}: {file} holds a single array (.npy), not an .npz archive; {HOW_TO_MAKE}")
    with npz:
        keys = set(npz.files)
        missing = [k for k in REQUIRED_KEYS if k not in keys]
        if missing:
            raise AuditError(f"{spec}: {file} lacks key(s) {', '.join(missing)} (has {', '.join(sorted(keys)) or 'none'}); "
                             f"{HOW_TO_MAKE}")
        x_train = _features(_get(npz, "x_train", file, spec), "x_train", file, spec)
        x_test = _features(_get(npz, "x_test", file, spec), "x_test", file, spec)
        y_train = _labels(_get(npz, "y_train", file, spec), "y_train", file, spec)
        y_test = _labels(_get(npz, "y_test", file, spec), "y_test", file, spec)
        n_labels = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
        if "class_names" in keys:
            names = _get(npz, "class_names", file, spec)
            if names.ndim != 1 or not (names.dtype.kind in "USiu"):
                raise AuditError(f"{spec}: {file} class_names has shape {names.shape} and dtype {names.dtype}; "
                                 "expected a 1-D array of strings")
            classes = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names.tolist())
            if n_labels > len(classes):
                which = "y_train" if y_train.max(initial=-1) >= len(classes) else "y_test"
                raise AuditError(f"{spec}: {file} {which} has label {n_labels - 1} but class_names lists only "
                                 f"{len(classes)} classes (0..{len(classes) - 1})")
        else:
            n_examples = len(y_train) + len(y_test)
            if n_labels > n_examples:
                which, y = ("y_train", y_train) if y_train.max(initial=-1) == n_labels - 1 else ("y_test", y_test)
                i = int(np.argmax(y))
                raise AuditError(f"{spec}: {file} {which}[{i}] = {int(y[i])}, but without class_names labels must "
                                 f"be 0..C-1 with C at most the {n_examples} examples; renumber the labels or give "
                                 f"class_names")
            classes = tuple(str(c) for c in range(max(n_labels, 1)))
        meta: dict[str, np.ndarray] = {}
        present = [k for k in GEO_KEYS if k in keys]
        if present and len(present) != len(GEO_KEYS):
            lacking = [k for k in GEO_KEYS if k not in keys]
            raise AuditError(f"{spec}: {file} has {', '.join(present)} but lacks {', '.join(lacking)}; "
                             "give all four lat/lon keys or none")
        for key in present:
            values = _get(npz, key, file, spec)
            if values.ndim != 1 or not np.issubdtype(values.dtype, np.number):
                raise AuditError(f"{spec}: {file} {key} has shape {values.shape} and dtype {values.dtype}; "
                                 "expected one number (degrees) per example")
            values = values.astype(np.float64)
            limit = 90.0 if key.startswith("lat") else 180.0
            bad = np.flatnonzero(~np.isfinite(values) | (np.abs(values) > limit))
            if len(bad):
                i = int(bad[0])
                raise AuditError(f"{spec}: {file} {key}[{i}] = {values[i]}, outside -{limit:g}..{limit:g} degrees")
            meta[key] = values
    return Dataset(spec=spec, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   classes=classes, meta=meta)
