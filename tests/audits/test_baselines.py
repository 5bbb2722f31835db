"""FAISS representation baseline and random same-class baseline (audit/audits/baselines.py)."""

from __future__ import annotations

import numpy as np
import pytest

from audit.audits import baselines
from audit.errors import AuditError


def brute(train, query, k, exclude_self=False):
    t = train / np.linalg.norm(train, axis=1, keepdims=True)
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    s = q @ t.T
    if exclude_self:
        np.fill_diagonal(s, -np.inf)
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, axis=1), idx


def test_normalise_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    n = baselines.normalise_rows(x)
    assert n.dtype == np.float32 and n.flags.c_contiguous
    assert np.allclose(n, [[0.6, 0.8], [0, 0], [1, 0]])


def test_faiss_matches_numpy_brute_force():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(600, 24))
    query = rng.normal(size=(70, 24)) * 3.0          # scale must not matter (cosine)
    scores, idx = baselines.nearest_neighbours(train, query, k=7, use_gpu=False)
    ref_s, ref_i = brute(train, query, 7)
    assert idx.dtype == np.int64 and scores.shape == (70, 7)
    assert np.array_equal(idx, ref_i)
    assert np.allclose(scores, ref_s, atol=1e-5)


def test_exclude_self():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(300, 16))
    scores, idx = baselines.nearest_neighbours(train, train, k=5, exclude_self=True, use_gpu=False)
    assert not (idx == np.arange(300)[:, None]).any()
    ref_s, ref_i = brute(train, train, 5, exclude_self=True)
    assert np.array_equal(idx, ref_i) and np.allclose(scores, ref_s, atol=1e-5)


@pytest.mark.skipif(not baselines._use_gpu(__import__("faiss")), reason="no FAISS GPU")
def test_gpu_matches_cpu():
    rng = np.random.default_rng(2)
    train, query = rng.normal(size=(2000, 64)), rng.normal(size=(100, 64))
    s_cpu, i_cpu = baselines.nearest_neighbours(train, query, k=10, use_gpu=False)
    s_gpu, i_gpu = baselines.nearest_neighbours(train, query, k=10, use_gpu=True)
    assert np.array_equal(i_cpu, i_gpu) and np.allclose(s_cpu, s_gpu, atol=1e-4)


@pytest.mark.parametrize("train,query,k,kw,needle", [
    (np.ones((5, 3)), np.ones((2, 4)), 1, {}, "dimensions"),
    (np.ones((5, 3)), np.ones((2, 3)), 6, {}, "k = 6"),
    (np.ones((5, 3)), np.ones((5, 3)), 5, {"exclude_self": True}, "k = 5"),
    (np.ones((5, 3)), np.ones((2, 3)), 1, {"exclude_self": True}, "exclude_self"),
    (np.array([[1.0, 2.0], [np.nan, 1.0]]), np.ones((1, 2)), 1, {}, r"train features\[1\]"),
])
def test_bad_inputs(train, query, k, kw, needle):
    with pytest.raises(AuditError, match=needle):
        baselines.nearest_neighbours(train, query, k, use_gpu=False, **kw)


def test_random_same_class():
    rng = np.random.default_rng(3)
    y_train = np.repeat([0, 1, 2], [40, 30, 3])
    y_query = rng.integers(0, 4, 200)               # class 3 has no training examples
    idx = baselines.random_same_class(y_train, y_query, k=5, seed=7)
    assert idx.shape == (200, 5) and idx.dtype == np.int64
    for row, c in zip(idx, y_query):
        valid = row[row >= 0]
        assert len(valid) == min(5, int((y_train == c).sum()))
        assert len(set(valid.tolist())) == len(valid)
        assert (y_train[valid] == c).all()
        assert (row[len(valid):] == -1).all()
    assert np.array_equal(idx, baselines.random_same_class(y_train, y_query, k=5, seed=7))
    assert not np.array_equal(idx, baselines.random_same_class(y_train, y_query, k=5, seed=8))
    # draws are spread over the class, not always the same few
    assert len(np.unique(idx[y_query == 0])) > 30


def test_random_same_class_excludes_the_query_itself():
    y_train = np.array([0, 0, 0, 1, 1])
    idx = baselines.random_same_class(y_train, y_train, k=3, seed=0, exclude_idx=np.arange(5))
    for i, row in enumerate(idx):
        assert i not in row.tolist()
    assert (idx[:3, 2] == -1).all() and sorted(idx[0, :2].tolist()) == [1, 2]
    assert (idx[3, 1:] == -1).all() and idx[3, 0] == 4


# ----- alignment-tolerant pixel matching -------------------------------------------------
def test_aligned_variants_hold_the_image_every_one_pixel_shift_and_resized_crops():
    from audit.data.planting import _shift_one_pixel

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 8, 8, 2)).astype(np.float32)
    v = baselines.aligned_variants(x)
    # itself, 8 shifts, 2 x 2 crops (a cut of one pixel from either end of each side)
    assert v.shape == (3, 1 + 8 + 4, 8, 8, 2)
    assert np.array_equal(v[:, 0], x)
    for img, variants in zip(x, v):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = _shift_one_pixel(img, dy, dx)
                assert any(np.array_equal(shifted, u) for u in variants[:9])
    assert baselines.aligned_variants(x, mirror=True).shape[1] == 14
    assert np.array_equal(baselines.aligned_variants(x, mirror=True)[:, -1], x[:, :, ::-1])
    assert baselines._crops(32) == [(0, 29), (1, 30), (3, 32)]  # a cut of three pixels: either end, the middle
    assert baselines.aligned_variants(np.zeros((1, 32, 32, 3))).shape[1] == 1 + 8 + 3 * 3


def test_resize_matrix_is_identity_at_equal_size_and_averages_otherwise():
    assert np.allclose(baselines._resize_matrix(5, 5), np.eye(5))
    m = baselines._resize_matrix(7, 8)
    assert m.shape == (8, 7) and np.allclose(m.sum(axis=1), 1.0) and (m >= 0).all()
    ramp = np.arange(7, dtype=np.float32)
    up = m @ ramp
    assert up[0] == 0 and up[-1] == 6 and (np.diff(up) > 0).all()  # a ramp stays a ramp, edges clamped


def test_best_of_variants_keeps_each_candidate_once_at_its_best_score():
    scores = np.array([[0.9, 0.5, 0.95, 0.1], [0.3, 0.2, 0.8, 0.7]], dtype=np.float32)
    idx = np.array([[4, 2, 2, 7], [1, -1, 1, 3]])
    s, i = baselines.best_of_variants(scores, idx, 3)
    assert i.tolist() == [[2, 4, 7], [1, 3, -1]]
    assert np.allclose(s[0], [0.95, 0.9, 0.1]) and np.allclose(s[1, :2], [0.8, 0.7]) and s[1, 2] == -np.inf


def test_nearest_over_variants_equals_brute_force_maximum():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(50, 6)).astype(np.float32)
    queries = rng.normal(size=(9, 4, 6)).astype(np.float32)
    s, i = baselines.nearest_over_variants(train, [queries[:5], queries[5:]], 5, total=9)
    t = train / np.linalg.norm(train, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=2, keepdims=True)
    best = np.einsum("nvd,td->nvt", q, t).max(axis=1)
    want = np.argsort(-best, axis=1, kind="stable")[:, :5]
    assert np.array_equal(i, want)
    assert np.allclose(s, np.take_along_axis(best, want, axis=1), atol=1e-5)


def test_a_large_cpu_search_narrows_by_pca_and_still_finds_near_copies(monkeypatch):
    """Past EXACT_WORK the pixel search takes PCA candidates and scores them exactly: a near-copy is found,
    its score is the exact cosine, and on images with structure the top lists match the exact search."""
    rng = np.random.default_rng(2)
    n_train, d = 3000, 300
    basis = rng.normal(size=(40, d))  # images with a low-dimensional structure, as pixels have
    train = (rng.normal(size=(n_train, 40)) @ basis + 0.3 * rng.normal(size=(n_train, d))).astype(np.float32)
    copies = np.arange(0, 60, 3)
    queries = train[copies] + 0.05 * rng.normal(size=(len(copies), d)).astype(np.float32)
    variants = np.stack([queries, np.roll(queries, 1, axis=1)], axis=1)
    exact_s, exact_i = baselines.nearest_over_variants(train, [variants], 5, total=len(copies))
    monkeypatch.setattr(baselines, "EXACT_WORK", 1.0)
    monkeypatch.setattr(baselines, "PCA_DIMS", 32)
    s, i = baselines.nearest_over_variants(train, [variants], 5, total=len(copies))
    assert np.array_equal(i[:, 0], copies)  # each near-copy is its query's best match
    assert np.allclose(s[:, 0], exact_s[:, 0], atol=1e-5)  # with the exact score
    assert (i == exact_i).mean() > 0.9


def test_the_narrowed_search_scores_an_all_zero_row_as_the_exact_search_does(monkeypatch):
    rng = np.random.default_rng(3)
    train = rng.normal(size=(400, 40)).astype(np.float32)
    train[7] = 0.0  # a constant image's centred pixels
    queries = rng.normal(size=(6, 2, 40)).astype(np.float32)
    exact_s, exact_i = baselines.nearest_over_variants(train, [queries], 3, total=6)
    monkeypatch.setattr(baselines, "EXACT_WORK", 1.0)
    monkeypatch.setattr(baselines, "PCA_DIMS", 8)
    s, i = baselines.nearest_over_variants(train, [queries], 3, total=6)
    assert not (i == 7).any()  # an L2-derived score would put it first (0.5) for every query
    in_both = i == exact_i
    assert np.allclose(s[in_both], exact_s[in_both], atol=1e-5)


def test_interleave_takes_the_lists_in_turn_each_candidate_at_its_first_place():
    first = np.array([[4, 2, 7, -1], [-1, -1, -1, -1], [1, 2, 3, 4]])
    second = np.array([[2, 9, -1], [5, 6, -1], [1, 2, 3]])
    out = baselines.interleave_rankings(first, second, 4)
    assert out.tolist() == [[4, 2, 9, 7], [5, 6, -1, -1], [1, 2, 3, 4]]
    assert baselines.interleave_rankings(first, second, 8)[0].tolist() == [4, 2, 9, 7, -1, -1, -1, -1]
    with pytest.raises(ValueError, match="same length"):
        baselines.interleave_rankings(first, second[:2], 4)


def test_interleaved_scores_order_every_candidate_as_the_interleaved_lists():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 40)), rng.normal(size=(5, 40))  # distinct scores: no ties
    scores = baselines.interleaved_scores(a, b)

    def positive_order(s: np.ndarray) -> np.ndarray:
        order = np.argsort(-s, axis=1, kind="stable")
        return np.where(np.take_along_axis(s, order, axis=1) > 0, order, -1)

    lists = baselines.interleave_rankings(positive_order(a), positive_order(b), 40)
    for q in range(5):
        listed = lists[q][lists[q] >= 0]
        assert np.all(np.diff(scores[q, listed]) < 0)  # the list's order, best first
        assert set(np.flatnonzero(scores[q] > 0)) == set(listed.tolist())  # 0 where neither score is positive
