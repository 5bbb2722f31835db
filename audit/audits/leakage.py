"""Train-test leakage candidates from datamodel weights (paper §4.2.2, App. H).

A test example's candidates are the training examples with the largest datamodel weights
(top 10); annotators see the top 5 and the bottom 5 (most negative). Planted duplicates
give a known answer to measure how well a ranking finds leaks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from audit.errors import AuditError
from audit.jsonio import write_csv, write_json

CANDIDATE_COLUMNS = ("test_index", "train_index", "rank", "weight")
_ROW_CHUNK = 128


def _topk_stable(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries per row, descending, ties -> lower index.

    O(n·m) with argpartition; the tie at the k-th value is resolved by index, so the result
    equals ``np.argsort(-rows, kind='stable')[:, :k]``.
    """
    n, m = rows.shape
    if k == m:
        idx = np.tile(np.arange(m), (n, 1))
    else:
        part = np.argpartition(-rows, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(rows, part, axis=1).min(axis=1, keepdims=True)
        above = rows > kth
        need = k - above.sum(axis=1, keepdims=True)
        tie = rows == kth
        chosen = above | (tie & (np.cumsum(tie, axis=1) <= need))
        idx = np.nonzero(chosen)[1].reshape(n, k)
    vals = np.take_along_axis(rows, idx, axis=1)
    order = np.lexsort((idx, -vals), axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    return idx.astype(np.int64), np.take_along_axis(rows, idx, axis=1)


def datamodel_candidates(weights, test_rows, k: int = 10, n_annot: int = 5, positive_only: bool = False) -> dict:
    """Leakage candidates per test example from datamodel weights ``[n_targets, n_train]``.

    ``test_rows``: the rows of ``weights`` holding the test targets (in store order the test
    targets follow the ``n_train`` train targets). Returns ``top_idx``/``top_w`` ``[n_test, k]``
    (largest weights first, ties by lower index) and ``annot_idx``/``annot_w``
    ``[n_test, 2·n_annot]`` (top ``n_annot`` descending, then the ``n_annot`` most negative,
    most negative first). ``positive_only`` replaces candidates whose weight is <= 0 by -1.
    """
    w = np.asarray(weights)
    if w.ndim != 2:
        raise AuditError(f"weights have shape {w.shape}; expected [n_targets, n_train]")
    rows = np.asarray(test_rows)
    if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
        raise AuditError("test_rows must be a 1-D array of integer row indices into the weights")
    rows = rows.astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= w.shape[0]):
        bad = int(rows[(rows < 0) | (rows >= w.shape[0])][0])
        raise AuditError(f"test row {bad} is outside the {w.shape[0]} datamodel rows; "
                         "fit datamodels for the test targets first")
    n_train = w.shape[1]
    if not 1 <= k <= n_train or not 0 <= n_annot <= n_train:
        raise AuditError(f"k = {k} and n_annot = {n_annot} must be between 1 and the {n_train} training examples")
    n = len(rows)
    top_idx = np.empty((n, k), np.int64)
    top_w = np.empty((n, k), np.float32)
    annot_idx = np.empty((n, 2 * n_annot), np.int64)
    annot_w = np.empty((n, 2 * n_annot), np.float32)
    for start in range(0, n, _ROW_CHUNK):
        sl = slice(start, min(n, start + _ROW_CHUNK))
        block = w[rows[sl]]
        if not np.issubdtype(block.dtype, np.floating):
            block = block.astype(np.float64)
        finite = np.isfinite(block)
        if not finite.all():
            bad = int(rows[sl][np.argwhere(~finite)[0, 0]])
            raise AuditError(f"datamodel row {bad} has NaN or infinite weights; refit the datamodels")
        ti, tw = _topk_stable(block, max(k, n_annot))
        top_idx[sl], top_w[sl] = ti[:, :k], tw[:, :k]
        if n_annot:
            bi, bw = _topk_stable(-block, n_annot)
            annot_idx[sl] = np.concatenate([ti[:, :n_annot], bi], axis=1)
            annot_w[sl] = np.concatenate([tw[:, :n_annot], -bw], axis=1)
    if positive_only:
        top_idx = np.where(top_w > 0, top_idx, -1)
    return {"test_rows": rows, "top_idx": top_idx, "top_w": top_w, "annot_idx": annot_idx, "annot_w": annot_w}


def candidates_table(test_ids, idx, w) -> list[dict]:
    """One row per (test, candidate): ``test_index, train_index, rank`` (1 = first), ``weight``.

    Entries with index -1 (no candidate) are skipped.
    """
    ids = np.asarray(test_ids).ravel()
    idx = np.asarray(idx)
    w = np.asarray(w)
    if idx.ndim != 2 or idx.shape != w.shape or idx.shape[0] != len(ids):
        raise AuditError(f"candidate table needs idx and w of shape [{len(ids)}, k]; got {idx.shape} and {w.shape}")
    out = []
    for r, t in enumerate(ids):
        for c in range(idx.shape[1]):
            j = int(idx[r, c])
            if j >= 0:
                out.append({"test_index": t.item() if hasattr(t, "item") else t, "train_index": j,
                            "rank": c + 1, "weight": float(w[r, c])})
    return out


def write_candidates(path_without_ext: Path | str, rows: Sequence[dict]) -> tuple[Path, Path]:
    """Write the candidate rows as ``<path>.csv`` and ``<path>.json`` (each atomically)."""
    base = Path(path_without_ext)
    csv_path = base.with_name(base.name + ".csv")
    json_path = base.with_name(base.name + ".json")
    write_csv(csv_path, rows, CANDIDATE_COLUMNS)
    write_json(json_path, list(rows))
    return csv_path, json_path


def _row_sets(a: np.ndarray) -> list[set]:
    return [set(int(v) for v in row if v >= 0) for row in a]


def candidate_overlap(idx_a, idx_b) -> dict:
    """Agreement of two candidate rankings (e.g. datamodel vs FAISS), per test example.

    Both are truncated to ``k = min(k_a, k_b)`` columns; -1 entries are ignored.
    ``mean_jaccard`` = mean |A∩B| / |A∪B| (rows where both are empty are skipped),
    ``mean_overlap_at_k`` = mean |A∩B| / k, ``frac_any_overlap`` = share of rows with a common candidate.
    """
    a, b = np.asarray(idx_a), np.asarray(idx_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise AuditError(f"candidate arrays have shapes {a.shape} and {b.shape}; expected the same test rows")
    k = min(a.shape[1], b.shape[1])
    if a.shape[0] == 0 or k == 0:
        return {"k": k, "n": int(a.shape[0]), "mean_jaccard": None, "mean_overlap_at_k": None,
                "frac_any_overlap": None}
    inter, jac = [], []
    for sa, sb in zip(_row_sets(a[:, :k]), _row_sets(b[:, :k])):
        common = len(sa & sb)
        inter.append(common)
        union = len(sa | sb)
        if union:
            jac.append(common / union)
    inter_a = np.asarray(inter, dtype=np.float64)
    return {"k": int(k), "n": int(a.shape[0]),
            "mean_jaccard": float(np.mean(jac)) if jac else None,
            "mean_overlap_at_k": float(inter_a.mean() / k),
            "frac_any_overlap": float((inter_a > 0).mean())}


def _shift_one_pixel(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift an [H, W, C] image by (dy, dx) in {-1, 0, 1}, repeating the edge."""
    padded = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    return padded[1 - dy:1 - dy + h, 1 - dx:1 - dx + w]


MIN_SHIFT_SIDE = 16  # a one-pixel shift is "slight" only when it is at most ~6% of the image side
DEFAULT_PLANT_NOISE = 0.1


def plant_duplicates(x_train, y_train, x_test, y_test, n: int, seed: int, noise: float = DEFAULT_PLANT_NOISE,
                     shift: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Append perturbed copies of ``n`` random test images to the training set.

    Each copy gets gaussian noise whose std is ``noise`` × that pixel's (feature's) std over
    the training set, so pixels that never vary (the empty border of a digit) stay as they
    are: a fixed noise level there would be amplified by any per-pixel standardisation and
    turn the copy into a different input for the model. ``shift``: a random shift of at
    most one pixel for [N, H, W, C] images; ``None`` (default) shifts only images with both
    sides >= 16 pixels (CIFAR, FMoW: slight; an 8x8 digit: not). Values are clipped to the
    dtype's range and the dtype is kept. The copy has the test image's label. Returns
    ``x_train_new, y_train_new, planted_pairs`` with rows ``(test_index, new_train_index)``.
    """
    x_tr, x_te = np.asarray(x_train), np.asarray(x_test)
    y_tr, y_te = np.asarray(y_train), np.asarray(y_test)
    if x_tr.shape[1:] != x_te.shape[1:] or len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise AuditError(f"train {x_tr.shape}/{y_tr.shape} and test {x_te.shape}/{y_te.shape} arrays do not "
                         "fit together; pass matching images and labels")
    if not 0 <= n <= len(x_te):
        raise AuditError(f"cannot plant {n} duplicates from {len(x_te)} test images; use 0 <= n <= {len(x_te)}")
    if not noise >= 0:
        raise AuditError(f"noise = {noise}; use a fraction of the per-pixel standard deviation >= 0 (e.g. 0.1)")
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(x_te), size=n, replace=False)).astype(np.int64)
    copies = x_te[picks].astype(np.float64)
    if noise > 0 and n:
        sigma = noise * x_tr.astype(np.float64).std(axis=0) if len(x_tr) else np.zeros(x_te.shape[1:])
        copies = copies + rng.normal(0.0, 1.0, size=copies.shape) * sigma
    if shift is None:
        shift = copies.ndim == 4 and min(copies.shape[1:3]) >= MIN_SHIFT_SIDE
    if shift and copies.ndim == 4 and n:
        moves = rng.integers(-1, 2, size=(n, 2))
        copies = np.stack([_shift_one_pixel(img, int(dy), int(dx)) for img, (dy, dx) in zip(copies, moves)])
    if np.issubdtype(x_te.dtype, np.integer):
        info = np.iinfo(x_te.dtype)
        copies = np.clip(np.rint(copies), info.min, info.max)
    copies = copies.astype(x_te.dtype)
    x_new = np.concatenate([x_tr, copies])
    y_new = np.concatenate([y_tr, y_te[picks].astype(y_tr.dtype)])
    pairs = np.column_stack([picks, len(x_tr) + np.arange(n, dtype=np.int64)])
    return x_new, y_new, pairs


def planted_recall(cand_idx, planted_pairs, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@k of the planted copies: share of planted test images whose copy is in their top-k.

    ``cand_idx`` ``[n_test, K]`` is indexed by test index. Also returns each copy's 1-based
    rank in its test image's list (``None`` when absent).
    """
    cand = np.asarray(cand_idx)
    pairs = np.asarray(planted_pairs, dtype=np.int64).reshape(-1, 2)
    if cand.ndim != 2:
        raise AuditError(f"candidate indices have shape {cand.shape}; expected [n_test, k]")
    width = cand.shape[1]
    for k in ks:
        if not 1 <= k <= width:
            raise AuditError(f"recall@{k} needs at least {k} candidates per test image, there are {width}")
    if pairs.size and (pairs[:, 0].min() < 0 or pairs[:, 0].max() >= cand.shape[0]):
        raise AuditError(f"planted test index outside the {cand.shape[0]} candidate rows")
    ranks: list[int | None] = []
    for t, j in pairs:
        where = np.flatnonzero(cand[t] == j)
        ranks.append(int(where[0]) + 1 if where.size else None)
    n = len(pairs)
    recall = {str(k): (sum(r is not None and r <= k for r in ranks) / n if n else None) for k in ks}
    return {"n_planted": n, "ks": [int(k) for k in ks], "recall_at_k": recall, "rank": ranks}
