"""Reading a run directory for the report: tolerant JSON/CSV reads and row-wise datamodel access.

The report shows what exists. A file that is missing gives ``None``; a file that exists but
cannot be read gives ``None`` plus a note that the page shows, so one broken audit file
never costs the rest of the report.
"""

from __future__ import annotations

import csv
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np


@dataclass
class RunFiles:
    """The run directory and the notes collected while reading it."""

    path: Path
    notes: list[str] = field(default_factory=list)

    def json(self, rel: str) -> Any | None:
        """Parsed JSON of ``path/rel``; None (and a note when it exists but is unreadable)."""
        p = self.path / rel
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            self.notes.append(f"{rel} could not be read ({exc}); its section is left out")
            return None

    def csv(self, rel: str) -> list[dict] | None:
        """Rows of ``path/rel`` as dicts of strings; None when missing or unreadable (with a note)."""
        p = self.path / rel
        if not p.exists():
            return None
        try:
            with p.open(newline="", encoding="utf-8") as fh:
                return list(csv.DictReader(fh))
        except (OSError, ValueError, csv.Error) as exc:
            self.notes.append(f"{rel} could not be read ({exc})")
            return None

    def npz(self, rel: str) -> dict[str, np.ndarray] | None:
        p = self.path / rel
        if not p.exists():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: np.asarray(z[k]) for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            self.notes.append(f"{rel} could not be read ({exc})")
            return None


def npz_member(path: Path | str, name: str) -> np.ndarray:
    """One array of an .npz, memory-mapped when it is stored uncompressed (as ``np.savez`` writes).

    Reading a few rows of a CIFAR-sized weight matrix (60,000 × 50,000 float32, 12 GB) this
    way costs only those rows; a compressed member is read whole.
    """
    path = Path(path)
    member = name if name.endswith(".npy") else name + ".npy"
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
        if info.compress_type == zipfile.ZIP_STORED:
            with path.open("rb") as fh:
                fh.seek(info.header_offset)
                local = fh.read(30)
                if local[:4] == b"PK\x03\x04":
                    name_len = int.from_bytes(local[26:28], "little")
                    extra_len = int.from_bytes(local[28:30], "little")
                    start = info.header_offset + 30 + name_len + extra_len
                    fh.seek(start)
                    fmt = np.lib.format
                    version = fmt.read_magic(fh)
                    read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
                    shape, fortran, dtype = read_header(fh) if read_header else ((), False, np.dtype(object))
                    if not dtype.hasobject and shape:
                        return np.memmap(path, dtype=dtype, mode="r", offset=fh.tell(), shape=shape,
                                         order="F" if fortran else "C")
        with zf.open(member) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)


class DatamodelRows:
    """Rows of RUN/datamodels.npz (weights ``[n_targets, n_train]`` and bias) without loading it all."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.weights = npz_member(self.path, "weights")
        self.bias = np.asarray(npz_member(self.path, "bias"), dtype=np.float64)
        if self.weights.ndim != 2 or self.bias.shape != (self.weights.shape[0],):
            raise ValueError(f"weights {self.weights.shape} and bias {self.bias.shape} do not fit together")

    @property
    def n_targets(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_train(self) -> int:
        return int(self.weights.shape[1])

    def rows(self, targets: Sequence[int]) -> np.ndarray:
        """Weights of the given target rows as float32 ``[len(targets), n_train]``."""
        return np.asarray(self.weights[np.asarray(targets, dtype=np.int64)], dtype=np.float32)


def num(value: Any) -> float | None:
    """A finite float or None (JSON null, '', 'nan', text)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None
