"""Geodesic distances for the FMoW leakage audit (paper App. H).

Distances are in miles on the WGS-84 ellipsoid (``geopy.distance.geodesic``). The exact
geodesic is slow (~0.1-0.2 ms a pair), so the nearest training point is found by a
haversine prefilter (scikit-learn ``BallTree``) followed by geopy on the few candidates
that could still be nearest.

Why the prefilter is exact: for any two points, geodesic / haversine (mean radius
3958.7613 mi) lies in [b²/(a·R), a²/(b·R)] ≈ [0.99442, 1.00449] (the extreme radii of
curvature of the ellipsoid over the mean radius). If H is the smallest haversine distance
from a test point, the geodesic-nearest point g has haversine(g) ≤ geodesic(g)/0.99442 ≤
geodesic(h)/0.99442 ≤ H·1.00449/0.99442 ≈ 1.0101·H. Every training point within that band
of H is confirmed with geopy; ``DEFAULT_REL_TOL`` = 2 % leaves a wide margin.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from audit.errors import AuditError
from audit.progress import SILENT, Progress

EARTH_RADIUS_MILES = 3958.7613
DEFAULT_REL_TOL = 0.02
_ABS_TOL_RAD = 1e-9  # ~6 mm: covers rounding for (near-)coincident points
_CHUNK = 512


def _geodesic():
    import geopy.distance

    return geopy.distance.geodesic()  # one instance: its measure() reuses the WGS-84 Geodesic


def _miles(km: float) -> float:
    from geopy import units

    return units.miles(kilometers=km)


def validate_coordinates(lat, lon, name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Return ``lat, lon`` as float64 1-D arrays; AuditError naming the first bad index."""
    label = f"_{name}" if name else ""
    try:
        lat_a = np.asarray(lat, dtype=np.float64)
        lon_a = np.asarray(lon, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise AuditError(f"lat{label}/lon{label} are not numbers ({exc}); pass degrees as floats") from None
    if lat_a.ndim != 1 or lon_a.ndim != 1 or lat_a.shape != lon_a.shape:
        raise AuditError(f"lat{label} has shape {lat_a.shape} and lon{label} {lon_a.shape}; "
                         "they must be 1-D arrays of the same length")
    for arr, what, limit in ((lat_a, "lat", 90.0), (lon_a, "lon", 180.0)):
        bad = ~np.isfinite(arr) | (np.abs(arr) > limit)
        if bad.any():
            i = int(np.argmax(bad))
            raise AuditError(f"{what}{label}[{i}] = {arr[i]!r} is not a finite value in [-{limit:g}, {limit:g}]; "
                             "fix or drop that example's coordinates")
    return lat_a, lon_a


def haversine_miles(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in miles on a sphere of mean Earth radius (broadcasts)."""
    p1, l1, p2, l2 = (np.radians(np.asarray(v, dtype=np.float64)) for v in (lat1, lon1, lat2, lon2))
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
    return 2 * EARTH_RADIUS_MILES * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def geodesic_miles_pairs(lat_a, lon_a, lat_b, lon_b) -> np.ndarray:
    """Exact WGS-84 geodesic miles between ``(lat_a[i], lon_a[i])`` and ``(lat_b[i], lon_b[i])``."""
    lat_a, lon_a = validate_coordinates(lat_a, lon_a, "a")
    lat_b, lon_b = validate_coordinates(lat_b, lon_b, "b")
    if lat_a.shape != lat_b.shape:
        raise AuditError(f"{len(lat_a)} points in a but {len(lat_b)} in b; pass one pair per index")
    geo = _geodesic()
    return np.array([_miles(geo.measure((float(a), float(b)), (float(c), float(d))))
                     for a, b, c, d in zip(lat_a, lon_a, lat_b, lon_b)], dtype=np.float64)


def nearest_train_distance_miles(lat_test, lon_test, lat_train, lon_train, progress: Progress = SILENT,
                                 rel_tol: float = DEFAULT_REL_TOL) -> tuple[np.ndarray, np.ndarray]:
    """Geodesic miles from each test point to its geodesic-nearest training point, and that point's index.

    Equal to the brute-force geopy minimum (ties go to the lowest training index); only the
    training points whose haversine distance is within ``rel_tol`` of the best are measured
    with geopy.
    """
    from sklearn.neighbors import BallTree

    lat_q, lon_q = validate_coordinates(lat_test, lon_test, "test")
    lat_t, lon_t = validate_coordinates(lat_train, lon_train, "train")
    if len(lat_t) == 0:
        raise AuditError("there are no training coordinates; the nearest-distance search needs at least one")
    n = len(lat_q)
    dist = np.empty(n, dtype=np.float64)
    nearest = np.empty(n, dtype=np.int64)
    if n == 0:
        return dist, nearest
    tree = BallTree(np.radians(np.column_stack([lat_t, lon_t])), metric="haversine")
    geo = _geodesic()
    with progress.task("nearest training location", total=n, unit="points") as task:
        for start in range(0, n, _CHUNK):
            sl = slice(start, min(n, start + _CHUNK))
            q = np.radians(np.column_stack([lat_q[sl], lon_q[sl]]))
            best, _ = tree.query(q, k=1)
            radius = best[:, 0] * (1.0 + rel_tol) + _ABS_TOL_RAD
            cands = tree.query_radius(q, r=radius)
            for row, idx in enumerate(cands):
                i = start + row
                idx = np.sort(idx)  # ascending, so ties keep the lowest index like np.argmin
                p = (float(lat_q[i]), float(lon_q[i]))
                best_d, best_j = np.inf, -1
                for j in idx:
                    d = _miles(geo.measure(p, (float(lat_t[j]), float(lon_t[j]))))
                    if d < best_d:
                        best_d, best_j = d, int(j)
                dist[i], nearest[i] = best_d, best_j
            task.advance(sl.stop - sl.start)
    return dist, nearest


def _check_candidates(cand_idx, n_test: int, n_train: int) -> np.ndarray:
    cand = np.asarray(cand_idx)
    if cand.ndim != 2 or cand.shape[0] != n_test:
        raise AuditError(f"candidate indices have shape {cand.shape}; expected [{n_test} test examples, k]")
    if cand.size and not np.issubdtype(cand.dtype, np.integer):
        raise AuditError(f"candidate indices have dtype {cand.dtype}; expected integer training indices")
    cand = cand.astype(np.int64, copy=False)
    bad = (cand < -1) | (cand >= n_train)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise AuditError(f"candidate [{i}, {j}] = {int(cand[i, j])} is not a training index 0..{n_train - 1} "
                         "(or -1 for none); the candidates belong to a different dataset")
    return cand


def leakage_efficacy(cand_idx, lat_test, lon_test, lat_train, lon_train, d_grid: Sequence[float],
                     nearest_miles: np.ndarray | None = None, progress: Progress = SILENT) -> dict:
    """Efficacy of candidate training images at finding geographic leakage, per distance ``d``.

    ground_truth(d): test images whose geodesic-nearest training image is within ``d`` miles;
    found(d): those with at least one candidate within ``d``; efficacy = found / ground_truth
    (``None`` where the ground truth is empty). ``frac_with_candidate`` is the fraction of all
    test images with a candidate within ``d``. ``cand_idx`` entries of -1 are ignored.
    ``nearest_miles`` (from :func:`nearest_train_distance_miles`) is computed if not given.
    """
    lat_q, lon_q = validate_coordinates(lat_test, lon_test, "test")
    lat_t, lon_t = validate_coordinates(lat_train, lon_train, "train")
    cand = _check_candidates(cand_idx, len(lat_q), len(lat_t))
    grid = np.asarray(d_grid, dtype=np.float64).ravel()
    if grid.size == 0 or not np.isfinite(grid).all() or (grid < 0).any():
        raise AuditError("the distance grid must be a non-empty list of finite distances >= 0 miles")
    if nearest_miles is None:
        nearest_miles, _ = nearest_train_distance_miles(lat_q, lon_q, lat_t, lon_t, progress=progress)
    nearest_miles = np.asarray(nearest_miles, dtype=np.float64)
    if nearest_miles.shape != lat_q.shape:
        raise AuditError(f"nearest_miles has {nearest_miles.size} values for {len(lat_q)} test examples")

    # each distinct (test, train) pair measured once
    rows, cols = np.nonzero(cand >= 0)
    pairs = np.unique(np.column_stack([rows, cand[rows, cols]]), axis=0) if rows.size else np.empty((0, 2), np.int64)
    cand_min = np.full(len(lat_q), np.inf)
    geo = _geodesic()
    with progress.task("candidate distances", total=len(pairs), unit="pairs") as task:
        for i, j in pairs:
            d = _miles(geo.measure((float(lat_q[i]), float(lon_q[i])), (float(lat_t[j]), float(lon_t[j]))))
            if d < cand_min[i]:
                cand_min[i] = d
            task.advance(1)

    out: dict = {"d_miles": grid.tolist(), "n_test": int(len(lat_q)), "k": int(cand.shape[1]),
                 "n_ground_truth": [], "n_found": [], "efficacy": [], "frac_with_candidate": []}
    for d in grid:
        gt = nearest_miles <= d
        hit = cand_min <= d
        n_gt, n_found = int(gt.sum()), int((gt & hit).sum())
        out["n_ground_truth"].append(n_gt)
        out["n_found"].append(n_found)
        out["efficacy"].append(n_found / n_gt if n_gt else None)
        out["frac_with_candidate"].append(float(hit.mean()) if len(hit) else None)
    out["nearest_train_miles"] = nearest_miles.tolist()
    out["nearest_candidate_miles"] = [float(v) if np.isfinite(v) else None for v in cand_min]
    return out
