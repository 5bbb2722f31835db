"""Nearest-training-location speed: haversine prefilter + geopy confirmation vs the plain geopy loop.

    python benchmarks/geo_nearest.py [--test 3138] [--train 21404] [--sites 300] [--slice 5]

Synthetic points shaped like FMoW 2012 (3,138 test x 21,404 train): a few hundred sites
worldwide (including one near a pole and one on the antimeridian), each with many images
within a few miles, a share of test images at exactly a training image's coordinates, and
some test-only sites whose nearest training image is far away.
The plain loop (``geopy.distance.geodesic(p, q).miles`` for every pair) is timed on a
slice of test points against all training points and extrapolated; the fast path runs on
every test point. Exits non-zero if the two disagree on the slice.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.audits.geo import DEFAULT_REL_TOL, nearest_train_distance_miles  # noqa: E402


def synthetic(n_test: int, n_train: int, n_sites: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    n_all = n_sites + n_sites // 5                       # the extra fifth: sites seen only at test time
    site_lat = np.concatenate([[89.5, 64.0], np.degrees(np.arcsin(rng.uniform(-0.9, 0.95, n_all - 2)))])
    site_lon = np.concatenate([[10.0, 179.98], rng.uniform(-180, 180, n_all - 2)])
    popularity = rng.zipf(1.6, n_all).astype(float)

    def draw(n: int, sites: int) -> tuple[np.ndarray, np.ndarray]:
        p = popularity[:sites] / popularity[:sites].sum()
        s = rng.choice(sites, size=n, p=p)
        spread = rng.choice([0.002, 0.01, 0.04], size=n, p=[0.4, 0.4, 0.2])     # ~0.1 to ~3 miles
        lat = np.clip(site_lat[s] + rng.normal(0, 1, n) * spread, -90, 90)
        lon = (site_lon[s] + rng.normal(0, 1, n) * spread + 180) % 360 - 180
        return lat, lon

    lat_t, lon_t = draw(n_train, n_sites)
    lat_q, lon_q = draw(n_test, n_all)
    dup = rng.random(n_test) < 0.3                       # re-imaged locations: identical coordinates
    src = rng.integers(0, n_train, dup.sum())
    lat_q[dup], lon_q[dup] = lat_t[src], lon_t[src]
    return lat_q, lon_q, lat_t, lon_t


def candidate_counts(lat_q, lon_q, lat_t, lon_t) -> np.ndarray:
    """How many geopy calls the fast path makes per test point."""
    from sklearn.neighbors import BallTree

    tree = BallTree(np.radians(np.column_stack([lat_t, lon_t])), metric="haversine")
    q = np.radians(np.column_stack([lat_q, lon_q]))
    best, _ = tree.query(q, k=1)
    return tree.query_radius(q, r=best[:, 0] * (1 + DEFAULT_REL_TOL) + 1e-9, count_only=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test", type=int, default=3138)
    ap.add_argument("--train", type=int, default=21404)
    ap.add_argument("--sites", type=int, default=300)
    ap.add_argument("--slice", type=int, default=5, help="test points timed with the plain geopy loop")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import geopy.distance

    lat_q, lon_q, lat_t, lon_t = synthetic(args.test, args.train, args.sites, args.seed)
    print(f"points: {args.test:,} test x {args.train:,} train around {args.sites} sites "
          f"({args.test * args.train:,} pairs)")

    t0 = time.perf_counter()
    dist, idx = nearest_train_distance_miles(lat_q, lon_q, lat_t, lon_t)
    fast_s = time.perf_counter() - t0
    counts = candidate_counts(lat_q, lon_q, lat_t, lon_t)

    # the slice: evenly spaced test points plus those with the most geopy candidates (hardest for the band)
    hardest = np.argsort(-counts, kind="stable")[: args.slice // 2]
    spaced = np.linspace(0, args.test - 1, args.slice - len(hardest)).astype(int)
    sl = np.unique(np.concatenate([spaced, hardest]))
    t0 = time.perf_counter()
    brute = np.array([[geopy.distance.geodesic((lat_q[i], lon_q[i]), (a, b)).miles for a, b in zip(lat_t, lon_t)]
                      for i in sl])
    slow_s = time.perf_counter() - t0
    per_pair = slow_s / brute.size
    slow_full = per_pair * args.test * args.train
    ok = np.array_equal(brute.min(axis=1), dist[sl]) and np.array_equal(brute.argmin(axis=1), idx[sl])

    print(f"plain geopy loop : {brute.size:,} pairs in {slow_s:.2f} s = {per_pair * 1e6:.1f} us/pair; "
          f"all {args.test:,} test points ~ {slow_full:,.0f} s ({slow_full / 3600:.2f} h, extrapolated)")
    print(f"fast (BallTree + geopy on candidates): {fast_s:.2f} s for all test points = "
          f"{fast_s / args.test * 1e3:.2f} ms/point = {fast_s / (args.test * args.train) * 1e9:.1f} ns/pair; "
          f"geopy calls per point: mean {counts.mean():.1f}, median {np.median(counts):.0f}, max {counts.max()}")
    print(f"speed-up: {slow_full / fast_s:,.0f}x")
    print(f"nearest distance: median {np.median(dist):.3f} mi, {np.mean(dist == 0):.0%} at 0, "
          f"{np.mean(dist <= 5):.0%} within 5 mi, max {dist.max():,.0f} mi")
    print(f"slice of {len(sl)} test points equal to brute force (distance and index): {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
