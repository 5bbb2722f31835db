"""Resumable retraining jobs: models trained on the full training set with edits.

An audit asks for *rows*: "the margin of target t for a model trained without (or with
relabelled) the first k examples of candidate list l, replicate r". Rows that describe
the same model (same edited examples, same new labels, same replicate) share one *job*,
so e.g. every k=0 row of every target is served by the T unedited full-data models.

Everything is derived from the plan: job j's mask removes ``lists[l, :k]`` (or relabels
those examples to ``list_label[l]``), and its seed is ``model_seed(seed, STREAM_RETRAIN,
r)``, so a resumed job dir trains exactly the same models. Layout of a job dir::

    plan.json     options, trainer, dataset fingerprint, hash of the plan, sizes
    plan.npz      lists, list_label, job_list/job_k/job_rep, row_job/row_target
    margins.npy   float32 [n_rows]  the row target's margin (NaN until done)
    done.npy      bool    [n_jobs]  set only after the job's rows are flushed

Jobs are trained in fixed blocks of consecutive jobs, each under a block claim, written
with the store's flush-then-done discipline (see ``audit.store``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager, Sequence

import numpy as np

from audit.data.dataset import Dataset
from audit.errors import AuditError, InternalError
from audit.execution import BlockTask, run_blocks
from audit.jsonio import read_json, save_npz, write_json
from audit.progress import SILENT, Progress
from audit.seeding import STREAM_RETRAIN, model_seed
from audit.store import NOT_WRITABLE, check_free_space, claim_block, flush_then_done, new_array, not_writable, npy_bytes
from audit.training.base import Trainer

PLAN_JSON = "plan.json"
REMOVE = -1  # list_label value meaning "remove the examples" (otherwise: relabel to this class)


def edit_key(lists: np.ndarray, list_label: np.ndarray, l: int, k: int, r: int) -> tuple:
    """What a model of a plan is: (new label or REMOVE, replicate, the sorted edited examples as bytes).

    Two rows with the same key ask about the same model (the same edit of the same training set,
    the same seed), in one plan or in two.
    """
    edited = lists[l, :k]
    edited = np.unique(edited[edited >= 0]).astype(np.int32)
    return (int(list_label[l]) if len(edited) else REMOVE, int(r), edited.tobytes())


@dataclass(frozen=True)
class RetrainPlan:
    """Candidate lists, the deduplicated jobs (models) and the requested rows."""

    lists: np.ndarray  # int32 [L, K] training-example indices, best first, -1 padded
    list_label: np.ndarray  # int32 [L] REMOVE or the class the edited examples get
    job_list: np.ndarray  # int32 [M] a list whose first job_k entries define the job's edit
    job_k: np.ndarray  # int32 [M]
    job_rep: np.ndarray  # int32 [M] replicate -> seed
    row_job: np.ndarray  # int32 [R]
    row_target: np.ndarray  # int32 [R] target index (train targets first, then test)

    @property
    def n_jobs(self) -> int:
        return int(len(self.job_k))

    @property
    def n_rows(self) -> int:
        return int(len(self.row_job))

    @classmethod
    def build(cls, lists: np.ndarray, list_label: np.ndarray, row_list: np.ndarray, row_k: np.ndarray,
              row_rep: np.ndarray, row_target: np.ndarray) -> "RetrainPlan":
        """Rows ``(list, k, replicate, target)`` -> plan, sharing one job among rows with the same model."""
        lists = np.asarray(lists, dtype=np.int32).reshape(len(lists), -1)
        list_label = np.asarray(list_label, dtype=np.int32)
        row_list, row_k, row_rep, row_target = (np.asarray(a, dtype=np.int32).ravel()
                                                for a in (row_list, row_k, row_rep, row_target))
        if not (len(row_list) == len(row_k) == len(row_rep) == len(row_target)):
            raise InternalError("retraining rows need the same number of lists, ks, replicates and targets")
        if len(list_label) != len(lists):
            raise InternalError("every candidate list needs a label (REMOVE or a class)")
        if len(row_k) and (row_k.min() < 0 or row_k.max() > lists.shape[1]):
            raise InternalError(f"k must lie in 0..{lists.shape[1]} (the candidate lists' length)")
        keys: dict[tuple, int] = {}
        job_list, job_k, job_rep, row_job = [], [], [], np.empty(len(row_k), dtype=np.int32)
        for i, (l, k, r) in enumerate(zip(row_list.tolist(), row_k.tolist(), row_rep.tolist())):
            key = edit_key(lists, list_label, l, k, r)
            if key not in keys:
                keys[key] = len(job_k)
                job_list.append(l), job_k.append(k), job_rep.append(r)
            row_job[i] = keys[key]
        as32 = lambda a: np.asarray(a, dtype=np.int32)  # noqa: E731
        return cls(lists=lists, list_label=list_label, job_list=as32(job_list), job_k=as32(job_k),
                   job_rep=as32(job_rep), row_job=row_job, row_target=row_target)

    def job_keys(self) -> list[tuple]:
        """Each job's :func:`edit_key`: what its model is trained on, whichever plan holds it."""
        return [edit_key(self.lists, self.list_label, l, k, r)
                for l, k, r in zip(self.job_list.tolist(), self.job_k.tolist(), self.job_rep.tolist())]

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ("lists", "list_label", "job_list", "job_k", "job_rep",
                                                       "row_job", "row_target")}

    def digest(self, extra: dict) -> str:
        """A hash of the plan and of what else determines the models (trainer, data, seed)."""
        h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
        for name, arr in self.arrays().items():
            h.update(name.encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:12]

    def edits(self, jobs: np.ndarray, y_train: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Masks ``[B, n_train]`` and labels ``[B, n_train]`` (None when no job relabels) for ``jobs``."""
        n = len(y_train)
        masks = np.ones((len(jobs), n), dtype=bool)
        labels = np.broadcast_to(np.asarray(y_train), (len(jobs), n)).copy()
        relabels = False
        for b, j in enumerate(np.asarray(jobs).tolist()):
            l, k = int(self.job_list[j]), int(self.job_k[j])
            edited = self.lists[l, :k]
            edited = edited[edited >= 0]
            if self.list_label[l] == REMOVE:
                masks[b, edited] = False
            else:
                labels[b, edited] = self.list_label[l]
                relabels = relabels or len(edited) > 0
        return masks, (labels if relabels else None)


class RetrainStore:
    """An open job dir. Use ``RetrainStore.open_or_create``."""

    def __init__(self, path: Path, plan: RetrainPlan, meta: dict, writable: bool = True) -> None:
        self.path, self.plan, self.meta = Path(path), plan, meta
        mode = "r+" if writable else "r"
        try:
            self.margins = np.load(self.path / "margins.npy", mmap_mode=mode)
            self.done = np.load(self.path / "done.npy", mmap_mode=mode)
        except OSError as exc:
            if exc.errno in NOT_WRITABLE:
                raise not_writable(self.path, exc) from None
            raise AuditError(f"{self.path}: the retraining arrays are missing or corrupted ({exc}); "
                             f"delete this retraining folder (only its retrained models are lost) and run the "
                             f"audit again") from None
        except ValueError as exc:
            raise AuditError(f"{self.path}: the retraining arrays are missing or corrupted ({exc}); "
                             f"delete this retraining folder (only its retrained models are lost) and run the "
                             f"audit again") from None
        if self.margins.shape != (plan.n_rows,) or self.done.shape != (plan.n_jobs,):
            raise AuditError(f"{self.path}: arrays do not match plan.json; delete the folder and run again")

    @classmethod
    def open_or_create(cls, path: Path | str, plan: RetrainPlan, *, seed: int, trainer: dict, fingerprint: str,
                       block_size: int, options: dict | None = None) -> "RetrainStore":
        """Open the job dir made for exactly this plan, or create it; a different plan is an error."""
        path = Path(path)
        determined_by = {"seed": seed, "trainer": trainer, "fingerprint": fingerprint, "block_size": block_size}
        digest = plan.digest(determined_by)
        if (path / PLAN_JSON).exists():
            meta = read_json(path / PLAN_JSON)
            if meta.get("hash") != digest:
                raise AuditError(f"{path} holds retraining jobs for other settings (plan {meta.get('hash')}, "
                                 f"now {digest}); delete it or choose other options")
            return cls(path, plan, meta)
        if block_size < 1:
            raise AuditError(f"retraining block size must be at least 1 (got {block_size})")
        meta = {**determined_by, "hash": digest, "n_jobs": plan.n_jobs, "n_rows": plan.n_rows,
                "options": options or {}}
        arrays = [("margins", np.float32, (plan.n_rows,), np.nan), ("done", bool, (plan.n_jobs,), 0)]
        plan_bytes = sum(a.nbytes for a in plan.arrays().values())
        check_free_space(path, plan_bytes + sum(npy_bytes(d, shape) for _, d, shape, _ in arrays),
                         f"{plan.n_jobs} retraining jobs")
        path.mkdir(parents=True, exist_ok=True)
        try:
            save_npz(path / "plan.npz", **plan.arrays())
            for name, dtype, shape, fill in arrays:
                new_array(path / f"{name}.npy", dtype, shape, fill)
            write_json(path / PLAN_JSON, meta)  # written last: its presence means "complete"
        except BaseException:
            for name in ("plan.npz", "margins.npy", "done.npy"):
                (path / name).unlink(missing_ok=True)
            raise
        return cls(path, plan, meta)

    # ----- blocks ----------------------------------------------------------------------
    @property
    def block_size(self) -> int:
        return int(self.meta["block_size"])

    @property
    def n_blocks(self) -> int:
        return -(-self.plan.n_jobs // self.block_size)

    def block_jobs(self, block: int) -> np.ndarray:
        start = block * self.block_size
        return np.arange(start, min(start + self.block_size, self.plan.n_jobs))

    def pending_blocks(self) -> list[int]:
        done = np.asarray(self.done)
        return [b for b in range(self.n_blocks) if not done[self.block_jobs(b)].all()]

    def total_models(self) -> int:
        return self.plan.n_jobs

    def block_models(self, block: int) -> int:
        return len(self.block_jobs(block))

    def block_done(self, block: int) -> bool:
        return bool(np.asarray(self.done)[self.block_jobs(block)].all())

    def claim(self, block: int) -> ContextManager[bool]:
        return claim_block(self.path, block)

    @functools.cached_property
    def _rows_by_job(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.plan.row_job, kind="stable")
        return order, np.searchsorted(self.plan.row_job[order], np.arange(self.plan.n_jobs + 1))

    def _block_rows(self, jobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows served by ``jobs`` and, per row, its job's position in ``jobs``."""
        order, bounds = self._rows_by_job
        rows = np.concatenate([order[bounds[j]:bounds[j + 1]] for j in jobs])
        owner = np.concatenate([np.full(bounds[j + 1] - bounds[j], b) for b, j in enumerate(jobs)])
        return rows, owner.astype(np.int64)

    def block_task(self, block: int, dataset: Dataset) -> BlockTask:
        """The block's edited masks/labels, seeds, and the targets its rows ask about."""
        jobs = self.block_jobs(block)
        rows, _ = self._block_rows(jobs)
        masks, labels = self.plan.edits(jobs, dataset.y_train)
        return BlockTask(masks=masks, seeds=self.seeds(jobs), labels=labels,
                         targets=np.unique(self.plan.row_target[rows]).astype(np.int64))

    def write_block(self, block: int, task: BlockTask, margins: np.ndarray) -> None:
        """``margins`` [B, len(task.targets)] -> the block's rows, flushed, then its jobs marked done."""
        jobs = self.block_jobs(block)
        rows, owner = self._block_rows(jobs)
        inverse = np.searchsorted(task.targets, self.plan.row_target[rows])
        self.write_jobs(jobs, rows, np.asarray(margins)[owner, inverse])

    def seeds(self, jobs: np.ndarray) -> list[int]:
        return [model_seed(int(self.meta["seed"]), STREAM_RETRAIN, int(self.plan.job_rep[j])) for j in jobs]

    def write_jobs(self, jobs: np.ndarray, rows: np.ndarray, margins: np.ndarray) -> None:
        """Write and flush the jobs' rows, then mark the jobs done."""
        flush_then_done(self.path / "retrain.lock", [(self.margins, rows, margins)], self.done, jobs)

    # ----- reading ---------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return bool(np.asarray(self.done).all())

    def row_margins(self) -> np.ndarray:
        """Margins of every row (NaN for rows whose job is not done or diverged)."""
        out = np.asarray(self.margins).copy()
        out[~np.asarray(self.done)[self.plan.row_job]] = np.nan
        return out


def train_pending(store: RetrainStore, dataset: Dataset, trainer: Trainer | dict, progress: Progress = SILENT,
                  description: str = "retraining", max_blocks: int | None = None, engine: str = "local",
                  address: str | None = None) -> int:
    """Train every pending block (this process's claims, or Ray tasks); returns the models trained."""
    return run_blocks(store, dataset, trainer, engine=engine, address=address, progress=progress,
                      description=description, max_blocks=max_blocks)


def job_dir(root: Path | str, name: str, plan: RetrainPlan, *, seed: int, trainer: dict, fingerprint: str,
            block_size: int) -> Path:
    """``ROOT/NAME-HASH``: one folder per plan, so other options never reuse (or clash with) it."""
    digest = plan.digest({"seed": seed, "trainer": trainer, "fingerprint": fingerprint, "block_size": block_size})
    return Path(root) / f"{name}-{digest}"


def run_plan(root: Path | str, name: str, plan: RetrainPlan, dataset: Dataset, trainer: Trainer | dict, *,
             seed: int, trainer_config: dict, fingerprint: str, block_size: int, options: dict | None = None,
             progress: Progress = SILENT, description: str = "retraining", engine: str = "local",
             address: str | None = None) -> tuple[np.ndarray, int]:
    """Open or create the plan's job dir under ``root``, train what is pending (``engine`` local or ray).

    Returns (row margins, models trained by this call).
    """
    path = job_dir(root, name, plan, seed=seed, trainer=trainer_config, fingerprint=fingerprint,
                   block_size=block_size)
    store = RetrainStore.open_or_create(path, plan, seed=seed, trainer=trainer_config, fingerprint=fingerprint,
                                        block_size=block_size, options=options)
    trained = train_pending(store, dataset, trainer, progress=progress, description=description, engine=engine,
                            address=address)
    if not store.complete:
        raise AuditError(f"{path}: another process holds some retraining blocks; wait for it and run again")
    return store.row_margins(), trained


def finished_margins(root: Path | str, *, seed: int, trainer: dict, fingerprint: str) -> dict[tuple, float]:
    """``{(edit key, target): margin}`` of every finished row of every job dir under ``root`` whose models
    were trained with this seed, trainer and data (the models other audits' plans already trained).

    A job dir that cannot be read is passed over: it only caches models. (The batched CPU trainer
    sizes an epoch by the largest training set in a block, so a model found here can differ from the
    one a fresh plan would train by a step per epoch: an equally valid model of the same edit and seed.)
    """
    out: dict[tuple, float] = {}
    for meta_path in sorted(Path(root).glob(f"*/{PLAN_JSON}")):
        folder = meta_path.parent
        try:
            meta = read_json(meta_path)
            if (meta.get("seed"), meta.get("trainer"), meta.get("fingerprint")) != (seed, trainer, fingerprint):
                continue
            with np.load(folder / "plan.npz", allow_pickle=False) as z:
                plan = RetrainPlan(**{name: np.asarray(z[name]) for name in RetrainPlan.__dataclass_fields__})
            margins = np.asarray(np.load(folder / "margins.npy", mmap_mode="r"))
            done = np.asarray(np.load(folder / "done.npy", mmap_mode="r"))
            keys = plan.job_keys()
            if margins.shape != (plan.n_rows,) or done.shape != (plan.n_jobs,):
                continue
        except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile):
            continue
        for row in np.flatnonzero(done[plan.row_job]).tolist():
            out[(keys[int(plan.row_job[row])], int(plan.row_target[row]))] = float(margins[row])
    return out


def run_rows(root: Path | str, name: str, lists: np.ndarray, list_label: np.ndarray, row_list: np.ndarray,
             row_k: np.ndarray, row_rep: np.ndarray, row_target: np.ndarray, dataset: Dataset,
             trainer: Trainer | dict, *, seed: int, trainer_config: dict, fingerprint: str, block_size: int,
             options: dict | None = None, progress: Progress = SILENT, description: str = "retraining",
             engine: str = "local", address: str | None = None) -> tuple[np.ndarray, int, int]:
    """Margins of the rows ``(list, k, replicate, target)``, training only the models no job dir under
    ``root`` has finished (any audit's, :func:`finished_margins`); the rest form a plan of their own
    (resumable like every plan). Returns (row margins, models trained now, rows found already trained).
    """
    full = RetrainPlan.build(lists, list_label, row_list, row_k, row_rep, row_target)
    found = finished_margins(root, seed=seed, trainer=trainer_config, fingerprint=fingerprint)
    keys = full.job_keys()
    margins = np.full(full.n_rows, np.nan, dtype=np.float32)
    missing = []
    for row, (job, target) in enumerate(zip(full.row_job.tolist(), full.row_target.tolist())):
        value = found.get((keys[job], target))
        if value is None:
            missing.append(row)
        else:
            margins[row] = value
    trained = 0
    if missing:
        rows = np.asarray(missing)
        plan = RetrainPlan.build(full.lists, full.list_label, *(np.asarray(a).ravel()[rows]
                                                                for a in (row_list, row_k, row_rep, row_target)))
        margins[rows], trained = run_plan(root, name, plan, dataset, trainer, seed=seed, trainer_config=trainer_config,
                                          fingerprint=fingerprint, block_size=block_size, options=options,
                                          progress=progress, description=description, engine=engine, address=address)
    return margins, trained, full.n_rows - len(missing)


def plan_from_requests(lists: Sequence[np.ndarray] | np.ndarray, list_label: Sequence[int],
                       requests: Sequence[tuple[int, int, int, int]]) -> RetrainPlan:
    """Convenience: ``requests`` = (list, k, replicate, target) tuples."""
    req = np.asarray(requests, dtype=np.int32).reshape(-1, 4)
    return RetrainPlan.build(np.asarray(lists), np.asarray(list_label), req[:, 0], req[:, 1], req[:, 2], req[:, 3])
