"""Datamodel leakage candidates, overlap, planted duplicates (audit/audits/leakage.py)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from audit.audits import leakage
from audit.audits.baselines import nearest_neighbours
from audit.errors import AuditError
from tests.conftest import FIXTURES


def test_candidates_top_and_bottom():
    n_train = 12
    w = np.zeros((n_train + 2, n_train), np.float32)          # train targets first, then 2 test targets
    w[n_train] = [0.5, -0.2, 0.9, 0.0, 0.1, -0.7, 0.3, 0.2, -0.1, 0.0, 0.4, -0.3]
    w[n_train + 1, [3, 7]] = 1.0                               # a tie at the top, zeros elsewhere
    w[n_train + 1, 5] = -1.0
    out = leakage.datamodel_candidates(w, np.array([n_train, n_train + 1]), k=4)
    assert out["top_idx"][0].tolist() == [2, 0, 10, 6]
    assert out["top_w"][0].tolist() == pytest.approx([0.9, 0.5, 0.4, 0.3])
    assert out["annot_idx"][0].tolist() == [2, 0, 10, 6, 7, 5, 11, 1, 8, 3]
    assert out["annot_w"][0, 5:].tolist() == pytest.approx([-0.7, -0.3, -0.2, -0.1, 0.0])
    assert out["top_idx"][1].tolist() == [3, 7, 0, 1]           # ties -> lower index
    assert out["annot_idx"][1, 5:].tolist() == [5, 0, 1, 2, 4]
    pos = leakage.datamodel_candidates(w, [n_train + 1], k=4, positive_only=True)
    assert pos["top_idx"][0].tolist() == [3, 7, -1, -1]


def test_topk_matches_stable_argsort_on_many_ties():
    rng = np.random.default_rng(0)
    rows = rng.integers(-2, 3, (40, 60)).astype(np.float32)
    for k in (1, 7, 60):
        idx, vals = leakage._topk_stable(rows, k)
        assert np.array_equal(idx, np.argsort(-rows, axis=1, kind="stable")[:, :k])


def test_candidates_bad_input():
    with pytest.raises(AuditError, match="test row 5"):
        leakage.datamodel_candidates(np.zeros((3, 20)), [5])
    w = np.zeros((3, 20))
    w[2, 4] = np.nan
    with pytest.raises(AuditError, match="datamodel row 2"):
        leakage.datamodel_candidates(w, [2])


def test_table_and_writers(tmp_path):
    idx = np.array([[4, 2], [1, -1]])
    w = np.array([[0.5, 0.25], [0.125, 0.0]])
    rows = leakage.candidates_table(np.array([10, 11]), idx, w)
    assert rows == [{"test_index": 10, "train_index": 4, "rank": 1, "weight": 0.5},
                    {"test_index": 10, "train_index": 2, "rank": 2, "weight": 0.25},
                    {"test_index": 11, "train_index": 1, "rank": 1, "weight": 0.125}]
    csv_path, json_path = leakage.write_candidates(tmp_path / "audits" / "leakage.v1_candidates", rows)
    assert csv_path.name == "leakage.v1_candidates.csv" and json_path.name == "leakage.v1_candidates.json"
    with open(csv_path, newline="") as fh:
        back = list(csv.DictReader(fh))
    assert [(int(r["test_index"]), int(r["train_index"]), int(r["rank"]), float(r["weight"])) for r in back] == \
        [(10, 4, 1, 0.5), (10, 2, 2, 0.25), (11, 1, 1, 0.125)]
    assert json.loads(json_path.read_text()) == rows
    assert sorted(p.name for p in csv_path.parent.iterdir()) == [csv_path.name, json_path.name]  # no temp files


def test_candidate_overlap():
    a = np.array([[1, 2, 3], [4, 5, 6]])
    b = np.array([[3, 2, 9, 11], [7, 8, -1, 4]])             # truncated to k = 3: 4 drops out of row 1
    out = leakage.candidate_overlap(a, b)
    assert out["k"] == 3 and out["n"] == 2
    assert out["mean_jaccard"] == pytest.approx((2 / 4 + 0 / 5) / 2)
    assert out["mean_overlap_at_k"] == pytest.approx((2 / 3 + 0) / 2)
    assert out["frac_any_overlap"] == 0.5
    assert leakage.candidate_overlap(a, a)["mean_jaccard"] == 1.0


def test_plant_duplicates_and_recall_known_answer():
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (200, 8, 8, 3), dtype=np.uint8)
    y_train = rng.integers(0, 10, 200)
    x_test = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    y_test = rng.integers(0, 10, 50)
    x_new, y_new, pairs = leakage.plant_duplicates(x_train, y_train, x_test, y_test, n=10, seed=3, noise=0.1)
    assert x_new.shape == (210, 8, 8, 3) and x_new.dtype == np.uint8 and len(y_new) == 210
    assert np.array_equal(x_new[:200], x_train)
    assert pairs.shape == (10, 2) and pairs[:, 1].tolist() == list(range(200, 210))
    assert len(set(pairs[:, 0].tolist())) == 10
    for t, j in pairs:
        assert y_new[j] == y_test[t]
        assert not np.array_equal(x_new[j], x_test[t])
    again = leakage.plant_duplicates(x_train, y_train, x_test, y_test, n=10, seed=3, noise=0.1)
    assert np.array_equal(again[0], x_new) and np.array_equal(again[2], pairs)

    # a pixel-space nearest-neighbour ranking finds every planted copy (noise-only copies)
    x_new, _, pairs = leakage.plant_duplicates(x_train, y_train, x_test, y_test, n=10, seed=3, shift=False)
    _, cand = nearest_neighbours(x_new.reshape(210, -1) - 127.5, x_test.reshape(50, -1) - 127.5, k=10,
                                 use_gpu=False)
    rec = leakage.planted_recall(cand, pairs)
    assert rec["recall_at_k"] == {"1": 1.0, "5": 1.0, "10": 1.0} and rec["rank"] == [1] * 10


def test_plant_noise_follows_each_pixels_spread_and_shift_only_large_images():
    rng = np.random.default_rng(1)
    x_train = rng.integers(0, 256, (100, 8, 8, 1), dtype=np.uint8)
    x_train[:, 0, :] = 0                                    # a border that never varies
    x_test = x_train[:20].copy()
    y = np.zeros(100, np.int64)
    x_new, _, pairs = leakage.plant_duplicates(x_train, y, x_test, y[:20], n=20, seed=0, noise=0.2)
    copies, originals = x_new[pairs[:, 1]].astype(float), x_test[pairs[:, 0]].astype(float)
    assert (copies[:, 0, :] == 0).all()                     # untouched: no noise where the data has no spread
    diff = (copies - originals)[:, 1:].ravel()              # 8x8: no shift by default, so a pure noise difference
    sigma = 0.2 * x_train[:, 1:].astype(float).std(axis=0).mean()
    assert 0.8 * sigma < diff[np.abs(originals[:, 1:].ravel() - 127) < 90].std() < 1.2 * sigma
    big = rng.integers(0, 256, (30, 16, 16, 3), dtype=np.uint8)
    no_noise = {"noise": 0.0, "seed": 0, "n": 10}
    shifted, _, p = leakage.plant_duplicates(big, np.zeros(30), big, np.zeros(30), **no_noise)
    assert sum(not np.array_equal(shifted[j], big[t]) for t, j in p) >= 5   # most of 9 moves are not (0, 0)
    exact, _, p = leakage.plant_duplicates(big, np.zeros(30), big, np.zeros(30), shift=False, **no_noise)
    assert all(np.array_equal(exact[j], big[t]) for t, j in p)
    with pytest.raises(AuditError, match="noise = -1"):
        leakage.plant_duplicates(big, np.zeros(30), big, np.zeros(30), n=1, seed=0, noise=-1)


def test_planted_recall_by_hand():
    cand = np.full((5, 10), 99)
    cand[0, 0] = 100          # rank 1
    cand[2, 3] = 101          # rank 4
    pairs = np.array([[0, 100], [2, 101], [4, 102]])          # the third copy is missed
    rec = leakage.planted_recall(cand, pairs)
    assert rec["rank"] == [1, 4, None]
    assert rec["recall_at_k"] == pytest.approx({"1": 1 / 3, "5": 2 / 3, "10": 2 / 3})
    with pytest.raises(AuditError, match="recall@20"):
        leakage.planted_recall(cand, pairs, ks=(20,))


# ----- the near-copy verdict -------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["digits", f"cifar10:{FIXTURES / 'cifar10' / 'cifar-10-batches-py'}"])
def test_planted_copies_measure_as_near_copies_and_distinct_images_do_not(spec):
    from audit.audits.leakage import NEAR_COPY, POSSIBLE_COPY, near_copy_distance, pixel_spread
    from audit.data import load_dataset

    ds = load_dataset(spec)
    spread = pixel_spread(ds.x_train)
    assert np.isclose(spread, ds.x_train.astype(np.float64).std())
    x_new, _, pairs = leakage.plant_duplicates(ds.x_train, ds.y_train, ds.x_test, ds.y_test, min(40, ds.n_test), seed=0)
    copies = near_copy_distance(ds.x_test, x_new, pairs, spread)
    assert copies.max() <= NEAR_COPY  # noise of 0.1 x each pixel's spread, shifted by a pixel on CIFAR
    rng = np.random.default_rng(0)
    other = np.column_stack([rng.integers(0, ds.n_test, 300), rng.integers(0, ds.n_train, 300)])
    assert near_copy_distance(ds.x_test, ds.x_train, other, spread).min() > POSSIBLE_COPY


def test_near_copy_distance_forgives_a_one_pixel_shift_and_compares_large_images_reduced():
    from audit.audits.leakage import near_copy_distance

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (2, 20, 20, 3)).astype(np.uint8)
    shifted = np.roll(img, 1, axis=2)  # the interior is the same image one pixel over
    assert near_copy_distance(img, shifted, np.array([[0, 0], [1, 1], [0, 1]]), 80.0)[:2].max() == 0
    small = rng.integers(0, 256, (1, 8, 8, 1)).astype(np.uint8)
    assert near_copy_distance(small, np.roll(small, 1, axis=2), np.array([[0, 0]]), 80.0)[0] > 0  # 8x8: no shift
    big = rng.integers(0, 256, (1, 96, 96, 3)).astype(np.uint8)
    d = near_copy_distance(big, np.roll(big, 1, axis=1), np.array([[0, 0]]), float(big.std()))
    assert 0 < d[0] < near_copy_distance(big, big[:, ::-1], np.array([[0, 0]]), float(big.std()))[0]
