"""WILDS FMoW v1.1 (``fmow_v1.1``: ``rgb_metadata.csv`` + ``images/rgb_img_{k}.png``).

The in-distribution splits of the datamodels paper: train = raw ``train`` rows,
test = raw ``test`` rows, both kept only when the timestamp falls in ``year`` (2012).
"""

from __future__ import annotations

import csv
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit.data.dataset import Dataset
from audit.data.paths import resolve_data_dir
from audit.errors import AuditError

FOLDER = "fmow_v1.1"
METADATA = "rgb_metadata.csv"
REQUIRED_COLUMNS = ("split", "category", "timestamp", "lat", "lon")
HOW_TO_GET = ("get it with `pip install wilds` and `python -c \"import wilds; "
              "wilds.get_dataset('fmow', root_dir='PARENT', download=True)\"` (about 50 GB), or pass fmow:DIR")
_DATE = re.compile(r"^\s*(\d{4})-(\d{2})-(\d{2})")


@dataclass(frozen=True)
class _Row:
    k: int  # row number among non-seq rows = image index
    line: int  # line in the CSV file (header is line 1)
    category: str
    lat: float
    lon: float


def _year_of(value: str) -> int | None:
    """The year of an ISO-like timestamp (``2015-03-09T15:21:05Z``, fractional seconds too)."""
    m = _DATE.match(value)
    if not m:
        return None
    year, month, day = (int(g) for g in m.groups())
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    return year


def _coordinate(row: dict, column: str, limit: float, where: str, spec: str) -> float:
    raw = (row.get(column) or "").strip()
    if not raw:
        raise AuditError(f"{spec}: {where} has no {column} value; every train/test row needs lat and lon")
    try:
        value = float(raw)
    except ValueError:
        raise AuditError(f"{spec}: {where} has {column} = {raw!r}, not a number") from None
    if not math.isfinite(value) or abs(value) > limit:
        raise AuditError(f"{spec}: {where} has {column} = {raw}, outside -{limit:g}..{limit:g} degrees")
    return value


def _read_metadata(path: Path, year: int, spec: str) -> tuple[tuple[str, ...], dict[str, list[_Row]]]:
    """Sorted category names (all non-seq rows) and the selected train/test rows."""
    selected: dict[str, list[_Row]] = {"train": [], "test": []}
    categories: set[str] = set()
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise AuditError(f"{spec}: {path} has no {', '.join(repr(c) for c in missing)} column; "
                                 f"expected the WILDS FMoW v1.1 columns ({', '.join(REQUIRED_COLUMNS)}, ...)")
            k = 0
            for row in reader:
                split = (row.get("split") or "").strip()
                if split == "seq":
                    continue
                where = f"{path.name} line {reader.line_num} (image rgb_img_{k}.png)"
                category = (row.get("category") or "").strip()
                if not category:
                    raise AuditError(f"{spec}: {where} has no category")
                categories.add(category)
                if split in selected:
                    stamp = row.get("timestamp") or ""
                    row_year = _year_of(stamp)
                    if row_year is None:
                        raise AuditError(f"{spec}: {where} has timestamp {stamp!r}; expected YYYY-MM-DDThh:mm:ssZ")
                    if row_year == year:
                        lat = _coordinate(row, "lat", 90.0, where, spec)
                        lon = _coordinate(row, "lon", 180.0, where, spec)
                        selected[split].append(_Row(k, reader.line_num, category, lat, lon))
                k += 1
    except OSError as e:
        raise AuditError(f"{spec}: cannot read {path}: {e.strerror or e}") from e
    except (csv.Error, UnicodeDecodeError) as e:
        raise AuditError(f"{spec}: {path} is not a readable CSV file ({e})") from e
    for split, rows in selected.items():
        if not rows:
            raise AuditError(f"{spec}: {path} has no '{split}' rows with a timestamp in {year}; "
                             "choose another year")
    return tuple(sorted(categories)), selected


def _open_rgb(path: Path, row: _Row, spec: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    where = f"{METADATA} line {row.line}"
    if not path.is_file():
        raise AuditError(f"{spec}: image {path} for {where} is missing; the images/ folder is incomplete")
    try:
        with Image.open(path) as im:
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise AuditError(f"{spec}: image {path} for {where} cannot be read ({type(e).__name__}); "
                         "it is truncated or not a PNG") from e


def _load_images(images_dir: Path, rows: list[_Row], spec: str) -> np.ndarray:
    """uint8 [N, H, W, 3]; every image must have the size of the first."""
    first = _open_rgb(images_dir / f"rgb_img_{rows[0].k}.png", rows[0], spec)
    out = np.empty((len(rows), *first.shape), dtype=np.uint8)
    out[0] = first

    def load(i: int) -> None:
        row = rows[i]
        path = images_dir / f"rgb_img_{row.k}.png"
        img = _open_rgb(path, row, spec)
        if img.shape != first.shape:
            raise AuditError(f"{spec}: image {path} is {img.shape[1]}x{img.shape[0]} but "
                             f"rgb_img_{rows[0].k}.png is {first.shape[1]}x{first.shape[0]}; "
                             "all images must have the same size")
        out[i] = img

    for row in rows:  # a missing file fails fast, before any decoding
        path = images_dir / f"rgb_img_{row.k}.png"
        if not path.is_file():
            raise AuditError(f"{spec}: image {path} for {METADATA} line {row.line} is missing; "
                             "the images/ folder is incomplete")
    pool = ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 4))
    try:
        for _ in pool.map(load, range(1, len(rows))):  # re-raises the first failure in row order
            pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def load_fmow(directory: str | None, spec: str = "fmow", year: int = 2012) -> Dataset:
    """Load the FMoW in-distribution train/test images of one year, with lat/lon metadata.

    ``directory`` is the ``fmow_v1.1`` folder or its parent; ``None`` means
    ``$AUDIT_DATA/fmow_v1.1`` (default ``~/.cache/datamodel-audit/fmow_v1.1``).
    """
    root = resolve_data_dir(directory, FOLDER)
    if not root.is_dir():
        raise AuditError(f"{spec}: no FMoW folder at {root} ({FOLDER} with {METADATA} and images/); {HOW_TO_GET}")
    metadata = root / METADATA
    if not metadata.is_file():
        raise AuditError(f"{spec}: {metadata} is missing; {root} must be the WILDS {FOLDER} folder; {HOW_TO_GET}")
    classes, selected = _read_metadata(metadata, int(year), spec)
    index = {name: i for i, name in enumerate(classes)}
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, np.ndarray] = {}
    for split, rows in selected.items():
        arrays[f"x_{split}"] = _load_images(root / "images", rows, spec)
        arrays[f"y_{split}"] = np.array([index[r.category] for r in rows], dtype=np.int64)
        meta[f"lat_{split}"] = np.array([r.lat for r in rows], dtype=np.float64)
        meta[f"lon_{split}"] = np.array([r.lon for r in rows], dtype=np.float64)
        meta[f"image_id_{split}"] = np.array([r.k for r in rows], dtype=np.int64)
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise AuditError(f"{spec}: train images are {arrays['x_train'].shape[1:3]} but test images "
                         f"{arrays['x_test'].shape[1:3]}; all images must have the same size")
    return Dataset(spec=spec, classes=classes, meta=meta, **arrays)
