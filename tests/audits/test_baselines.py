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
