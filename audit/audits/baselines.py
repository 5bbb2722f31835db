"""Baseline rankings that the datamodel candidates are compared against.

- representation distance: exact cosine nearest neighbours (FAISS ``IndexFlatIP`` on
  L2-normalised features; the caller averages penultimate features over a few models);
- random same-class training examples (brittleness baseline);
- alignment-tolerant pixel matching: a query's shifted and slightly cropped variants, each training
  image scored by its best match (the pixel leakage baseline).
"""

from __future__ import annotations

import numpy as np

from audit.data.moves import ONE_PIXEL_MOVES, shift_images
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


def _check_dimensions(train_dim: int, query_dim: int) -> None:
    if train_dim != query_dim:
        raise AuditError(f"train features have {train_dim} dimensions but query features {query_dim}; compute both "
                         f"with the same models")


def _check_k(k: int, limit: int) -> None:
    if not 1 <= k <= limit:
        raise AuditError(f"k = {k} neighbours requested but only {limit} training examples can be returned; "
                         f"use 1 <= k <= {limit}")


def _exact_index(train: np.ndarray, k: int, limit: int, use_gpu: bool | None):
    """The exact inner-product index of the unit ``train`` rows, once ``1 <= k <= limit`` is checked."""
    _check_k(k, limit)
    index = _flat_ip_index(train.shape[1], use_gpu)
    index.add(train)
    return index


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
    _check_dimensions(train.shape[1], query.shape[1])
    if exclude_self and len(query) != len(train):
        raise AuditError(f"exclude_self needs the queries to be the training set ({len(train)} rows), "
                         f"got {len(query)}")
    index = _exact_index(train, k, len(train) - (1 if exclude_self else 0), use_gpu)
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


def interleave_rankings(first: np.ndarray, second: np.ndarray, k: int) -> np.ndarray:
    """Two top lists per query taken in turn (``first[0], second[0], first[1], ...``), each candidate at its
    first place, -1 (none) skipped: ``[n_q, k]``, -1 padded. Unlike rank fusion, a candidate that only one
    list ranks high keeps its place (half the list is each ranking's own)."""
    a, b = np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)
    if a.ndim != 2 or b.ndim != 2 or len(a) != len(b):
        raise ValueError(f"interleave needs two [n, K] lists of the same length, got {a.shape} and {b.shape}")
    width = max(a.shape[1], b.shape[1])
    pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=-1)  # noqa: E731
    turns = np.stack([pad(a), pad(b)], axis=2).reshape(len(a), 2 * width)
    out = np.full((len(a), k), -1, dtype=np.int64)
    for q, row in enumerate(turns):
        seen = list(dict.fromkeys(j for j in row.tolist() if j >= 0))[:k]
        out[q, :len(seen)] = seen
    return out


def interleaved_scores(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Scores ``[n_q, n]`` that order every candidate as :func:`interleave_rankings` does two full rankings:
    ``1 / min(2·rank_first − 1, 2·rank_second)``, a rank being 1 + how many score higher (ties in the
    candidate's favour) and counting only where that ranking's score is positive; 0 where neither is."""
    def place(s: np.ndarray, offset: int) -> np.ndarray:
        s = np.asarray(s, dtype=np.float64)
        srt = np.sort(s, axis=1)
        rank = np.stack([s.shape[1] - np.searchsorted(r, v, side="right") + 1 for r, v in zip(srt, s)])
        return np.where(s > 0, 2.0 * rank - offset, np.inf)

    key = np.minimum(place(first, 1), place(second, 0))
    return np.where(np.isfinite(key), 1.0 / key, 0.0)


# ----- alignment-tolerant pixel matching -------------------------------------------------
CROP_FRACTION = 0.1  # crops of the variants: about this share of each side (at least one pixel)


def _resize_matrix(src: int, dst: int) -> np.ndarray:
    """Bilinear resampling from ``src`` to ``dst`` samples (pixel centres aligned, edges clamped): ``[dst, src]``."""
    pos = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0.0, src - 1.0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, src - 1)
    frac = pos - lo
    m = np.zeros((dst, src), dtype=np.float32)
    np.add.at(m, (np.arange(dst), lo), 1.0 - frac)
    np.add.at(m, (np.arange(dst), hi), frac)
    return m


def _crops(side: int) -> list[tuple[int, int]]:
    """(start, stop) of the crops along one side: cut about ``CROP_FRACTION``, from either end and the middle."""
    cut = max(1, int(round(CROP_FRACTION * side)))
    starts = sorted({0, cut // 2, cut}) if side - cut >= 2 else []
    return [(s, side - (cut - s)) for s in starts]


def aligned_variants(images: np.ndarray, mirror: bool = False) -> np.ndarray:
    """Versions of images ``[N, H, W, C]`` that undo small misalignments: float32 ``[N, V, H, W, C]``.

    Variant 0 is the image itself; then the eight one-pixel shifts (edge pixels repeated) and
    crops of about a tenth of each side (at least one pixel; from each end and, where the cut
    is two pixels or more, the middle) resized back bilinearly; with ``mirror`` also the image mirrored
    left to right (for data whose classes survive a flip). A near-copy that was shifted,
    cropped or rescaled slightly matches one of them better than the image itself: the pixel
    leakage baseline scores a training image by its best match over the variants.
    """
    x = np.asarray(images, dtype=np.float32)
    n, h, w, c = x.shape
    out = [x]
    out += [shift_images(x, -dy, -dx) for dy, dx in ONE_PIXEL_MOVES]  # the order the variants always had
    for y0, y1 in _crops(h):
        ry = _resize_matrix(y1 - y0, h)
        for x0, x1 in _crops(w):
            rx = _resize_matrix(x1 - x0, w)
            out.append(np.einsum("Hh,nhwc,Ww->nHWc", ry, x[:, y0:y1, x0:x1], rx, optimize=True))
    if mirror:
        out.append(x[:, :, ::-1])
    return np.stack(out, axis=1)


def best_of_variants(scores: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the ``k`` best distinct candidates over its variants' lists, each scored by its best variant.

    ``scores``/``idx`` ``[n, L]`` (all variants' top lists side by side; -1: none). Returns
    ``(scores, idx)`` ``[n, k]``, best first (-1 / -inf padded).
    """
    n, width = idx.shape
    rows = np.repeat(np.arange(n), width)
    s, i = scores.ravel(), idx.ravel()
    valid = i >= 0
    rows, s, i = rows[valid], s[valid], i[valid]
    order = np.lexsort((-s, i, rows))  # by query, then candidate, best score first
    rows, s, i = rows[order], s[order], i[order]
    first = np.ones(len(i), dtype=bool)
    first[1:] = (rows[1:] != rows[:-1]) | (i[1:] != i[:-1])
    rows, s, i = rows[first], s[first], i[first]
    order = np.lexsort((i, -s, rows))  # by query, best score first, ties by index
    rows, s, i = rows[order], s[order], i[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    keep = rank < k
    out_s = np.full((n, k), -np.inf, dtype=np.float32)
    out_i = np.full((n, k), -1, dtype=np.int64)
    out_s[rows[keep], rank[keep]] = s[keep]
    out_i[rows[keep], rank[keep]] = i[keep]
    return out_s, out_i


EXACT_WORK = 2e12  # multiply-adds of an exact search beyond which a CPU pixel search narrows by PCA first
PCA_DIMS = 256  # dimensions of that narrowing
REFINE_FACTOR = 16  # candidates per query and variant it keeps for the exact score: k x this
PCA_TRAIN_ROWS = 20_000  # training rows (a seeded sample) the PCA is fitted on


def _pca_refine_index(train: np.ndarray, seed: int = 0):
    """FAISS: candidates by L2 distance in the first ``PCA_DIMS`` principal components of the unit rows,
    then every candidate scored exactly (``IndexRefineFlat``, L2 on the unit rows: the cosine order)."""
    import faiss

    d = train.shape[1]
    sample = train[np.sort(np.random.default_rng(seed).permutation(len(train))[:PCA_TRAIN_ROWS])].astype(np.float64)
    sample -= sample.mean(0)
    _, vectors = np.linalg.eigh(sample.T @ sample)  # LAPACK's divide and conquer: seconds where FAISS's
    top = np.ascontiguousarray(vectors[:, ::-1][:, :PCA_DIMS].T, dtype=np.float32)  # PCAMatrix took 40 s at d=3,072
    projection = faiss.LinearTransform(d, PCA_DIMS, False)  # no mean: L2 distances do not move with it
    faiss.copy_array_to_vector(top.ravel(), projection.A)
    projection.is_trained = True
    coarse = faiss.IndexPreTransform(projection, faiss.IndexFlatL2(PCA_DIMS))
    index = faiss.IndexRefineFlat(coarse)
    index.k_factor = REFINE_FACTOR
    index.add(train)
    return index


def _inner_products(query: np.ndarray, train: np.ndarray, idx: np.ndarray, rows: int = 1024) -> np.ndarray:
    """``query[r] . train[idx[r, j]]`` float32 [n, k] (-inf where ``idx`` is -1), ``rows`` queries at a time."""
    out = np.full(idx.shape, -np.inf, dtype=np.float32)
    for r0 in range(0, len(idx), rows):
        i = idx[r0:r0 + rows]
        s = np.einsum("nd,nkd->nk", query[r0:r0 + rows], train[np.maximum(i, 0)])
        out[r0:r0 + rows] = np.where(i >= 0, s, -np.inf)
    return out


def nearest_over_variants(train_feats, query_variants, k: int, total: int | None = None,
                          progress: Progress = SILENT, use_gpu: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours of each query, a training example scoring its best match over the
    query's variants. ``query_variants``: an iterable of ``[n_chunk, V, D]`` arrays (chunks of queries, in
    order). Returns ``(scores, idx)`` ``[n_q, k]`` like :func:`nearest_neighbours`.

    Exact (FAISS flat index) on a GPU and wherever the search costs at most ``EXACT_WORK`` multiply-adds
    (assuming 20 variants a query); beyond that on a CPU (CIFAR-10's 10,000 x 19 variants x 50,000 x 3,072:
    about 3e13) each variant's ``k x REFINE_FACTOR`` nearest in a PCA of the training rows are scored
    exactly and the best ``k`` kept: the scores are exact, a neighbour outside the PCA's candidates is
    missed (a near-copy, close in every direction, is not)."""
    import faiss

    train = normalise_rows(train_feats, "train features")
    narrow = (train.shape[1] > PCA_DIMS and len(train) > k * REFINE_FACTOR
              and float(len(train)) * 20 * (total or 0) * train.shape[1] > EXACT_WORK
              and not (use_gpu if use_gpu is not None else _use_gpu(faiss)))
    if narrow:
        _check_k(k, len(train))
        index = _pca_refine_index(train)
    else:
        index = _exact_index(train, k, len(train), use_gpu)
    all_s, all_i = [], []
    what = "aligned pixels, PCA candidates scored exactly" if narrow else "aligned pixels"
    with progress.task(f"nearest neighbours ({what})", total=total, unit="queries") as task:
        for chunk in query_variants:
            n, v, d = chunk.shape
            _check_dimensions(train.shape[1], d)
            q = normalise_rows(chunk.reshape(n * v, d), "query features")
            s, i = index.search(np.ascontiguousarray(q), k)
            if narrow:  # the candidates' exact inner products (an all-zero row has no unit length: L2 would lie)
                s = _inner_products(q, train, i)
            s, i = best_of_variants(s.reshape(n, v * k), i.reshape(n, v * k), k)
            all_s.append(s)
            all_i.append(i)
            task.advance(n)
    if not all_s:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(all_s), np.concatenate(all_i)
