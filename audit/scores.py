"""Named attribution score matrices of a run: other methods beside the datamodels.

A score matrix says, for every target and training example, how much the example's presence
raises the target's correct-class margin (the sign of a datamodel weight). Users bring their
own (``audit import-scores``: TRAK, influence functions, ...) and the gradient baselines
(``audit gradients``) write theirs. Each lives in the run as

* ``RUN/scores/NAME.npy``: float32 in the run's datamodel layout ``[n_rows, n_train]`` (row =
  target), read memory-mapped; ``n_rows`` is ``n_test`` (test targets only, the usual case) or
  ``n_train + n_test`` (train targets first, as in datamodels.npz);
* ``RUN/scores/NAME.json``: where it came from, its shape as given and how it was made.

``audit evaluate`` scores every matrix by LDS on the held-out models exactly as it scores the
datamodels (:func:`evaluate_scores`), and the ranking audits rank training examples by them
(:func:`top_k`). Files come in as ``[n_train, n_targets]`` (the shape TRAK and most attribution
libraries write) and are transposed on the way in.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from audit.contract import Result
from audit.datamodels import block_columns, spearman_columns, target_columns, target_ids
from audit.errors import AuditError
from audit.jsonio import read_json, write_json

SCORES_DIR = "scores"
# rankings that are not score matrices, and leakage's lists of them all (any method's top k, rank fusion)
BUILT_IN = ("datamodels", "representation", "random", "pixels", "union", "fused")
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,39}")
IMPORTED = "imported from"  # how an imported matrix's "how" starts
CHUNK = 4096  # rows converted or scored at a time
MODEL_BLOCK = 4096  # evaluation models whose masks are float32 at once (LDS)


class ScoreInfo(Result):
    """RUN/scores/NAME.json."""

    name: str
    source: str  # the file it was imported from, or the step that computed it
    how: str  # what the scores are, in words
    shape_given: list[int]  # [n_train, n_targets] as given
    targets: Literal["test", "all"]  # rows: the test targets, or train then test targets
    n_train: int
    n_test: int


class ScoreGroup(Result):
    n_targets: int
    n_lds: int
    lds_mean: float | None = None
    lds_median: float | None = None


class ScoreQuality(Result):
    """LDS of one score matrix on the held-out models (evaluation.json "scores")."""

    name: str
    how: str
    targets: Literal["test", "all"]
    test: ScoreGroup
    train: ScoreGroup | None = None  # only when the matrix has train-target rows
    all: ScoreGroup | None = None


@dataclass(frozen=True)
class ScoreMatrix:
    """A run's score matrix, memory-mapped: ``weights`` [n_rows, n_train] (row = target)."""

    info: ScoreInfo
    weights: np.ndarray

    @property
    def first_target(self) -> int:
        """Target index (train first, then test) of row 0."""
        return 0 if self.info.targets == "all" else self.info.n_train

    def test_rows(self, test_idx: np.ndarray) -> np.ndarray:
        """float32 ``[len(test_idx), n_train]`` for test targets ``test_idx``."""
        start = self.info.n_train - self.first_target
        return np.asarray(self.weights[start + np.asarray(test_idx, dtype=np.int64)], dtype=np.float32)


# ----- names and files ----------------------------------------------------------------------
def check_name(name: str) -> str:
    """A score matrix's name: a lowercase word that is not a built-in ranking's."""
    if not NAME_PATTERN.fullmatch(name or ""):
        raise AuditError(f"score name '{name}': use lowercase letters, digits, '_' or '-' (starting with a letter, "
                         f"at most 40), e.g. --name trak")
    if name in BUILT_IN:
        raise AuditError(f"score name '{name}' is a built-in ranking ({', '.join(BUILT_IN)}); choose another --name")
    return name


def matrix_path(run_dir: Path | str, name: str) -> Path:
    return Path(run_dir) / SCORES_DIR / f"{name}.npy"


def info_path(run_dir: Path | str, name: str) -> Path:
    return Path(run_dir) / SCORES_DIR / f"{name}.json"


def names(run_dir: Path | str) -> list[str]:
    """The run's score matrices (both files present), sorted."""
    folder = Path(run_dir) / SCORES_DIR
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.npy") if NAME_PATTERN.fullmatch(p.stem) and p.stem not in BUILT_IN
                  and info_path(run_dir, p.stem).is_file())


def load(run_dir: Path | str, name: str) -> ScoreMatrix:
    """A run's score matrix (memory-mapped), or one line naming the file and the fix."""
    path, meta = matrix_path(run_dir, name), info_path(run_dir, name)
    if not path.is_file() or not meta.is_file():
        raise AuditError(f"{run_dir} has no score matrix '{name}' (available: {', '.join(names(run_dir)) or 'none'})")
    again = f"import it again (audit import-scores FILE --run {run_dir} --name {name})"
    errors = (OSError, ValueError, TypeError, AttributeError)
    try:
        info = ScoreInfo.from_json(read_json(meta))
    except errors as exc:
        raise AuditError(f"{meta} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0]}); {again}, rerun the "
                         f"step that made it (e.g. audit gradients {run_dir}) or delete {path} and {meta}") from None
    # a step's matrix is made again by that step (an import under its name is refused: see _keep_other_origin)
    fix = (again if _imported(info.how) else f"run `{info.source} {run_dir}` again") + f" or delete {path}"
    try:
        weights = np.load(path, mmap_mode="r", allow_pickle=False)
    except errors as exc:
        raise AuditError(f"{path} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0]}); {fix}") from None
    rows = info.n_test + (info.n_train if info.targets == "all" else 0)
    if weights.shape != (rows, info.n_train) or weights.dtype != np.float32:
        raise AuditError(f"{path} holds {weights.dtype} {weights.shape}, expected float32 {(rows, info.n_train)}; "
                         f"{fix}")
    return ScoreMatrix(info, weights)


def load_all(run_dir: Path | str, n_train: int, n_test: int) -> list[ScoreMatrix]:
    """Every score matrix of the run, each checked against the run's sizes."""
    out = []
    for name in names(run_dir):
        m = load(run_dir, name)
        if (m.info.n_train, m.info.n_test) != (n_train, n_test):
            raise AuditError(f"score matrix '{name}' was made for {m.info.n_train} train and {m.info.n_test} test "
                             f"examples, the run has {n_train} and {n_test}; delete {matrix_path(run_dir, name)}")
        out.append(m)
    return out


def pick(run_dir: Path | str, methods: Sequence[str], built_in: Sequence[str], n_train: int,
         n_test: int) -> dict[str, ScoreMatrix]:
    """The run's score matrices among ``methods`` (memory-mapped); one line naming what is available when a
    method is neither one of the audit's ``built_in`` rankings nor a score matrix of the run."""
    check_methods(run_dir, methods, built_in)
    return {m.info.name: m for m in load_all(run_dir, n_train, n_test) if m.info.name in methods}


def check_methods(run_dir: Path | str, methods: Sequence[str], built_in: Sequence[str],
                  coming: Sequence[str] = ()) -> None:
    """One line naming what is available when a method is neither one of the audit's ``built_in`` rankings nor a
    score matrix of the run (or one that ``coming`` steps of the same `audit run` write first), or none is given;
    reads only the matrices' names."""
    have = sorted(set(names(run_dir)) | set(coming))
    unknown = [m for m in methods if m not in built_in and m not in have]
    if not methods or unknown:
        listed = f"{', '.join(built_in)} and " if built_in else ""
        matrices = ("the score matrices this run has or its earlier steps write" if coming
                    else "this run's score matrices")
        raise AuditError(f"unknown method {', '.join(unknown) or '(none given)'}: available {listed}"
                         + (f"{matrices} {', '.join(have)}" if have else
                            "any score matrix of the run (none yet: audit import-scores, audit gradients)"))


# ----- bringing a matrix in ---------------------------------------------------------------------
def read_score_file(path: Path | str, key: str | None = None) -> np.ndarray:
    """The matrix in an .npy, an .npz (its one array, or ``key``), a TRAK scores file (``scores/NAME.mmap``,
    numpy's .npy format) or a TRAK save folder (its experiments.json names the scores; ``key``: which)."""
    path = Path(path)
    try:
        if path.is_dir():
            return _read_trak_folder(path, key)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if key is None and len(z.files) != 1:
                    raise AuditError(f"{path} holds {len(z.files)} arrays ({', '.join(z.files[:8])}); name one "
                                     f"with --key")
                if key is not None and key not in z.files:
                    raise AuditError(f"{path} has no array '{key}' (it has {', '.join(z.files[:8]) or 'none'})")
                return np.asarray(z[key or z.files[0]])
        if key is not None:
            raise AuditError(f"--key names an array of an .npz or a TRAK experiment; {path} is neither")
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except AuditError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise AuditError(f"{path} is not a readable score matrix ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'empty'}); give an .npy, an .npz or a TRAK "
                         f"scores file") from None


def _read_trak_folder(folder: Path, key: str | None) -> np.ndarray:
    """A TRAK save folder: experiments.json maps each experiment to its scores file."""
    index = folder / "experiments.json"
    if not index.is_file():
        raise AuditError(f"{folder} is a folder but not a TRAK save folder (no experiments.json); give the scores "
                         f"file itself")
    experiments = json.loads(index.read_text(encoding="utf-8"))
    if not isinstance(experiments, dict) or not experiments:
        raise AuditError(f"{index} lists no experiments")
    if key is None and len(experiments) != 1:
        raise AuditError(f"{folder} holds {len(experiments)} TRAK experiments ({', '.join(experiments)}); name one "
                         f"with --key")
    name = key or next(iter(experiments))
    if name not in experiments:
        raise AuditError(f"{folder} has no TRAK experiment '{name}' (it has {', '.join(experiments)})")
    entry = experiments[name]
    if isinstance(entry, dict) and not entry.get("scores_finalized", 1):
        raise AuditError(f"TRAK experiment '{name}' in {folder} is not finalized; call finalize_scores first")
    scores = folder / SCORES_DIR / f"{name}.mmap"
    return np.load(scores, mmap_mode="r", allow_pickle=False)


def check_matrix(matrix: np.ndarray, n_train: int, n_test: int, what: str) -> Literal["test", "all"]:
    """A ``[n_train, n_targets]`` matrix of finite real numbers, with ``n_targets`` the test targets
    (``n_test``) or every target (``n_train + n_test``); which of the two it is."""
    if matrix.dtype.kind not in "fiu" or matrix.dtype.kind == "b":
        raise AuditError(f"{what} holds {matrix.dtype} values; a score matrix holds real numbers (float or int)")
    if matrix.ndim != 2 or matrix.shape[0] != n_train or matrix.shape[1] not in (n_test, n_train + n_test):
        raise AuditError(f"{what} has shape {matrix.shape}; the run needs [n_train, n_targets] = [{n_train}, "
                         f"{n_test}] (test targets) or [{n_train}, {n_train + n_test}] (train then test targets)")
    for start in range(0, n_train, CHUNK):
        block = np.asarray(matrix[start:start + CHUNK], dtype=np.float64)
        if not np.isfinite(block).all():
            row, col = np.argwhere(~np.isfinite(block))[0]
            raise AuditError(f"{what} has a non-finite value (train {start + row}, target column {col}); "
                             f"a score matrix must be finite")
        if np.abs(block).max(initial=0.0) > np.finfo(np.float32).max:
            raise AuditError(f"{what} has values beyond float32's range")
    return "test" if matrix.shape[1] == n_test else "all"


def _imported(how: str) -> bool:
    return how.startswith(IMPORTED)


def _keep_other_origin(run_dir: Path | str, name: str, how: str) -> None:
    """Refuse to replace a score matrix of the other origin (a step's with an import, or an import with a step's):
    re-importing a name, or re-running the step that computed it, replaces it; nothing else does."""
    meta = info_path(run_dir, name)
    if not meta.is_file():
        return
    try:
        old = ScoreInfo.from_json(read_json(meta))
    except (OSError, ValueError, TypeError, AttributeError):
        return  # unreadable: replacing it loses nothing readable
    if _imported(old.how) != _imported(how):
        raise AuditError(f"score matrix '{name}' of {run_dir} came from {old.source} ({old.how}); this would replace "
                         f"it: import under another --name, or delete {matrix_path(run_dir, name)} and {meta} first")


def save_matrix(run_dir: Path | str, name: str, matrix: np.ndarray, *, n_train: int, n_test: int, source: str,
                how: str) -> ScoreInfo:
    """Check ``matrix`` [n_train, n_targets] and save it as the run's score matrix ``name`` (transposed to the
    run's layout, written to a temporary file and moved in place: nothing half-written)."""
    check_name(name)
    _keep_other_origin(run_dir, name, how)
    targets = check_matrix(matrix, n_train, n_test, source)
    info = ScoreInfo(name=name, source=source, how=how, shape_given=list(matrix.shape), targets=targets,
                     n_train=n_train, n_test=n_test)
    folder = Path(run_dir) / SCORES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".npy")
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(matrix.shape[1], n_train))
        for start in range(0, matrix.shape[1], CHUNK):
            out[start:start + CHUNK] = np.asarray(matrix[:, start:start + CHUNK], dtype=np.float32).T
        out.flush()
        del out
        write_json(info_path(run_dir, name), info.to_json())
        os.replace(tmp, matrix_path(run_dir, name))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return info


def import_scores(path: Path | str, run_dir: Path | str, *, n_train: int, n_test: int, name: str | None = None,
                  key: str | None = None) -> ScoreInfo:
    """``audit import-scores``: read a score file and save it in the run (name: ``name``, else the file's stem)."""
    path = Path(path)
    if not path.exists():
        raise AuditError(f"{path} does not exist")
    name = check_name(name if name is not None else path.stem.lower())
    matrix = read_score_file(path, key)
    return save_matrix(run_dir, name, matrix, n_train=n_train, n_test=n_test, source=str(path.absolute()),
                       how=f"{IMPORTED} {path.name}" + (f" ({key})" if key else ""))


# ----- using them ---------------------------------------------------------------------------------
def top_k(weights: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` training indices by score (largest first, ties by index): ``[n_t, n_train] -> [n_t, k]``."""
    return np.argsort(-np.asarray(weights, dtype=np.float32), axis=1, kind="stable")[:, :k].astype(np.int64)


def _group(lds: np.ndarray) -> ScoreGroup:
    ok = lds[np.isfinite(lds)]
    return ScoreGroup(n_targets=int(lds.size), n_lds=int(ok.size),
                      lds_mean=float(ok.mean()) if ok.size else None,
                      lds_median=float(np.median(ok)) if ok.size else None)


def lds_of(matrix: ScoreMatrix, masks_eval: np.ndarray, measured: Any, n_train: int,
           model_block: int = MODEL_BLOCK, targets: np.ndarray | None = None) -> np.ndarray:
    """Per-row LDS of a score matrix: Spearman over the held-out models between ``masks @ scores`` and the
    measured margins ``measured`` [m, n_train + n_test] (train targets only over models that leave them out,
    as for the datamodels). Streamed: ``CHUNK`` targets at a time (their columns of ``measured`` only, which
    may be a memory map or the release's joined margins) and the masks as float32 ``model_block`` rows at a
    time, so no [models, targets] or float32 [models, n_train] array is whole in memory. ``targets``
    (sorted absolute target ids, the evaluation's sample): only those rows are scored, the others are NaN."""
    masks_eval = np.asarray(masks_eval, dtype=bool)
    first = matrix.first_target
    out = np.full(matrix.weights.shape[0], np.nan)
    rows = np.arange(len(out)) if targets is None else \
        np.asarray(targets, np.int64)[np.asarray(targets) >= first] - first
    for start in range(0, len(rows), CHUNK):
        cols = target_columns(rows[start:start + CHUNK])
        w = np.asarray(matrix.weights[cols], dtype=np.float32)
        ids = first + target_ids(cols)
        pred = np.concatenate([masks_eval[r:r + model_block].astype(np.float32) @ w.T
                               for r in range(0, len(masks_eval), model_block)])
        y = block_columns(measured, slice(None), target_columns(ids), dtype=np.float32)
        valid = np.isfinite(y)
        train = ids < n_train  # a train target counts only the models whose subset left it out (eq. 9)
        valid[:, train] &= ~masks_eval[:, ids[train]]
        out[cols] = spearman_columns(pred, y, valid)
    return out


def evaluate_scores(run_dir: Path | str, masks_eval: np.ndarray, measured: Any, n_train: int,
                    n_test: int, targets: np.ndarray | None = None) -> dict[str, Any]:
    """``{name: ScoreQuality json}`` for every score matrix of the run (evaluation.json "scores"), over the
    evaluation's sample of ``targets`` when it has one (the others are left out of the means)."""
    out: dict[str, Any] = {}
    for m in load_all(run_dir, n_train, n_test):
        lds = lds_of(m, masks_eval, measured, n_train, targets=targets)
        scored = np.ones(n_train + n_test, bool)
        if targets is not None:
            scored[:] = False
            scored[targets] = True
        scored = scored[m.first_target:]
        q = ScoreQuality(name=m.info.name, how=m.info.how, targets=m.info.targets,
                         test=_group(lds[-n_test:][scored[-n_test:]]))
        if m.info.targets == "all":
            q = q.model_copy(update={"train": _group(lds[:n_train][scored[:n_train]]), "all": _group(lds[scored])})
        out[m.info.name] = q.to_json()
    return out
