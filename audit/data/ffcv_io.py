"""FFCV: write a Dataset once to ``.beton`` files and read them back with FFCV loaders.

Optional (``pip install '.[ffcv]'``; ffcv 1.0.2 compiles against pkg-config,
libturbojpeg0-dev and libopencv-dev: ``scripts/setup-ffcv.sh`` installs all of it).
Images ``[N, H, W, 3]`` uint8 go to an ``RGBImageField`` (``raw`` by default: lossless, no
decoding cost; ``jpg`` for smaller files), anything else (other channel counts, floats,
feature rows) to an ``NDArrayField``; labels and the example's index go to ``IntField``s.
``ffcv.json`` beside the files records the dataset spec, fingerprint, classes and fields.

Importing ffcv sets torch to one thread, and iterating an FFCV ``Loader`` sets it to the
loader's ``num_workers``; this module restores torch's thread count after each (the
loader: when a pass over it ends).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from audit.data import dataset_name
from audit.data.dataset import Dataset
from audit.data.paths import default_data_dir
from audit.errors import AuditError
from audit.jsonio import read_json, write_json

META_FILE = "ffcv.json"
SPLITS = ("train", "test")
HOW_TO_INSTALL = ("FFCV is not installed: run scripts/setup-ffcv.sh (it apt-installs pkg-config, libturbojpeg0-dev "
                  "and libopencv-dev, then runs pip install '.[ffcv]')")


def import_ffcv() -> Any:
    """Import ffcv (and the submodules used here), keeping torch's thread count; AuditError if missing."""
    import torch

    threads = torch.get_num_threads()
    try:
        import ffcv
        import ffcv.fields  # noqa: F401
        import ffcv.fields.decoders  # noqa: F401
        import ffcv.loader  # noqa: F401
        import ffcv.transforms  # noqa: F401
        import ffcv.writer  # noqa: F401
    except ImportError as exc:
        raise AuditError(f"{HOW_TO_INSTALL} ({exc})") from None
    finally:
        torch.set_num_threads(threads)
    return ffcv


def is_rgb_images(x: np.ndarray) -> bool:
    """True for ``[N, H, W, 3]`` uint8 arrays (stored as RGBImageField)."""
    return x.ndim == 4 and x.shape[-1] == 3 and x.dtype == np.uint8


class _Split:
    """An indexable (image, label, index) view of one split, as DatasetWriter wants it."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple:
        return np.ascontiguousarray(self.x[i]), int(self.y[i]), int(i)


class _NoBar:
    """Stands in for ffcv's tqdm bar: library code prints nothing."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def default_beton_dir(spec: str, year: int | None = None) -> Path:
    """``$AUDIT_DATA/ffcv/<dataset>`` (default ``~/.cache/datamodel-audit/ffcv/<dataset>``);
    ``<dataset>`` is the kind (``cifar10``, ``fmow`` or ``fmow-<year>``) or the file/folder name (audit.data.dataset_name)."""
    name = dataset_name(spec)
    if year is not None:
        name = f"{name}-{year}"
    return default_data_dir() / "ffcv" / name


def beton_paths(out_dir: Path | str) -> dict[str, Path]:
    """Where ``write_beton`` puts each split."""
    out = Path(out_dir)
    return {split: out / f"{split}.beton" for split in SPLITS}


def write_beton(dataset: Dataset, out_dir: Path | str, write_mode: str = "raw", jpeg_quality: int = 90,
                num_workers: int | None = None, overwrite: bool = False) -> dict[str, Path]:
    """Write ``train.beton`` and ``test.beton`` (+ ``ffcv.json``) under ``out_dir``; returns the paths.

    Files already written for the same dataset (same fingerprint and settings) are kept
    unless ``overwrite``.
    """
    if write_mode not in ("raw", "jpg"):
        raise AuditError(f"write_mode must be raw or jpg (got {write_mode!r})")
    if not 1 <= int(jpeg_quality) <= 100:
        raise AuditError(f"jpeg_quality must lie in 1..100 (got {jpeg_quality})")
    ffcv = import_ffcv()
    out = Path(out_dir)
    paths = beton_paths(out)
    rgb = is_rgb_images(dataset.x_train)
    if write_mode == "jpg" and not rgb:
        raise AuditError(f"{dataset.spec}: jpg needs RGB uint8 images [N, H, W, 3]; got {dataset.x_train.shape} "
                         f"{dataset.x_train.dtype}: use write_mode raw")
    meta = {"spec": dataset.spec, "fingerprint": dataset.fingerprint(), "classes": list(dataset.classes),
            "n_train": dataset.n_train, "n_test": dataset.n_test, "x_shape": list(dataset.x_train.shape[1:]),
            "x_dtype": dataset.x_train.dtype.str, "image_field": "rgb" if rgb else "ndarray",
            "write_mode": write_mode if rgb else "ndarray", "jpeg_quality": int(jpeg_quality),
            "fields": ["image", "label", "index"]}
    meta_path = out / META_FILE
    if not overwrite and meta_path.exists() and all(p.exists() for p in paths.values()):
        try:
            if read_json(meta_path) == meta:
                return paths
        except (OSError, ValueError):
            pass
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AuditError(f"cannot create {out}: {exc.strerror or exc}") from None
    workers = max(1, int(num_workers or min(8, os.cpu_count() or 1, 1 + dataset.n_train // 2000)))
    small = dataset.x_train.nbytes + dataset.x_test.nbytes < 2**26  # small data: 2 MiB pages, not 8
    from ffcv.fields import IntField, NDArrayField, RGBImageField

    for split, path in paths.items():
        x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
        image_field = (RGBImageField(write_mode=write_mode, jpeg_quality=int(jpeg_quality)) if rgb
                       else NDArrayField(dtype=x.dtype, shape=tuple(x.shape[1:])))
        writer = ffcv.writer.DatasetWriter(str(path), {"image": image_field, "label": IntField(),
                                                       "index": IntField()}, num_workers=workers,
                                           **({"page_size": 2**21} if small else {}))
        with _silenced_bar(ffcv):
            try:
                writer.from_indexed_dataset(_Split(x, y), chunksize=max(1, min(1000, len(y) // workers or 1)))
            except OSError as exc:
                raise AuditError(f"cannot write {path}: {exc.strerror or exc}") from None
    write_json(meta_path, meta)
    return paths


@contextlib.contextmanager
def _silenced_bar(ffcv: Any):
    old = ffcv.writer.tqdm
    ffcv.writer.tqdm = _NoBar
    try:
        yield
    finally:
        ffcv.writer.tqdm = old


def read_meta(out_dir: Path | str) -> dict:
    """The ``ffcv.json`` that ``write_beton`` wrote; AuditError if there is none."""
    path = Path(out_dir) / META_FILE
    if not path.exists():
        raise AuditError(f"{out_dir} has no {META_FILE}; write the files with `audit data prepare` first")
    return read_json(path)


def ffcv_loader(path: Path | str, batch_size: int, *, order: str = "sequential", indices: Sequence[int] | None = None,
                num_workers: int | None = None, drop_last: bool = False, seed: int | None = None,
                device: str | None = None, os_cache: bool = True) -> Any:
    """An FFCV ``Loader`` over a ``.beton`` written by ``write_beton``.

    Batches are ``(images, labels, indices)`` torch tensors: images ``[B, H, W, C]`` in the
    stored dtype (uint8 for RGB; normalise on the GPU), labels and indices int64 ``[B]``.
    ``order`` is sequential, random or quasi_random; ``indices`` reads a subset (a
    model's mask); ``device`` (e.g. ``cuda``) moves batches there asynchronously.
    FFCV reuses its batch buffers: use each batch before the next, or ``.clone()`` it.
    While a pass runs torch has ``num_workers`` threads (FFCV sets that); the thread count
    from before comes back when the pass ends.
    """
    ffcv = import_ffcv()
    from ffcv.fields.decoders import IntDecoder, NDArrayDecoder, SimpleRGBImageDecoder
    from ffcv.loader import OrderOption
    from ffcv.transforms import Squeeze, ToDevice, ToTensor

    path = Path(path)
    if not path.is_file():
        raise AuditError(f"no FFCV file at {path}; write it with `audit data prepare`")
    orders = {"sequential": OrderOption.SEQUENTIAL, "random": OrderOption.RANDOM,
              "quasi_random": OrderOption.QUASI_RANDOM}
    if order not in orders:
        raise AuditError(f"order must be one of {', '.join(orders)} (got {order!r})")
    if batch_size < 1:
        raise AuditError(f"batch_size must be at least 1 (got {batch_size})")
    meta_path = path.parent / META_FILE
    rgb = read_json(meta_path).get("image_field", "rgb") == "rgb" if meta_path.exists() else True
    tail: list = [ToTensor()]
    if device:
        import torch

        tail.append(ToDevice(torch.device(device), non_blocking=True))
    pipelines = {
        "image": [SimpleRGBImageDecoder() if rgb else NDArrayDecoder(), *tail],
        "label": [IntDecoder(), *tail, Squeeze(1)],
        "index": [IntDecoder(), *tail, Squeeze(1)],
    }
    import torch

    threads = torch.get_num_threads()
    try:
        workers = int(num_workers or min(8, os.cpu_count() or 1))
        loader = ffcv.loader.Loader(str(path), batch_size=int(batch_size), num_workers=workers,
                                    order=orders[order], indices=None if indices is None else np.asarray(indices),
                                    drop_last=drop_last, seed=seed, os_cache=os_cache, pipelines=pipelines)
    except (OSError, ValueError) as exc:
        raise AuditError(f"cannot read {path} with FFCV: {exc}") from None
    finally:
        torch.set_num_threads(threads)
    return ThreadKeepingLoader(loader)


class ThreadKeepingLoader:
    """An FFCV ``Loader`` whose passes give torch its thread count back when they end."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self):
        import torch

        threads = torch.get_num_threads()
        try:
            yield from self.loader
        finally:
            torch.set_num_threads(threads)


def read_beton(out_dir: Path | str, batch_size: int = 512, num_workers: int | None = None) -> Dataset:
    """Read ``train.beton`` and ``test.beton`` back into a ``Dataset`` through FFCV loaders
    (in example order; the spec, classes and fingerprint come from ``ffcv.json``)."""
    meta = read_meta(out_dir)
    arrays = {}
    for split, path in beton_paths(out_dir).items():
        xs, ys, ids = [], [], []
        for x, y, idx in ffcv_loader(path, batch_size, num_workers=num_workers):
            xs.append(x.numpy().copy())
            ys.append(y.numpy().astype(np.int64))
            ids.append(idx.numpy().astype(np.int64))
        idx = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        n = meta[f"n_{split}"]
        if len(idx) != n or not np.array_equal(np.sort(idx), np.arange(n)):
            raise AuditError(f"{path} holds {len(idx)} examples, not the {n} that {META_FILE} lists; "
                             f"write it again with `audit data prepare --overwrite`")
        order = np.argsort(idx)
        x = np.concatenate(xs)[order]
        arrays[f"x_{split}"] = x.reshape((n, *meta["x_shape"])).astype(np.dtype(meta["x_dtype"]), copy=False)
        arrays[f"y_{split}"] = np.concatenate(ys)[order]
    return Dataset(spec=meta["spec"], classes=tuple(meta["classes"]), **arrays)
