"""Baseline rankings that the datamodel candidates are compared against.

- representation distance: exact cosine nearest neighbours (FAISS ``IndexFlatIP`` on
  L2-normalised features; the caller averages penultimate features over a few models);
- random same-class training examples (brittleness baseline).
"""

from __future__ import annotations

import numpy as np

from audit.errors import AuditError
from audit.progress import SILENT, Progress

_QUERY_CHUNK = 8192
_KEYS_PER_CHUNK = 4_000_000
_GPU_RESOURCES = None


def _check_features(feats, name: str) -> np.ndarray:
    x = np.asarray(feats)
    if x.ndim != 2:
        raise AuditError(f"{name} has shape {x.shape}; expected [n_examples, n_features]")
    if not np.issubdtype(x.dtype, np.number):
        raise AuditError(f"{name} has dtype {x.dtype}; expected numbers")
    x = x.astype(np.float32, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        bad = int(np.argwhere(~finite)[0, 0])
        raise AuditError(f"{name}[{bad}] has NaN or infinite values; recompute the features of that example")
    return x


def normalise_rows(features, name: str = "features") -> np.ndarray:
    """Rows scaled to unit L2 norm (float32, C-contiguous); all-zero rows stay zero."""
    x = _check_features(features, name)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return np.ascontiguousarray(out, dtype=np.float32)


def _use_gpu(faiss) -> bool:
    try:
        return hasattr(faiss, "get_num_gpus") and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # a broken CUDA install must not stop the CPU path
        return False


def _flat_ip_index(dim: int, use_gpu: bool | None):
    import faiss

    cpu = faiss.IndexFlatIP(dim)
    if use_gpu is None:
        use_gpu = _use_gpu(faiss)
    if use_gpu:
        global _GPU_RESOURCES
        try:
            if _GPU_RESOURCES is None:
                _GPU_RESOURCES = faiss.StandardGpuResources()  # kept for the process: the index needs it alive
            return faiss.index_cpu_to_gpu(_GPU_RESOURCES, 0, cpu)
        except Exception:
            pass  # fall back to the exact CPU index
    return cpu


def nearest_neighbours(train_feats, query_feats, k: int, exclude_self: bool = False,
                       use_gpu: bool | None = None, progress: Progress = SILENT) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` cosine neighbours of each query among the training features.

    Returns ``scores`` float32 ``[n_q, k]`` (inner products of unit vectors, descending) and
    ``idx`` int64 ``[n_q, k]``. ``exclude_self``: the queries are the training examples
    themselves (row i = train i) and i is left out of its own list. GPU FAISS is used when
    available (``use_gpu=None``), else the CPU index; both are exact.
    """
    train = normalise_rows(train_feats, "train features")
    query = normalise_rows(query_feats, "query features")
    if train.shape[1] != query.shape[1]:
        raise AuditError(f"train features have {train.shape[1]} dimensions but query features "
                         f"{query.shape[1]}; compute both with the same models")
    if exclude_self and len(query) != len(train):
        raise AuditError(f"exclude_self needs the queries to be the training set ({len(train)} rows), "
                         f"got {len(query)}")
    limit = len(train) - (1 if exclude_self else 0)
    if not 1 <= k <= limit:
        raise AuditError(f"k = {k} neighbours requested but only {limit} training examples can be returned; "
                         f"use 1 <= k <= {limit}")
    index = _flat_ip_index(train.shape[1], use_gpu)
    index.add(train)
    kk = k + 1 if exclude_self else k
    scores = np.empty((len(query), k), dtype=np.float32)
    idx = np.empty((len(query), k), dtype=np.int64)
    with progress.task("nearest neighbours", total=len(query), unit="queries") as task:
        for start in range(0, len(query), _QUERY_CHUNK):
            stop = min(len(query), start + _QUERY_CHUNK)
            s, i = index.search(np.ascontiguousarray(query[start:stop]), kk)
            if exclude_self:
                own = np.arange(start, stop)[:, None]
                keep = i != own
                # drop self where found, otherwise the last (k+1-th) column
                keep[keep.all(axis=1), -1] = False
                s = s[keep].reshape(stop - start, k)
                i = i[keep].reshape(stop - start, k)
            scores[start:stop], idx[start:stop] = s, i
            task.advance(stop - start)
    return scores, idx


def random_same_class(y_train, y_query, k: int, seed: int, exclude_idx=None) -> np.ndarray:
    """``k`` distinct random training indices of each query's class, ``[n_q, k]`` int64.

    Rows are padded with -1 when the class has fewer than ``k`` examples. ``exclude_idx``
    (optional, per query, -1 for none) is a training index to leave out, e.g. the query
    itself when the queries are training examples. Deterministic in ``seed``.
    """
    y_tr = np.asarray(y_train)
    y_q = np.asarray(y_query)
    if y_tr.ndim != 1 or y_q.ndim != 1:
        raise AuditError("y_train and y_query must be 1-D label arrays")
    if k < 1:
        raise AuditError(f"k = {k}; ask for at least one random example per query")
    excl = None
    if exclude_idx is not None:
        excl = np.asarray(exclude_idx, dtype=np.int64)
        if excl.shape != y_q.shape:
            raise AuditError(f"exclude_idx has {excl.size} values for {len(y_q)} queries")
    rng = np.random.default_rng(seed)
    out = np.full((len(y_q), k), -1, dtype=np.int64)
    for c in np.unique(y_q):
        pool = np.flatnonzero(y_tr == c)
        queries = np.flatnonzero(y_q == c)
        if pool.size == 0:
            continue
        take = min(k, pool.size)
        step = max(1, _KEYS_PER_CHUNK // pool.size)
        for start in range(0, len(queries), step):
            q = queries[start:start + step]
            keys = rng.random((len(q), pool.size))
            if excl is not None:
                keys[pool[None, :] == excl[q][:, None]] = np.inf
            part = np.argpartition(keys, take - 1, axis=1)[:, :take] if take < pool.size else \
                np.tile(np.arange(pool.size), (len(q), 1))
            order = np.argsort(np.take_along_axis(keys, part, axis=1), axis=1)
            part = np.take_along_axis(part, order, axis=1)
            chosen = pool[part]
            if excl is not None:
                chosen[np.isinf(np.take_along_axis(keys, part, axis=1))] = -1
                chosen = _compact_left(chosen)
            out[q, :take] = chosen
    return out


def _compact_left(a: np.ndarray) -> np.ndarray:
    """Move the -1 entries of each row to the end, keeping the order of the rest."""
    order = np.argsort(a < 0, axis=1, kind="stable")
    return np.take_along_axis(a, order, axis=1)


def centred_pixels(x) -> np.ndarray:
    """Images (or feature vectors) as rows with each row's mean removed: float32 ``[N, D]``.

    Their cosine similarity (what :func:`nearest_neighbours` computes after normalising) is the
    Pearson correlation of two images' pixels, so a copy with changed brightness or contrast
    scores as high as an exact one; the pixel-space leakage baseline searches these.
    """
    a = np.asarray(x)
    rows = a.reshape(len(a), -1).astype(np.float32)
    return rows - rows.mean(axis=1, keepdims=True)


def fuse_rankings(lists: dict[str, np.ndarray], k: int, c: float = 60.0) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Reciprocal rank fusion of several top lists per query (Cormack et al. 2009).

    ``lists[method]`` ``[n_q, K]`` candidate indices, best first (-1: none). A candidate's fused
    score is the sum over methods of ``1 / (c + rank)``; one that several methods rank high
    comes first. Returns ``idx`` ``[n_q, k]`` (-1 padded), ``scores`` and, per query, for each
    fused candidate the methods whose list holds it (joined by "+").
    """
    names = list(lists)
    n_q = len(next(iter(lists.values()))) if lists else 0
    idx = np.full((n_q, k), -1, dtype=np.int64)
    scores = np.zeros((n_q, k), dtype=np.float32)
    found_by: list[list[str]] = []
    for q in range(n_q):
        total: dict[int, float] = {}
        who: dict[int, list[str]] = {}
        for m in names:
            for rank, j in enumerate(np.asarray(lists[m][q]).tolist(), start=1):
                if j < 0:
                    continue
                total[j] = total.get(j, 0.0) + 1.0 / (c + rank)
                who.setdefault(j, []).append(m)
        best = sorted(total, key=lambda j: (-total[j], j))[:k]
        idx[q, :len(best)] = best
        scores[q, :len(best)] = [total[j] for j in best]
        found_by.append(["+".join(who[j]) for j in best])
    return idx, scores, found_by
