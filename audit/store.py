"""The run directory: run.json, masks/margins/done memmaps, block claims, resume.

Layout (DESIGN.md): ``masks.npy`` bool [n_models, n_train], ``margins.npy`` float32
[n_models, n_train + n_test] (train targets first), ``done.npy`` bool [n_models].
Models are trained in fixed blocks of ``block_size`` consecutive indices. A process
trains a block only while holding that block's claim (an OS file lock, released if the
process dies), writes its rows, flushes them, and only then marks them done.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
from filelock import FileLock, Timeout

from audit import __version__
from audit.data.dataset import Dataset
from audit.errors import AuditError, is_disk_full
from audit.execution import BlockTask
from audit.jsonio import read_json, write_json
from audit.release import is_imported, release_models
from audit.seeding import STREAM_EVAL, STREAM_MAIN, model_seed, subset_mask  # noqa: F401  (STREAM_EVAL re-exported)

RUN_JSON = "run.json"


class RunExistsError(AuditError):
    """``RunStore.create`` found a run in the folder (possibly made meanwhile by another process)."""




def _existing_parent(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_free_space(folder: Path | str, need: int, what: str) -> None:
    """Refuse (one line) before writing ``need`` bytes into ``folder`` when the disk has less free."""
    free = shutil.disk_usage(_existing_parent(Path(folder))).free
    if need > free:
        raise AuditError(f"{what} need {need / 2**30:.1f} GiB in {folder} but only {free / 2**30:.1f} GiB is free; "
                         f"ask for fewer models or use another disk")


def npy_bytes(dtype, shape: tuple) -> int:
    return int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize + 4096  # + header


def new_array(path: Path, dtype, shape: tuple, fill) -> None:
    """Create an .npy file of ``shape`` filled with ``fill``, its blocks reserved on disk first.

    A memory-mapped write to a sparse file on a full disk kills the process with SIGBUS;
    reserving the space (``posix_fallocate``) turns that into an ENOSPC error here, before
    any row is written. The file is removed if anything fails.
    """
    try:
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        size = os.path.getsize(path)
        if hasattr(os, "posix_fallocate") and size:
            fd = os.open(path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
            finally:
                os.close(fd)
        if fill:
            arr[:] = fill
        arr.flush()
        del arr
    except BaseException as exc:
        Path(path).unlink(missing_ok=True)
        if is_disk_full(exc):
            raise AuditError(f"{path}: no space left on the device for a {'x'.join(map(str, shape))} array; free "
                             f"some space or ask for fewer models (finished work is kept)") from None
        raise


def not_writable(path: Path, exc: OSError) -> AuditError:
    return AuditError(f"{path} is not writable ({exc.strerror or exc}); fix its permissions or write to another "
                      f"folder (commands that only read a run, such as report --out, check and leakage, work "
                      f"on read-only runs)")


NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


@dataclass
class RunConfig:
    """What determines a run's models; saved as run.json."""

    dataset: str
    fingerprint: str
    n_train: int
    n_test: int
    alpha: float
    n_models: int
    seed: int = 0
    stream: int = STREAM_MAIN
    repeats: int = 1  # models per subset: model i trains on subset i // repeats
    block_size: int = 250
    trainer: dict = field(default_factory=dict)
    dataset_options: dict = field(default_factory=dict)
    created: str = ""
    versions: dict = field(default_factory=dict)

    @property
    def n_targets(self) -> int:
        return self.n_train + self.n_test

    def check(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise AuditError(f"alpha must be strictly between 0 and 1 (got {self.alpha})")
        if self.n_models < 1:
            raise AuditError(f"the number of models must be at least 1 (got {self.n_models})")
        if self.repeats < 1 or self.n_models % self.repeats:
            raise AuditError(f"n_models ({self.n_models}) must be a multiple of repeats ({self.repeats})")
        if not 0 <= self.seed < 2**63:
            raise AuditError(f"seed must be a whole number from 0 to 2**63-1 (got {self.seed})")
        if self.block_size < 1:
            raise AuditError(f"block size must be at least 1 (got {self.block_size})")
        if int(np.floor(self.alpha * self.n_train)) < 1:
            raise AuditError(f"alpha={self.alpha} leaves no training example out of {self.n_train}; raise alpha")


def _versions() -> dict:
    out = {"audit": __version__, "python": platform.python_version(), "numpy": np.__version__}
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


class RunStore:
    """Open run directory. Use ``RunStore.create`` or ``RunStore.open``."""

    def __init__(self, path: Path, config: RunConfig, writable: bool = True) -> None:
        self.path = Path(path)
        self.config = config
        mode = "r+" if writable else "r"
        if is_imported(self.path):  # `audit import`: the release's files, memory-mapped and checked
            models = release_models(self.path, config.n_train, config.n_test)
            self.masks, self.margins = models.masks, models.margins
            self.done, self._inode = np.ones(len(models.masks), bool), None
            return
        try:
            self.masks = np.load(self.path / "masks.npy", mmap_mode=mode)
            self.margins = np.load(self.path / "margins.npy", mmap_mode=mode)
            self.done = np.load(self.path / "done.npy", mmap_mode=mode)
        except OSError as exc:
            if exc.errno in NOT_WRITABLE:
                raise not_writable(self.path, exc) from None
            raise AuditError(f"{self.path}: the run's arrays are missing or corrupted ({exc}); restore them from a "
                             f"copy, or train into a new --run") from None
        except ValueError as exc:
            raise AuditError(f"{self.path}: the run's arrays are corrupted ({exc}); restore them from a copy, or "
                             f"train into a new --run") from None
        self._inode = os.stat(self.path / "done.npy").st_ino  # os.replace by grow() changes it
        expect = {"masks": (config.n_models, config.n_train), "margins": (config.n_models, config.n_targets),
                  "done": (config.n_models,)}
        for name, shape in expect.items():
            if getattr(self, name).shape != shape:
                raise AuditError(f"{self.path}/{name}.npy has shape {getattr(self, name).shape}, run.json says "
                                 f"{shape}; the run directory is corrupted: restore it from a copy, or train into a new --run")

    # ----- creation and opening -------------------------------------------------------
    @classmethod
    def create(cls, path: Path | str, config: RunConfig) -> "RunStore":
        """Make a new run directory (refuses to overwrite one)."""
        config.check()
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise AuditError(f"{path} is a file, not a run directory; give --run a folder (new or existing run)")
        if (path / RUN_JSON).exists():
            raise RunExistsError(f"{path} already holds a run; open it instead of creating it")
        check_free_space(path, cls.bytes_needed(config), f"{config.n_models} models")
        made = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        config.created = config.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
        config.versions = config.versions or _versions()
        with FileLock(str(path / "run.lock")):
            if (path / RUN_JSON).exists():  # another process created it while we waited for the lock
                raise RunExistsError(f"{path} already holds a run; open it instead of creating it")
            try:
                for name, dtype, shape, fill in cls._arrays(config):
                    new_array(path / f"{name}.npy", dtype, shape, fill)
                write_json(path / RUN_JSON, asdict(config))  # written last: its presence means "complete"
            except BaseException:
                for name, *_ in cls._arrays(config):
                    (path / f"{name}.npy").unlink(missing_ok=True)
                if made:
                    (path / "run.lock").unlink(missing_ok=True)
                    with contextlib.suppress(OSError):
                        path.rmdir()
                raise
        return cls(path, config)

    @staticmethod
    def _arrays(config: RunConfig) -> list[tuple]:
        """(name, dtype, shape, fill) of the run's arrays."""
        return [("masks", bool, (config.n_models, config.n_train), 0),
                ("margins", np.float32, (config.n_models, config.n_targets), np.nan),
                ("done", bool, (config.n_models,), 0)]

    @classmethod
    def bytes_needed(cls, config: RunConfig) -> int:
        return sum(npy_bytes(dtype, shape) for _, dtype, shape, _ in cls._arrays(config))

    @classmethod
    def open(cls, path: Path | str, writable: bool = True) -> "RunStore":
        return cls(Path(path), cls.read_config(path), writable=writable)

    @staticmethod
    def read_config(path: Path | str) -> RunConfig:
        """The run's run.json (without opening its arrays); AuditError when there is none or it is unreadable."""
        path = Path(path)
        if not (path / RUN_JSON).exists():
            raise AuditError(f"{path} is not a run directory (no {RUN_JSON}); run `audit train` first")
        try:
            return RunConfig(**read_json(path / RUN_JSON))
        except (OSError, ValueError, TypeError) as exc:
            raise AuditError(f"{path}/{RUN_JSON} is unreadable ({exc}); restore it or train a new run") from None

    @classmethod
    def open_or_create(cls, path: Path | str, config: RunConfig) -> "RunStore":
        """Open an existing run made for the same dataset and settings, or create it."""
        path = Path(path)
        config.check()
        if not (path / RUN_JSON).exists():
            try:
                return cls.create(path, config)
            except RunExistsError:
                pass  # another process created it meanwhile: open it and compare the settings
        store = cls.open(path)
        old = store.config
        if old.fingerprint != config.fingerprint:
            raise AuditError(f"{path} was trained on a different dataset ({old.dataset}, fingerprint "
                             f"{old.fingerprint}) than {config.dataset} ({config.fingerprint}); use another --run")
        for name in ("alpha", "seed", "repeats", "trainer", "block_size"):
            if getattr(old, name) != getattr(config, name):
                raise AuditError(f"{path} was made with {name}={getattr(old, name)!r}, not "
                                 f"{getattr(config, name)!r}; use those settings or another --run")
        if config.n_models > old.n_models:
            store = store.grow(config.n_models)
        return store

    def grow(self, n_models: int) -> "RunStore":
        """Extend the run to ``n_models`` models, keeping every row already trained."""
        with FileLock(str(self.path / "run.lock")):
            current = RunStore.open(self.path)  # the files as they are now, not this process's older view
            if current.config.n_models >= n_models:  # another process grew it meanwhile
                return current
            new = RunConfig(**{**asdict(current.config), "n_models": n_models})
            new.check()
            tmps = {name: self.path / f".{name}.grow.npy" for name, *_ in self._arrays(new)}
            for tmp in tmps.values():  # left by a process killed while growing: never part of the run
                tmp.unlink(missing_ok=True)
            check_free_space(self.path, self.bytes_needed(new), f"{n_models} models")
            try:
                for name, dtype, shape, fill in self._arrays(new):
                    old = getattr(current, name)
                    new_array(tmps[name], dtype, shape, 0)
                    arr = np.load(tmps[name], mmap_mode="r+")
                    arr[: len(old)] = old
                    arr[len(old):] = fill
                    arr.flush()
                    del arr
            except BaseException:
                for tmp in tmps.values():
                    tmp.unlink(missing_ok=True)
                raise
            for name in tmps:
                os.replace(tmps[name], self.path / f"{name}.npy")
            write_json(self.path / RUN_JSON, asdict(new))
        return RunStore(self.path, new)

    # ----- models ----------------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return -(-self.config.n_models // self.config.block_size)

    def block_rows(self, block: int) -> np.ndarray:
        start = block * self.config.block_size
        return np.arange(start, min(start + self.config.block_size, self.config.n_models))

    def pending_blocks(self) -> list[int]:
        done = np.asarray(self.done)
        return [b for b in range(self.n_blocks) if not done[self.block_rows(b)].all()]

    def subset_masks(self, rows: np.ndarray) -> np.ndarray:
        c = self.config
        return np.stack([subset_mask(c.seed, c.stream, int(i) // c.repeats, c.n_train, c.alpha) for i in rows])

    def model_seeds(self, rows: np.ndarray) -> list[int]:
        return [model_seed(self.config.seed, self.config.stream, int(i)) for i in rows]

    @contextlib.contextmanager
    def claim(self, block: int) -> Iterator[bool]:
        """Yield True while this process holds the block; False if another process does."""
        with claim_block(self.path, block) as mine:
            yield mine

    # ----- the block-store interface of audit.execution ------------------------------------
    def total_models(self) -> int:
        return int(self.config.n_models)

    def block_models(self, block: int) -> int:
        return len(self.block_rows(block))

    def block_done(self, block: int) -> bool:
        return bool(np.asarray(self.done)[self.block_rows(block)].all())

    def block_task(self, block: int, dataset: Dataset | None = None) -> BlockTask:
        """The block's subset masks and seeds."""
        rows = self.block_rows(block)
        return BlockTask(masks=self.subset_masks(rows), seeds=self.model_seeds(rows))

    def write_block(self, block: int, task: BlockTask, margins: np.ndarray) -> None:
        self.write_rows(self.block_rows(block), task.masks, margins)

    def write_rows(self, rows: np.ndarray, masks: np.ndarray, margins: np.ndarray) -> None:
        """Write and flush a block's rows, then mark them done (never the other way round)."""
        with FileLock(str(self.path / "run.lock")):
            if os.stat(self.path / "done.npy").st_ino != self._inode:  # another process grew the run
                fresh = RunStore.open(self.path)
                self.config, self.masks, self.margins, self.done, self._inode = (
                    fresh.config, fresh.masks, fresh.margins, fresh.done, fresh._inode)
            self.masks[rows] = masks
            self.margins[rows] = margins
            self.masks.flush()
            self.margins.flush()
            self.done[rows] = True
            self.done.flush()

    # ----- reading ---------------------------------------------------------------------
    def finished_rows(self) -> np.ndarray:
        """Indices of models that are done and did not diverge (all margins finite)."""
        done = np.flatnonzero(np.asarray(self.done))
        finite = np.ones(len(done), dtype=bool)
        step = max(1, min(4096, 2**26 // max(1, self.config.n_targets)))  # ≤ 256 MiB of float32 rows at a time
        for start in range(0, len(done), step):
            chunk = done[start:start + step]
            finite[start:start + step] = np.isfinite(self.margins[chunk]).all(axis=1)
        return done[finite]

    def summary(self) -> dict:
        """Counts of models trained, diverged and pending, and mean test accuracy at alpha."""
        done = np.asarray(self.done)
        ok = self.finished_rows()
        test = self.margins[ok, self.config.n_train:] if len(ok) else np.zeros((0, self.config.n_test))
        return {
            "n_models": self.config.n_models,
            "trained": int(done.sum()),
            "diverged": int(done.sum() - len(ok)),
            "pending": int((~done).sum()),
            "test_accuracy": float((test > 0).mean()) if len(ok) else None,
        }


# ----- generic pieces for other resumable tables (e.g. audit.retrain) -------------------
@contextlib.contextmanager
def claim_block(folder: Path | str, block: int) -> Iterator[bool]:
    """Like ``RunStore.claim`` for any folder: True while this process holds ``claims/block_N.lock``."""
    claims = Path(folder) / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(claims / f"block_{block}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def flush_then_done(lock_path: Path | str, writes: list[tuple[np.memmap, np.ndarray, np.ndarray]],
                    done: np.memmap, done_rows: np.ndarray) -> None:
    """Under a file lock: write each ``(array, rows, values)``, flush them, then mark ``done_rows``."""
    with FileLock(str(lock_path)):
        for array, rows, values in writes:
            array[rows] = values
        for array, _, _ in writes:
            array.flush()
        done[done_rows] = True
        done.flush()
