"""``hf:DIR``: a Hugging Face dataset saved with ``DatasetDict.save_to_disk`` (splits ``train``
and ``test``), read offline with ``datasets.load_from_disk`` (needs the ``hf`` extra).

Options in the spec: ``image=COLUMN`` (default ``image``), ``label=COLUMN`` (default
``label``) and ``size=HxW``. The image column is a ``datasets.Image`` feature (encoded bytes,
decoded here with Pillow, in parallel, cached by the Arrow files' contents) or a numeric
array column ``[H, W]`` / ``[H, W, C]`` of 0..255 values. Class names come from a
``ClassLabel`` label column; integer labels without names are classes ``0..max``; string
labels are sorted (the train labels; a test label must be one of them).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np

from audit.data.dataset import Dataset
from audit.data.decode import Source, cached_arrays, content_key, hash_files, source_id, split_decoded
from audit.data.spec import Spec, dataset_name
from audit.errors import AuditError
from audit.progress import SILENT, Progress

SPLITS = ("train", "test")
HOW = ("save it with datasets.DatasetDict({'train': ..., 'test': ...}).save_to_disk(DIR)")
INSTALL = "pip install 'datamodel-audit[hf]' (or EXTRAS=hf bash scripts/setup.sh)"


def import_datasets():
    try:
        import datasets
    except ImportError:
        raise AuditError(f"hf: datasets need the 'datasets' package, which is not installed: {INSTALL}") from None
    return datasets


@contextlib.contextmanager
def _quiet(datasets) -> Iterator[None]:
    """No tqdm bars from ``datasets`` while we load (library code prints nothing)."""
    utils = datasets.utils
    was_disabled = utils.are_progress_bars_disabled()
    utils.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            utils.enable_progress_bars()


def _open(spec: Spec, root: Path):
    datasets = import_datasets()
    with _quiet(datasets):
        try:
            loaded = datasets.load_from_disk(str(root))
        except FileNotFoundError as e:
            raise AuditError(f"{spec.text}: {root} is not a saved Hugging Face dataset ({str(e).splitlines()[0]}); "
                             f"{HOW}") from None
        except Exception as e:  # corrupt state.json / Arrow files
            line = (str(e).strip().splitlines() or [""])[0]
            raise AuditError(f"{spec.text}: {root} cannot be loaded with datasets.load_from_disk "
                             f"({type(e).__name__}: {line}); {HOW}") from None
    if not isinstance(loaded, datasets.DatasetDict):
        raise AuditError(f"{spec.text}: the test split is missing: {root} holds one Dataset, not a DatasetDict with "
                         f"train and test splits; {HOW}")
    for split in SPLITS:
        if split not in loaded:
            raise AuditError(f"{spec.text}: the {split} split is missing: {root} has {', '.join(loaded) or 'no'} "
                             f"split(s); {HOW}")
    return datasets, loaded


def _arrow_files(ds, root: Path, split: str, spec: Spec) -> list[Path]:
    files = [Path(f["filename"]) for f in (ds.cache_files or [])]
    if not files:  # pragma: no cover - load_from_disk always memory-maps its files
        files = sorted((root / split).glob("*.arrow"))
    if not files:
        raise AuditError(f"{spec.text}: {root / split} has no Arrow files; {HOW}")
    return files


def _column(ds, name: str, what: str, split: str, root: Path, spec: Spec):
    if name not in ds.column_names:
        raise AuditError(f"{spec.text}: the {split} split of {root} has no {what} column {name!r} "
                         f"(columns: {', '.join(ds.column_names)}); name it with hf:DIR?{what}=COLUMN")
    return ds.features[name]


def _image_sources(ds, col: str, split: str, root: Path, spec: Spec) -> list[Source]:
    """One Source per row of an Image column (embedded bytes, or the file it names)."""
    chunked = ds.data.column(col)
    arr = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
    data = arr.field("bytes").to_pylist()
    paths = arr.field("path").to_pylist()
    out = []
    for i, (b, p) in enumerate(zip(data, paths)):
        where = f"{root / split} row {i} (column {col!r})"
        if b is not None:
            out.append(Source(where=where, data=b))
        elif p and Path(p).is_file():
            out.append(Source(where=f"{p} ({where})", path=Path(p)))
        else:
            raise AuditError(f"{spec.text}: {where} has no image bytes" + (f" and its file {p} does not exist" if p else "")
                             + "; save the dataset with the images embedded")
    return out


def _array_images(ds, col: str, split: str, root: Path, spec: Spec) -> np.ndarray:
    """A numeric array column as uint8 [N, H, W, C]."""
    try:
        x = np.asarray(ds.with_format("numpy")[col][:])
    except Exception as e:
        raise AuditError(f"{spec.text}: the {col!r} column of {root / split} is neither a datasets.Image column nor "
                         f"a numeric array of one shape ({type(e).__name__}); use datasets.Image()") from None
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.number) or x.shape[-1] not in (1, 3):
        raise AuditError(f"{spec.text}: the {col!r} column of {root / split} has shape {x.shape} and dtype {x.dtype}; "
                         "expected images [N, H, W] or [N, H, W, 1|3], or a datasets.Image column")
    if x.size and (x.min() < 0 or x.max() > 255 or (np.issubdtype(x.dtype, np.floating) and (x != np.round(x)).any())):
        raise AuditError(f"{spec.text}: the {col!r} column of {root / split} has values outside the integers "
                         "0..255; store uint8 pixels or a datasets.Image column")
    if spec.size is not None and x.shape[1:3] != spec.size:
        raise AuditError(f"{spec.text}: size= resizes only datasets.Image columns; the {col!r} array column is "
                         f"{x.shape[1]}x{x.shape[2]}")
    return np.ascontiguousarray(x.astype(np.uint8))


def _labels(datasets, splits: dict, col: str, root: Path, spec: Spec) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    feature = splits["train"].features[col]
    raw = {s: splits[s].data.column(col).to_pylist() for s in SPLITS}
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    for s in SPLITS:
        test_feature = splits[s].features[col]
        if names is not None and isinstance(test_feature, datasets.ClassLabel) and list(test_feature.names) != names:
            raise AuditError(f"{spec.text}: the {col!r} ClassLabel names of the {s} split differ from the train "
                             "split's; both splits need the same classes")
    if names is None:
        values = [v for s in SPLITS for v in raw[s]]
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            names = [str(c) for c in range(max([0, *(int(v) + 1 for v in values)]))]
            classes = tuple(names)
            lookup = None
        elif all(isinstance(v, str) for v in values):
            train_labels = set(raw["train"])
            try:
                classes = tuple(sorted(train_labels, key=lambda v: (int(v), v)))
            except ValueError:
                classes = tuple(sorted(train_labels))
            lookup = {c: i for i, c in enumerate(classes)}
        else:
            bad = next(v for v in values if not isinstance(v, (str, int, np.integer)) or isinstance(v, bool))
            raise AuditError(f"{spec.text}: the {col!r} column holds {type(bad).__name__} values; expected a "
                             "ClassLabel, integer or string labels")
    else:
        classes, lookup = tuple(names), None
    out: dict[str, np.ndarray] = {}
    for s in SPLITS:
        if lookup is not None:
            for i, v in enumerate(raw[s]):
                if v not in lookup:
                    raise AuditError(f"{spec.text}: {root / s} row {i} has label {v!r}, which is not among the "
                                     f"train labels ({', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})")
            out[s] = np.array([lookup[v] for v in raw[s]], dtype=np.int64)
            continue
        for i, v in enumerate(raw[s]):
            if v is None or not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 0 <= int(v) < len(classes):
                raise AuditError(f"{spec.text}: {root / s} row {i} has label {v!r}, which is not one of the "
                                 f"{len(classes)} classes (0..{len(classes) - 1})")
        out[s] = np.array(raw[s], dtype=np.int64)
    return classes, out


def load_hf(spec: Spec, progress: Progress = SILENT) -> Dataset:
    """Load ``hf:DIR``; Image columns decoded in parallel and cached (audit.data.decode)."""
    if not spec.arg:
        raise AuditError(f"{spec.text}: hf needs a directory: use hf:DIR (a dataset saved with save_to_disk)")
    if "://" in spec.arg:
        raise AuditError(f"{spec.text}: hf: reads a local folder only (offline); copy the dataset to disk first")
    root = Path(spec.arg).expanduser()
    if not root.is_dir():
        raise AuditError(f"{spec.text}: {root} is not a directory; {HOW}")
    image_col = spec.options.get("image", "image")
    label_col = spec.options.get("label", "label")
    datasets, loaded = _open(spec, root)
    splits = {s: loaded[s] for s in SPLITS}
    for s in SPLITS:
        if len(splits[s]) == 0:
            raise AuditError(f"{spec.text}: the {s} split of {root} is empty; it needs at least one example")
        _column(splits[s], label_col, "label", s, root, spec)
    image_features = {s: _column(splits[s], image_col, "image", s, root, spec) for s in SPLITS}
    classes, y = _labels(datasets, splits, label_col, root, spec)
    if all(isinstance(f, datasets.Image) for f in image_features.values()):
        digests = {s: [hash_files(_arrow_files(splits[s], root, s, spec), spec.text)] for s in SPLITS}
        key = content_key(spec, digests, extra=f"hf-image={image_col}")

        def build() -> dict[str, np.ndarray]:
            sources = {s: _image_sources(splits[s], image_col, s, root, spec) for s in SPLITS}
            return split_decoded(spec, sources, progress)

        arrays = cached_arrays(dataset_name(spec.text), source_id(spec, root), key, build)
    else:
        arrays = {f"x_{s}": _array_images(splits[s], image_col, s, root, spec) for s in SPLITS}
    return Dataset(spec=spec.text, x_train=arrays["x_train"], y_train=y["train"], x_test=arrays["x_test"],
                   y_test=y["test"], classes=classes)
