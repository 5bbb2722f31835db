"""Train-test leakage candidates from datamodel weights (paper §4.2.2, App. H).

A test example's candidates are the training examples with the largest datamodel weights
(top 10); annotators see the top 5 and the bottom 5 (most negative). Planted duplicates
give a known answer to measure how well a ranking finds leaks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from audit.data.planting import DEFAULT_PLANT_NOISE, plant_duplicates  # noqa: F401  (re-exported)
from audit.errors import AuditError
from audit.jsonio import write_csv, write_json
from audit.lazy import torch
from audit.release import require_finite_rows, weight_rows

CANDIDATE_COLUMNS = ("test_index", "train_index", "rank", "weight")
_ROW_CHUNK = 128  # rows ranked at a time (the tie mask's temporaries)
_READ_ROWS = 8 * _ROW_CHUNK  # rows read at a time


def _topk_stable(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries per row, descending, ties -> lower index.

    O(n·m) (the k-th value by ``torch.topk``); the tie at the k-th value is resolved by index, so the result
    equals ``np.argsort(-rows, kind='stable')[:, :k]``.
    """
    n, m = rows.shape
    if k == m:
        idx = np.tile(np.arange(m), (n, 1))
    else:
        # the k-th largest value by torch.topk: numpy's argpartition slows 50-fold on sparse rows (ties at 0)
        kth = torch.topk(torch.as_tensor(np.ascontiguousarray(rows)), k, dim=1).values[:, -1:].numpy()
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
    w = weight_rows(weights)  # an array, a memory map or the release's lazy weights: read by blocks of rows
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
    read = np.zeros((0, n_train), np.float32)
    for start in range(0, n, _ROW_CHUNK):
        sl = slice(start, min(n, start + _ROW_CHUNK))
        if start % _READ_ROWS == 0:  # the release's weights hold a target per column: read many at once
            read = np.asarray(w[rows[start:start + _READ_ROWS]])
        block = read[start % _READ_ROWS:start % _READ_ROWS + _ROW_CHUNK]
        if not np.issubdtype(block.dtype, np.floating):
            block = block.astype(np.float64)
        require_finite_rows(block, rows[sl])
        ti, tw = _topk_stable(block, max(k, n_annot))
        top_idx[sl], top_w[sl] = ti[:, :k], tw[:, :k]
        if n_annot:
            bi, bw = _topk_stable(-block, n_annot)
            annot_idx[sl] = np.concatenate([ti[:, :n_annot], bi], axis=1)
            annot_w[sl] = np.concatenate([tw[:, :n_annot], -bw], axis=1)
    if positive_only:
        top_idx = np.where(top_w > 0, top_idx, -1)
    return {"test_rows": rows, "top_idx": top_idx, "top_w": top_w, "annot_idx": annot_idx, "annot_w": annot_w}


def weights_at(weights, rows, idx) -> np.ndarray:
    """The datamodel weight of each listed candidate: ``weights[rows[r], idx[r, c]]`` as float32 ``[n, K]``
    (0 where ``idx`` is -1), reading the rows a block at a time."""
    w = weight_rows(weights)
    rows, idx = np.asarray(rows, dtype=np.int64), np.asarray(idx, dtype=np.int64)
    out = np.zeros(idx.shape, np.float32)
    for start in range(0, len(rows), _READ_ROWS):
        block = np.asarray(w[rows[start:start + _READ_ROWS]], dtype=np.float32)
        part = idx[start:start + _READ_ROWS]
        out[start:start + _READ_ROWS] = np.where(part >= 0, np.take_along_axis(block, np.maximum(part, 0), axis=1), 0)
    return out


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


# ----- a verdict: is a candidate a near-copy of the test image? ------------------------------
NEAR_COPY = 0.15  # leaked: RMS pixel difference of at most this many pixel spreads (1.5 x the planted noise)
POSSIBLE_COPY = 0.2  # possibly leaked (when both rankings list the pair): 2 x the planted noise
MAX_SIDE = 32  # larger images are compared after area-averaging down to about this side
SHIFT_SIDE = 16  # images of at least this side are also compared shifted by one pixel (as planted copies are)
_PAIR_CHUNK = 2048


def comparable(x: np.ndarray) -> np.ndarray:
    """Images ``[N, H, W, C]`` as float32, area-averaged by an integer factor to about ``MAX_SIDE`` on the
    shorter side (a one-pixel shift at full size becomes a fraction of a pixel); feature vectors as they are."""
    a = np.asarray(x)
    if a.ndim != 4 or min(a.shape[1:3]) <= MAX_SIDE:
        return a.astype(np.float32)
    f = min(a.shape[1:3]) // MAX_SIDE
    h, w = a.shape[1] // f * f, a.shape[2] // f * f
    return a[:, :h, :w].reshape(len(a), h // f, f, w // f, f, a.shape[3]).mean(axis=(2, 4), dtype=np.float32)


def pixel_spread(x_train: np.ndarray, chunk: int = 4096) -> float:
    """Standard deviation of every value of the (comparable) training images, read in chunks."""
    n, s1, s2 = 0, 0.0, 0.0
    for start in range(0, len(x_train), chunk):
        block = comparable(x_train[start:start + chunk]).astype(np.float64)
        n, s1, s2 = n + block.size, s1 + block.sum(), s2 + (block * block).sum()
    if n == 0:
        return 0.0
    return float(np.sqrt(max(s2 / n - (s1 / n) ** 2, 0.0)))


def near_copy_distance(x_test: np.ndarray, x_train: np.ndarray, pairs: np.ndarray, spread: float) -> np.ndarray:
    """RMS difference of each ``(test, train)`` pair over ``spread`` (the training set's pixel spread): float64 [P].

    Images of at least ``SHIFT_SIDE`` pixels (after :func:`comparable`) are also compared with the
    training image shifted by one pixel in each direction, on the interior both share, and the smallest
    difference counts: planted copies (audit.data.planting) carry noise of 0.1 x each pixel's spread
    plus such a shift, so they measure about 0.1 (below ``NEAR_COPY``); distinct images measure more.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out = np.empty(len(pairs), np.float64)
    scale = spread if spread > 0 else 1.0
    for start in range(0, len(pairs), _PAIR_CHUNK):
        p = pairs[start:start + _PAIR_CHUNK]
        a, b = comparable(x_test[p[:, 0]]), comparable(x_train[p[:, 1]])
        if a.ndim == 4 and min(a.shape[1:3]) >= SHIFT_SIDE:
            h, w = a.shape[1:3]
            inner = a[:, 1:h - 1, 1:w - 1]
            d2 = np.min([((inner - b[:, 1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx]) ** 2).mean(axis=(1, 2, 3))
                         for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
        else:
            d2 = ((a - b) ** 2).reshape(len(p), -1).mean(axis=1)
        out[start:start + len(p)] = np.sqrt(d2) / scale
    return out
