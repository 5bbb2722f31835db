"""The published datamodels release (one dataset's folder): its files, their checks, memory-mapped views.

Layout (PCT = the subset percentage α·100): ``data/train_masks_{PCT}pct.npy`` bool [M, N_train],
``data/{train,test}_margins_{PCT}pct.npy`` float16 [M, N_train] / [M, N_test],
``data/{train,test}_logits_{PCT}pct.npy`` float16 [M, N, classes] (CIFAR-10 only) and
``datamodels/{train,test}_{PCT}pct.pt`` (a dict: ``weight`` [N_train, N], ``bias`` [N], ``lam`` [N]).
The last ``eval_models`` rows of the masks and margins are the evaluation models; the rest train.

An imported run keeps ``release.json``: each file's absolute path and fingerprint (see
:func:`fingerprint`). Nothing is copied: the arrays are read memory-mapped, and a file moved or
changed since the import is one error when the run is opened.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import AuditError, InternalError
from audit.jsonio import read_json
from audit.lazy import torch
from audit.mapped import drop_pages, mark_mapped

RELEASE_JSON = "release.json"
DATA_ROLES = ("train_masks", "train_margins", "test_margins")
LOGIT_ROLES = ("train_logits", "test_logits")
WEIGHT_ROLES = ("train_weights", "test_weights")
MASK_DTYPES = (np.dtype(bool), np.dtype(np.uint8))
VALUE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
_HEAD, _BLOCK, _SAMPLES = 1 << 16, 1 << 12, 16


def release_paths(pct: int) -> dict[str, str]:
    """Role -> path of each file of the layout, relative to the dataset's folder."""
    return {"train_masks": f"data/train_masks_{pct}pct.npy", "train_margins": f"data/train_margins_{pct}pct.npy",
            "test_margins": f"data/test_margins_{pct}pct.npy", "train_logits": f"data/train_logits_{pct}pct.npy",
            "test_logits": f"data/test_logits_{pct}pct.npy", "train_weights": f"datamodels/train_{pct}pct.pt",
            "test_weights": f"datamodels/test_{pct}pct.pt"}


def fingerprint(path: Path) -> dict:
    """Size, modification time (ns) and a SHA-256 of the first 64 KiB, 16 evenly spaced 4 KiB blocks
    and the last 4 KiB: reads ≈ 130 KiB of a file of any size, and sees a truncated, rewritten or
    replaced file (a change inside an unsampled block that keeps size and mtime is not seen)."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_HEAD))
        for k in range(_SAMPLES):
            f.seek(st.st_size * k // _SAMPLES)
            h.update(f.read(_BLOCK))
        f.seek(max(0, st.st_size - _BLOCK))
        h.update(f.read(_BLOCK))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}


@dataclass(frozen=True)
class NpyInfo:
    shape: tuple[int, ...]
    dtype: np.dtype


def npy_info(path: Path) -> NpyInfo:
    """The shape and dtype in an .npy header; ValueError when the file is not a whole .npy array."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        offset = f.tell()
    if fortran:
        raise ValueError("is stored in Fortran order; save it in C order")
    need = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
    size = path.stat().st_size
    if size < need:
        raise ValueError(f"is truncated ({size:,} bytes, its header needs {need:,})")
    return NpyInfo(tuple(int(n) for n in shape), dtype)


def _native_byte_order(path: Path) -> bool:
    """Whether a torch.save zip file's tensors are in this machine's byte order (no ``byteorder`` record:
    little-endian, what torch wrote before recording it)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("/byteorder") or n == "byteorder"]
            order = z.read(names[0]).decode().strip() if names else "little"
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, KeyError):
        return False
    return order == sys.byteorder


def load_pt(path: Path) -> dict[str, torch.Tensor]:
    """A datamodels .pt dict, memory-mapped where torch can (weights_only: no code runs)."""
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if _native_byte_order(path):  # else torch swapped the mapped pages in place: they must stay
                for value in data.values() if isinstance(data, dict) else ():
                    if isinstance(value, torch.Tensor):
                        mark_mapped(value)
        except RuntimeError:  # an old (non-zip) torch.save file cannot be memory-mapped
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # not a torch.save file, or one holding more than tensors
        raise ValueError(f"is not a torch.save file of tensors ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not {"weight", "bias", "lam"} <= set(data):
        raise ValueError("is not a dict with weight, bias and lam")
    for key in ("weight", "bias", "lam"):
        if not isinstance(data[key], torch.Tensor):
            raise ValueError(f"has a {key} that is not a tensor")
    return data


@dataclass(frozen=True)
class Expected:
    """What the dataset says the files must hold."""

    name: str
    n_train: int
    n_test: int
    n_classes: int

    def describe(self) -> str:
        return f"{self.name} (N_train={self.n_train}, N_test={self.n_test}, {self.n_classes} classes)"


def _shape(shape: tuple) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def check_release(folder: Path, pct: int, expected: Expected, eval_models: int) -> dict:
    """Check every file of the release for ``pct`` against the dataset; returns release.json's content
    (without fingerprints). AuditError naming every mismatch (one line) and what to pass."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AuditError(f"{folder} is not a folder; give one dataset's folder of the release (holding data/ "
                         f"and/or datamodels/)")
    rel = release_paths(pct)
    present = {role: folder / p for role, p in rel.items() if (folder / p).is_file()}
    if not present:
        found = sorted({p.name.rsplit("_", 1)[-1].split("pct")[0]
                        for sub in ("data", "datamodels") for p in (folder / sub).glob("*pct.*")})
        hint = f"; it holds files for --pct {' or '.join(found)}: pass one of them" if found else \
            " (expected data/train_masks_{PCT}pct.npy ... and/or datamodels/{train,test}_{PCT}pct.pt)"
        raise AuditError(f"{folder} holds none of the release's files for --pct {pct}{hint}")
    problems: list[str] = []
    sizes = {"train": expected.n_train, "test": expected.n_test}
    n_models = None
    data_roles = [r for r in DATA_ROLES if r in present]
    if data_roles:
        problems += [f"{rel[r]} is missing" for r in DATA_ROLES if r not in present]
        shapes: dict[str, tuple] = {}
        for role in data_roles + [r for r in LOGIT_ROLES if r in present]:
            try:
                info = npy_info(present[role])
            except (OSError, ValueError) as exc:
                problems.append(f"{rel[role]} {exc}" if isinstance(exc, ValueError) and str(exc).startswith(("is ",))
                                else f"{rel[role]} is not a readable .npy file ({exc})")
                continue
            split = role.split("_")[0]
            n = expected.n_train if role == "train_masks" else sizes[split]
            dtypes = MASK_DTYPES if role == "train_masks" else VALUE_DTYPES
            want = (None, n, expected.n_classes) if role in LOGIT_ROLES else (None, n)
            if info.dtype not in dtypes:
                problems.append(f"{rel[role]} is {info.dtype}, expected {' or '.join(map(str, dtypes))}")
            if len(info.shape) != len(want) or any(w is not None and s != w for s, w in zip(info.shape, want)):
                problems.append(f"{rel[role]} has shape {_shape(info.shape)}, expected "
                                f"{_shape(['M' if w is None else w for w in want])}")
            else:
                shapes[role] = info.shape
        rows = {r: s[0] for r, s in shapes.items()}
        if len(set(rows.values())) > 1:
            problems.append("the files disagree on the number of models M ("
                            + ", ".join(f"{rel[r]}: {m}" for r, m in rows.items()) + ")")
        elif rows:
            n_models = next(iter(rows.values()))
            if not 0 <= eval_models <= n_models - 2:
                problems.append(f"--eval-models {eval_models} leaves {n_models - eval_models} of the {n_models} "
                                f"models to train on: pass --eval-models below {n_models - 1}")
    weight_roles = [r for r in WEIGHT_ROLES if r in present]
    if weight_roles:  # either split alone serves the steps that read only its targets (leakage: test)
        for role in weight_roles:
            n = sizes[role.split("_")[0]]
            try:
                d = load_pt(present[role])
            except (OSError, ValueError, RuntimeError, EOFError, zipfile.BadZipFile, AttributeError) as exc:
                problems.append(f"{rel[role]} is not a readable datamodels .pt "
                                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
                continue
            for key, want in (("weight", (expected.n_train, n)), ("bias", (n,)), ("lam", (n,))):
                t = d[key]
                if tuple(t.shape) != want:
                    problems.append(f"{rel[role]} has {key} {_shape(tuple(t.shape))}, expected {_shape(want)}")
                if not t.is_floating_point():
                    problems.append(f"{rel[role]} has {key} of {t.dtype}, expected a float tensor")
    if problems:
        raise AuditError(f"{folder} does not match {expected.describe()} at --pct {pct}: " + "; ".join(problems)
                         + ": pass this dataset's folder of the release with its --dataset and --pct, or "
                           "replace the files named")
    return {"folder": str(folder.absolute()), "pct": pct, "n_models": n_models, "eval_models": eval_models,
            "files": {role: str(path.absolute()) for role, path in present.items()}}


def record_release(content: dict) -> dict:
    """release.json's content with the fingerprint of each file."""
    return {**content, "fingerprints": {role: fingerprint(Path(p)) for role, p in content["files"].items()}}


def is_imported(run_dir: Path | str) -> bool:
    """Was the run made by `audit import` (its models and weights are a release's files)?"""
    return (Path(run_dir) / RELEASE_JSON).is_file()


def read_release(run_dir: Path | str, verify: bool = True) -> dict:
    """release.json, each file checked against its fingerprint; one error for a moved or changed file."""
    path = Path(run_dir) / RELEASE_JSON
    try:
        data = read_json(path)
        files, prints = data["files"], data["fingerprints"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"{path} is unreadable ({exc}); import the release again into a new --run") from None
    if verify:
        for role, name in files.items():
            file = Path(name)
            if not file.is_file():
                raise AuditError(f"{run_dir} was imported from {file}, which is not there any more; put it back, "
                                 f"or import the release from where it is now into a new --run")
            if fingerprint(file) != prints.get(role):
                raise AuditError(f"{file} changed since {run_dir} was imported from it (size, time or sampled "
                                 f"contents differ); restore it, or import the release again into a new --run")
    return data


class JoinedMargins:
    """The rows ``start:stop`` of [train margins | test margins] as float32 [rows, N_train + N_test],
    read from the memory maps per indexing (no whole copy); indexes like a 2-D array by rows, or by
    ``(rows, columns)``."""

    def __init__(self, parts: list[np.ndarray], start: int, stop: int) -> None:
        self.parts, self.start, self.stop = parts, start, stop
        self.shape = (stop - start, sum(p.shape[1] for p in parts))
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        index = np.arange(self.start, self.stop)[rows]
        if isinstance(index, np.ndarray) and index.ndim == 1 and index.size and np.all(np.diff(index) == 1):
            index = slice(int(index[0]), int(index[-1]) + 1)  # a run of rows: a view of the map, not a copy
        if not (isinstance(cols, slice) and cols.step in (None, 1)):
            ids = np.arange(self.shape[1])[cols]
            if ids.ndim != 1 or not isinstance(index, slice):
                return self[rows][..., cols]  # whole rows, then the columns in the order asked for
            out = np.empty((index.stop - index.start, len(ids)), np.float32)
            offset = 0
            for p in self.parts:  # only the bytes of the columns asked for are converted
                here = (ids >= offset) & (ids < offset + p.shape[1])
                if here.any():
                    out[:, here] = p[index][:, ids[here] - offset]
                    drop_pages(p)
                offset += p.shape[1]
            return out
        start, stop, _ = cols.indices(self.shape[1])
        out, offset = [], 0
        for p in self.parts:  # a column range: only its bytes of each row are read, from the parts holding it
            a, b = max(start, offset) - offset, min(stop, offset + p.shape[1]) - offset
            if a < b:
                out.append(np.asarray(p[index, a:b], dtype=np.float32))
                drop_pages(p)  # the process keeps the rows it asked for, not the file's pages
            offset += p.shape[1]
        if not out:
            rows_shape = (index.stop - index.start,) if isinstance(index, slice) else np.shape(index)
            return np.zeros(rows_shape + (0,), np.float32)
        return np.concatenate(out, axis=-1)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)


@dataclass(frozen=True)
class ReleaseModels:
    """The release's models as the run sees them: training rows first, then the evaluation rows."""

    masks: np.ndarray  # [M - E, N_train] memory map
    margins: JoinedMargins  # [M - E, N_train + N_test]
    eval_masks: np.ndarray  # [E, N_train] memory map
    eval_margins: JoinedMargins  # [E, N_train + N_test]


def release_models(run_dir: Path | str, n_train: int, n_test: int, data: dict | None = None) -> ReleaseModels:
    """Memory-mapped views of an imported run's models (empty when it imported weights only)."""
    data = read_release(run_dir) if data is None else data
    files = data["files"]
    if "train_masks" not in files:
        empty = np.zeros((0, n_train), bool)
        none = JoinedMargins([np.zeros((0, n_train), np.float16), np.zeros((0, n_test), np.float16)], 0, 0)
        return ReleaseModels(empty, none, empty, none)
    masks = np.load(files["train_masks"], mmap_mode="r")
    parts = [np.load(files[r], mmap_mode="r") for r in ("train_margins", "test_margins")]
    m, e = masks.shape[0], int(data["eval_models"])
    return ReleaseModels(masks[: m - e], JoinedMargins(parts, 0, m - e), masks[m - e:], JoinedMargins(parts, m - e, m))


class MissingWeights(AuditError):
    """A step read the weights of targets whose .pt file the run was imported without."""


class AbsentSplit:
    """Stands in :class:`ReleaseWeights` for a split's .pt file the import did not have: it has the
    split's shape [n_train, targets]; reading it raises :class:`MissingWeights`, naming the file."""

    def __init__(self, n_train: int, n_targets: int, split: str, path: str) -> None:
        self.shape = (n_train, n_targets)
        self.split, self.path = split, path

    def element_size(self) -> int:
        return 4

    def error(self) -> MissingWeights:
        return MissingWeights(f"this run was imported without {self.path}, so its {self.split} targets have no "
                              f"datamodel weights, which this step reads; import the release again with that file "
                              f"into a new --run, or run `audit fit` on the run's training data (its own fit then "
                              f"replaces the published weights of both splits)")

    def __getitem__(self, key: Any) -> Any:
        raise self.error()


class ReleaseWeights:
    """The release's weights in the run's layout, [targets, n_train] float32 (train targets first), read from
    the memory-mapped .pt tensors ([n_train, targets] each) only where asked: no transposed copy.

    Indexing works as on a memory map: a basic slice of targets is another lazy view; an integer, an
    integer array or a (rows, columns) pair reads those targets (a run of consecutive targets is one
    contiguous read per training example) and returns float32 rows. ``np.asarray`` reads everything
    ((N_train + N_test) x N_train x 4 bytes: only for small releases)."""

    CLUSTER_GAP = 1024  # targets further apart are read separately (a 4 KiB page holds 1,024 float32)
    SLAB_BYTES = 2**26
    FAULT_AROUND = 2**16  # Linux's fault_around_bytes default

    def __init__(self, parts: list[torch.Tensor | AbsentSplit], start: int = 0, stop: int | None = None) -> None:
        self.parts = parts
        self.absent = np.array([isinstance(p, AbsentSplit) for p in parts], bool)  # per part
        self.bounds = np.cumsum([0] + [int(p.shape[1]) for p in parts])
        self.start = start
        self.stop = int(self.bounds[-1]) if stop is None else stop
        self.shape = (self.stop - self.start, int(parts[0].shape[0]))
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def _parts_of(self, absolute: np.ndarray) -> np.ndarray:
        """The part (.pt tensor) holding each absolute target."""
        return np.searchsorted(self.bounds, absolute, "right") - 1

    def missing(self, idx: np.ndarray) -> np.ndarray:
        """Which of the targets ``idx`` (relative to this view) belong to a split imported without weights."""
        return self.absent[self._parts_of(self.start + np.asarray(idx, np.int64))]

    def _require_parts(self, part_of: np.ndarray) -> None:
        """MissingWeights, naming the file, when any of these parts is a split imported without weights."""
        hit = part_of[self.absent[part_of]]
        if hit.size:
            raise self.parts[int(hit[0])].error()

    def require(self, idx: np.ndarray) -> None:
        """MissingWeights before any read when a target of ``idx`` (relative) has no weights in this run."""
        self._require_parts(self._parts_of(self.start + np.asarray(idx, np.int64)))

    def _read(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (absolute targets) as float32 [len(idx), n_train].

        A target is a column of a .pt tensor, so each training example's row holds a few bytes of it: the
        targets are read in clusters (sorted targets of one tensor less than ``CLUSTER_GAP`` columns apart),
        each as contiguous ``[training rows, first:last + 1]`` slabs of at most ``SLAB_BYTES``, and the
        mapped pages are released after each slab (:func:`audit.mapped.drop_pages`). A sample of targets
        spread over a tensor reads it once front to back instead of a page per target and example."""
        order = np.argsort(idx, kind="stable")
        sorted_idx = np.asarray(idx, np.int64)[order]
        part_of = self._parts_of(sorted_idx)
        self._require_parts(part_of)  # before anything is read or allocated
        out = np.empty((len(idx), self.shape[1]), np.float32)
        breaks = np.nonzero((np.diff(sorted_idx) > self.CLUSTER_GAP) | (np.diff(part_of) != 0))[0]
        n_rows = self.shape[1]
        for cluster in np.split(np.arange(len(idx)), breaks + 1):
            if not cluster.size:
                continue
            part = int(part_of[cluster[0]])
            tensor = self.parts[part]
            cols = sorted_idx[cluster] - int(self.bounds[part])
            a, b = int(cols[0]), int(cols[-1]) + 1
            pick = None if b - a == len(cols) and np.all(np.diff(cols) == 1) else torch.as_tensor(cols - a)
            # a page fault maps up to 64 KiB of cached file around it: count a row as at least that much
            step = max(1, self.SLAB_BYTES // max((b - a) * tensor.element_size(), self.FAULT_AROUND))
            for r0 in range(0, n_rows, step):
                slab = tensor[r0:r0 + step, a:b]
                if pick is not None:
                    slab = slab.index_select(1, pick)
                out[order[cluster], r0:r0 + step] = slab.to(torch.float32).numpy().T
                drop_pages(tensor)
        return out

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            rows, cols = key
            return self[rows][..., cols]
        if isinstance(key, slice) and key.step in (None, 1):
            a, b, _ = key.indices(len(self))
            return ReleaseWeights(self.parts, self.start + a, self.start + max(a, b))
        if isinstance(key, (int, np.integer)):
            k = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= k < len(self):
                raise IndexError(f"target {key} is outside the {len(self)} datamodel rows")
            return self._read(np.array([self.start + k]))[0]
        idx = np.arange(len(self))[key]
        return self._read(self.start + np.asarray(idx, np.int64).ravel()).reshape(np.shape(idx) + (self.shape[1],))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._read(np.arange(self.start, self.stop))
        return out if dtype is None else out.astype(dtype, copy=False)

    def __eq__(self, other: object) -> bool:  # an ndarray compares elementwise; a silent True here would lie
        raise TypeError("compare rows read from the release's weights (np.asarray(weights[rows]) == ...)")

    __ne__ = __eq__
    __hash__ = None  # type: ignore[assignment]


def release_weights(run_dir: Path | str, n_train: int,
                    n_test: int) -> tuple[ReleaseWeights, np.ndarray, np.ndarray] | None:
    """(weights [N_train + N_test, N_train] float32 read lazily, bias, lam), train targets first; None without
    .pt files. The .pt tensors are memory-mapped; rows are read (and transposed) only when a step asks. A
    split imported without its file reads as :class:`MissingWeights` (its bias and λ are NaN)."""
    data = read_release(run_dir)
    files = data["files"]
    if not any(r in files for r in WEIGHT_ROLES):
        return None
    rel = release_paths(int(data["pct"]))
    weights, bias, lam = [], [], []
    for role, n in zip(WEIGHT_ROLES, (n_train, n_test)):
        if role in files:
            d = load_pt(Path(files[role]))
            weights.append(d["weight"])
            bias.append(d["bias"].to(torch.float32).numpy())
            lam.append(d["lam"].to(torch.float32).numpy())
        else:
            weights.append(AbsentSplit(n_train, n, role.split("_")[0], rel[role]))
            bias.append(np.full(n, np.nan, np.float32))
            lam.append(np.full(n, np.nan, np.float32))
    out = ReleaseWeights(weights)
    if any(int(w.shape[0]) != n_train for w in weights if not isinstance(w, AbsentSplit)):
        raise InternalError(f"release weights have {[int(w.shape[0]) for w in weights]} training rows, the run {n_train}")
    return out, np.concatenate(bias), np.concatenate(lam)


def require_weights(weights: Any, n_targets: int, ids: np.ndarray | None = None) -> None:
    """MissingWeights, before any work, when a step needs the weights of targets ``ids`` (default: all of
    them) and the run was imported without their split's .pt file."""
    require = getattr(weights, "require", None)  # only the release's weights can lack a split
    if require is not None:
        require(np.arange(n_targets) if ids is None else ids)


def targets_with_weights(weights: Any, n_targets: int) -> np.ndarray | None:
    """The target ids that have datamodel weights: None when all do (a fitted run, a whole import)."""
    missing = getattr(weights, "missing", None)
    if missing is None:
        return None
    absent = missing(np.arange(n_targets))
    return np.flatnonzero(~absent) if absent.any() else None


def weight_rows(weights: Any) -> Any:
    """Weights as a row source: an array, a memory map or lazy release weights stay as they are (read a
    block of rows at a time by the caller); anything else becomes an array."""
    return weights if hasattr(weights, "shape") and hasattr(weights, "__getitem__") else np.asarray(weights)


def require_finite_rows(block: np.ndarray, row_numbers: np.ndarray) -> None:
    """One line naming the first datamodel row (its row number in the run, ``row_numbers[i]`` for the block's
    row ``i``) with a NaN or infinite weight."""
    finite = np.isfinite(block)
    if not finite.all():
        bad = int(np.asarray(row_numbers)[np.argwhere(~finite)[0, 0]])
        raise AuditError(f"datamodel row {bad} has NaN or infinite weights; refit the datamodels")


def file_size(data: dict) -> int:
    """Total bytes of the release's files a run reads."""
    return sum(os.path.getsize(p) for p in data["files"].values())
