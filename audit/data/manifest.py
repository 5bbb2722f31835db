"""``csv:FILE``: a CSV manifest of images, columns ``path,label,split`` (+ optional ``lat,lon``).

* ``path``: the image file, relative to the CSV's folder (an absolute path must lie inside that
  folder too); no path may appear twice.
* ``label``: the class name; classes are the train labels, sorted (numerically when all are
  integers); a test label must be one of them.
* ``split``: ``train`` or ``test``; rows marked ``val``/``valid``/``validation`` are skipped.
* ``lat``/``lon`` (both or neither): degrees, kept for the geodesic leakage check.
* Any other column is kept as per-example metadata (strings) and shown in the report.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from audit.data.dataset import Dataset
from audit.data.decode import Source, decoded_files
from audit.data.fmow import _coordinate
from audit.data.folder import string_meta
from audit.data.spec import Spec, dataset_name
from audit.errors import AuditError
from audit.progress import SILENT, Progress

REQUIRED = ("path", "label", "split")
GEO = ("lat", "lon")
SKIPPED_SPLITS = ("val", "valid", "validation")
HOW = "columns path,label,split (+ optional lat,lon and any metadata columns), paths relative to the CSV"


def _class_order(labels: set[str]) -> tuple[str, ...]:
    try:
        return tuple(sorted(labels, key=lambda s: (int(s), s)))
    except ValueError:
        return tuple(sorted(labels))


def _inside(base: Path, raw: str) -> Path | None:
    """``raw`` joined to ``base`` and normalised, or None when it leaves ``base`` (``..``, absolute
    elsewhere). Checked on the path as written, so a link inside the folder may point anywhere."""
    joined = Path(os.path.normpath(base / Path(raw).expanduser()))
    try:
        joined.relative_to(base)
    except ValueError:
        return None
    return joined


def load_manifest(spec: Spec, progress: Progress = SILENT) -> Dataset:
    """Load a CSV manifest; images decoded in parallel and cached (audit.data.decode)."""
    if not spec.arg:
        raise AuditError(f"{spec.text}: csv needs a file: use csv:PATH/TO/manifest.csv ({HOW})")
    file = Path(spec.arg).expanduser()
    if not file.is_file():
        raise AuditError(f"{spec.text}: {file} does not exist; write a CSV with {HOW}")
    base = Path(os.path.normpath(file.parent.absolute()))
    rows: dict[str, list[tuple[int, Path, str, str]]] = {"train": [], "test": []}
    seen: dict[Path, int] = {}
    extra_values: dict[str, dict[str, list[str]]] = {}
    geo: dict[str, dict[str, list[float]]] = {c: {"train": [], "test": []} for c in GEO}
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED if c not in columns]
            if missing:
                raise AuditError(f"{spec.text}: {file} has no {', '.join(missing)} column "
                                 f"(has {', '.join(columns) or 'none'}); expected {HOW}")
            dupes = sorted({c for c in columns if c and columns.count(c) > 1})
            if dupes:
                raise AuditError(f"{spec.text}: {file} has column {dupes[0]!r} twice")
            reader.fieldnames = columns
            has_geo = [c for c in GEO if c in columns]
            if len(has_geo) == 1:
                raise AuditError(f"{spec.text}: {file} has a {has_geo[0]} column but no "
                                 f"{'lon' if has_geo[0] == 'lat' else 'lat'}; give both or neither")
            extras = [c for c in columns if c and c not in REQUIRED and c not in GEO]
            extra_values = {c: {"train": [], "test": []} for c in extras}
            for row in reader:
                where = f"{file} line {reader.line_num}"
                if None in row:
                    raise AuditError(f"{spec.text}: {where} has more fields than the header's {len(columns)}")
                values = {k: (v or "").strip() for k, v in row.items()}
                split = values["split"].lower()
                if split in SKIPPED_SPLITS:
                    continue
                if split not in rows:
                    raise AuditError(f"{spec.text}: {where} has split {values['split']!r}; expected train or test "
                                     f"({'/'.join(SKIPPED_SPLITS)} rows are skipped)")
                raw = values["path"]
                if not raw:
                    raise AuditError(f"{spec.text}: {where} has no path")
                path = _inside(base, raw)
                if path is None:
                    raise AuditError(f"{spec.text}: {where} has path {raw!r}, which leaves {base}; "
                                     "image paths must lie inside the CSV's folder")
                if path in seen:
                    raise AuditError(f"{spec.text}: {where} repeats path {raw!r} (first on line {seen[path]}); "
                                     "each image may appear once")
                seen[path] = reader.line_num
                if not values["label"]:
                    raise AuditError(f"{spec.text}: {where} has no label")
                rows[split].append((reader.line_num, path, values["label"], raw))
                for c in has_geo:
                    geo[c][split].append(_coordinate(values, c, 90.0 if c == "lat" else 180.0, where, spec.text))
                for c in extras:
                    extra_values[c][split].append(values.get(c, ""))
    except OSError as e:
        raise AuditError(f"{spec.text}: cannot read {file}: {e.strerror or e}") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise AuditError(f"{spec.text}: {file} is not a readable UTF-8 CSV file ({e})") from None
    for split, part in rows.items():
        if not part:
            raise AuditError(f"{spec.text}: the {split} split is missing: {file} has no rows with split={split}")
    classes = _class_order({r[2] for r in rows["train"]})
    index = {c: i for i, c in enumerate(classes)}
    for line, _, label, _ in rows["test"]:
        if label not in index:
            shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
            raise AuditError(f"{spec.text}: {file} line {line} has label {label!r}, which is not among the train "
                             f"labels ({shown}); every test label needs train images")
    for split, part in rows.items():
        for line, path, _, raw in part:
            if not path.is_file():
                raise AuditError(f"{spec.text}: image {path} ({file} line {line}) does not exist")
    sources = {split: [Source(where=f"{path} ({file.name} line {line})", path=path) for line, path, _, _ in part]
               for split, part in rows.items()}
    arrays = decoded_files(spec, dataset_name(spec.text), file, sources, progress)
    meta = string_meta("path", {s: [r[3] for r in part] for s, part in rows.items()})
    for c, values in extra_values.items():
        meta.update(string_meta(c, values))
    if len(has_geo) == 2:
        for c in GEO:
            for split in rows:
                meta[f"{c}_{split}"] = np.array(geo[c][split], dtype=np.float64)
    y = {s: np.array([index[r[2]] for r in part], dtype=np.int64) for s, part in rows.items()}
    return Dataset(spec=spec.text, x_train=arrays["x_train"], y_train=y["train"], x_test=arrays["x_test"],
                   y_test=y["test"], classes=classes, meta=meta, captions=("path", *extra_values))
