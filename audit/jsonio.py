"""Every file the tool writes goes through here: JSON, CSV (one writer, formulas neutralised),
npz and text, atomically (a temp file in the same folder, then os.replace; see ``output_file``)."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

import numpy as np

from audit.errors import AuditError

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


def _umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_place(path: Path | str, option: str, folder: bool = False) -> None:
    """One line, before any work, when an output named by ``option`` cannot be written at ``path``: a folder
    where a file goes (``folder`` False), a file where a folder must be (the path's nearest existing parent),
    or a parent this process cannot write in. (A place that fails only when written, such as /proc, is
    said when the write fails.)"""
    path = Path(path)
    if path.is_dir() and not folder:
        raise AuditError(f"{option} {path} is a folder; give a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise AuditError(f"{option} {path}: {parent} is a file, not a folder; choose another place")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AuditError(f"{option} {path}: {parent} is not writable; choose another place")


# a write that failed because of where it went (not for want of space, which the CLI says on its own)
PLACE_ERRORS = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS)


def cannot_write(path: Path | str, option: str, exc: OSError) -> Exception:
    """The one line for an output that failed to be written where ``option`` put it (``exc`` itself when it
    failed for another reason, such as a full disk)."""
    if exc.errno not in PLACE_ERRORS:
        return exc
    return AuditError(f"{option} {path} could not be written ({exc.strerror or type(exc).__name__}); choose "
                      f"another place")


@contextlib.contextmanager
def output_file(path: Path | str, binary: bool = False) -> Iterator[IO]:
    """Open ``path`` for writing an output, so that a reader never sees half a file.

    * a new path or a regular file: written to a temporary file in the same folder, then
      ``os.replace``-d over it; the mode is the old file's, or the umask's for a new file
      (``0666 & ~umask``, as ``open`` would give), never mkstemp's 0600;
    * a symlink is followed on purpose: its target is written (by the rule above) and the
      link stays a link;
    * a device or FIFO (``/dev/stdout``, ``/dev/full``, a named pipe) is written through,
      never replaced by a regular file; a folder is refused (IsADirectoryError).
    On any failure the temporary file is removed and the old file is left as it was.
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    mode = "wb" if binary else "w"
    text = {} if binary else {"encoding": "utf-8", "newline": ""}
    if target.exists() and not target.is_file():  # device, FIFO, socket: write through
        with open(target, mode, **text) as fh:
            yield fh
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    perms = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, perms)
        with os.fdopen(fd, mode, **text) as fh:
            yield fh
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` by the rules of :func:`output_file`."""
    with output_file(path) as fh:
        fh.write(text)


def write_json(path: Path | str, data: Any) -> None:
    """Write ``data`` as indented standard JSON (non-finite floats as strings), atomically."""
    atomic_write_text(path, json.dumps(_clean(data), indent=2, allow_nan=False) + "\n")


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell that a spreadsheet will not run: a string starting with
    ``= + - @``, tab or CR gets a leading single quote (OWASP's CSV-injection rule).
    Numbers we write stay numbers (``-0.5`` is a number, not a formula)."""
    value = _clean(value, "none")  # non-finite numbers: empty cells
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def csv_text(rows: Iterable[Sequence[Any]], header: Sequence[str], lineterminator: str = "\r\n") -> str:
    """Rows (sequences of cells) as CSV text, every cell through :func:`csv_cell`."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=lineterminator)
    writer.writerow([csv_cell(c) for c in header])
    for row in rows:
        writer.writerow([csv_cell(c) for c in row])
    return buf.getvalue()


def write_csv(path: Path | str, rows: Iterable[dict], columns: Sequence[str]) -> None:
    """Write dict rows as CSV (quoted by the csv module, formulas neutralised), atomically."""
    columns = list(columns)
    atomic_write_text(path, csv_text(([row.get(k, "") for k in columns] for row in rows), columns))


def save_npz(path: Path | str, **arrays: np.ndarray) -> None:
    """np.savez by the rules of :func:`output_file` (atomic for regular files)."""
    with output_file(path, binary=True) as fh:
        np.savez(fh, **arrays)
