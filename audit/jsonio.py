"""Atomic JSON/CSV writing: a temp file in the same folder, then os.replace."""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}  # and NaN -> "NaN"


def _clean(value: Any, non_finite: str = "string") -> Any:
    """numpy scalars/arrays -> Python. Non-finite floats become the strings "Infinity",
    "-Infinity", "NaN" (``non_finite="string"``: the JSON policy of every file the tool writes,
    which typed results read back as floats) or None (``"none"``: empty CSV cells)."""
    if isinstance(value, dict):
        return {str(k): _clean(v, non_finite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, non_finite) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist(), non_finite)
    if isinstance(value, np.generic):
        return _clean(value.item(), non_finite)
    if isinstance(value, float) and not math.isfinite(value):
        return None if non_finite == "none" else NON_FINITE.get(value, "NaN")
    if isinstance(value, Path):
        return str(value)
    return value


def atomic_write_text(path: Path | str, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path | str, data: Any) -> None:
    """Write ``data`` as indented standard JSON (non-finite floats as strings), atomically."""
    atomic_write_text(path, json.dumps(_clean(data), indent=2, allow_nan=False) + "\n")


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(path: Path | str, rows: Iterable[dict], columns: Sequence[str]) -> None:
    """Write dict rows as CSV (quoted by the csv module), atomically."""
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _clean(v, "none") for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def save_npz(path: Path | str, **arrays: np.ndarray) -> None:
    """np.savez atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
