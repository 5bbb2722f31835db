"""Geodesic nearest distances and leakage efficacy (audit/audits/geo.py)."""

from __future__ import annotations

import math

import geopy.distance
import numpy as np
import pytest

from audit.audits import geo
from audit.errors import AuditError


def brute_force(lat_q, lon_q, lat_t, lon_t):
    """The plain geopy answer: every pair, argmin (ties -> lowest index)."""
    d = np.array([[geopy.distance.geodesic((a, b), (c, e)).miles for c, e in zip(lat_t, lon_t)]
                  for a, b in zip(lat_q, lon_q)])
    return d.min(axis=1), d.argmin(axis=1)


def wrap_lon(lon):
    return (np.asarray(lon) + 180.0) % 360.0 - 180.0


def clustered_points(rng, n_sites, n, spread_deg):
    sites_lat = np.concatenate([[89.9, -89.95, 0.0, 45.0], rng.uniform(-80, 80, n_sites - 4)])
    sites_lon = np.concatenate([[0.0, 120.0, 179.99, -179.99], rng.uniform(-180, 180, n_sites - 4)])
    s = rng.integers(0, n_sites, n)
    lat = np.clip(sites_lat[s] + rng.normal(0, spread_deg, n), -90, 90)
    lon = wrap_lon(sites_lon[s] + rng.normal(0, spread_deg, n))
    return lat, lon


def test_haversine_known_values_and_broadcasting():
    one_degree = 2 * math.pi * geo.EARTH_RADIUS_MILES / 360
    assert geo.haversine_miles(0, 0, 0, 1) == pytest.approx(one_degree)
    assert geo.haversine_miles(10, 179.5, 10, -179.5) == pytest.approx(geo.haversine_miles(10, 0, 10, 1))
    d = geo.haversine_miles(np.zeros((3, 1)), 0, 0, np.array([0.0, 1.0, 2.0]))
    assert d.shape == (3, 3) and d[0, 0] == 0


def test_nearest_equals_bruteforce_geopy_on_clustered_random_points():
    rng = np.random.default_rng(0)
    lat_t, lon_t = clustered_points(rng, 12, 160, 0.05)        # many training points a few miles apart
    lat_q, lon_q = clustered_points(rng, 12, 40, 0.05)
    lat_q[:5], lon_q[:5] = lat_t[:5], lon_t[:5]                  # exact duplicates -> distance 0
    lat_t[-1], lon_t[-1] = lat_t[0], lon_t[0]                    # a tie: lowest index must win
    d, idx = geo.nearest_train_distance_miles(lat_q, lon_q, lat_t, lon_t)
    ref_d, ref_idx = brute_force(lat_q, lon_q, lat_t, lon_t)
    assert np.array_equal(d, ref_d)
    assert np.array_equal(idx, ref_idx)
    assert (d[:5] == 0).all()


def test_geodesic_nearest_differs_from_haversine_nearest():
    # at the equator a north-south mile is ~0.6% shorter on the ellipsoid than east-west:
    # the haversine-nearest point (east) is not the geodesic-nearest (north)
    lat_t = np.array([0.0, 1.4457])          # east, north
    lon_t = np.array([1.4370, 0.0])
    hav = geo.haversine_miles(0, 0, lat_t, lon_t)
    assert hav[0] < hav[1]
    ref_d, ref_idx = brute_force([0.0], [0.0], lat_t, lon_t)
    assert ref_idx[0] == 1
    d, idx = geo.nearest_train_distance_miles([0.0], [0.0], lat_t, lon_t)
    assert idx[0] == 1 and d[0] == ref_d[0]
    _, idx0 = geo.nearest_train_distance_miles([0.0], [0.0], lat_t, lon_t, rel_tol=0.0)
    assert idx0[0] == 0                       # without the band the prefilter alone is wrong


def test_antimeridian_and_poles():
    lat_t = np.array([10.0, 10.0, 89.95, 89.0, -90.0, -89.0])
    lon_t = np.array([-179.95, 179.0, 180.0, 0.0, 0.0, 45.0])
    lat_q = np.array([10.0, 89.95, 90.0, -89.99, 0.0])
    lon_q = np.array([179.95, 0.0, 0.0, -135.0, -180.0])
    d, idx = geo.nearest_train_distance_miles(lat_q, lon_q, lat_t, lon_t)
    ref_d, ref_idx = brute_force(lat_q, lon_q, lat_t, lon_t)
    assert np.array_equal(d, ref_d) and np.array_equal(idx, ref_idx)
    assert idx[0] == 0 and idx[1] == 2 and idx[3] == 4


def test_geodesic_over_haversine_ratio_within_documented_bound():
    rng = np.random.default_rng(1)
    lat1, lon1 = rng.uniform(-90, 90, 300), rng.uniform(-180, 180, 300)
    lat2 = np.clip(lat1 + rng.normal(0, 2, 300), -90, 90)
    lon2 = wrap_lon(lon1 + rng.normal(0, 2, 300))
    ratio = geo.geodesic_miles_pairs(lat1, lon1, lat2, lon2) / geo.haversine_miles(lat1, lon1, lat2, lon2)
    assert ratio.min() > 0.9944 and ratio.max() < 1.0045


def test_geodesic_pairs_equal_geopy():
    a = [(40.0, -73.0), (51.5, -0.1), (-33.9, 151.2)]
    b = [(34.0, -118.0), (48.9, 2.35), (-33.9, 151.2)]
    got = geo.geodesic_miles_pairs([p[0] for p in a], [p[1] for p in a], [p[0] for p in b], [p[1] for p in b])
    assert got.tolist() == [geopy.distance.geodesic(p, q).miles for p, q in zip(a, b)]


@pytest.mark.parametrize("lat_q,lon_q,lat_t,lon_t,needle", [
    ([0, 91.0], [0, 0], [0], [0], "lat_test[1]"),
    ([0], [0], [0, 1], [0, float("nan")], "lon_train[1]"),
    ([0], [200.0], [0], [0], "lon_test[0]"),
    ([0, 1], [0], [0], [0], "same length"),
    ([0], [0], [], [], "no training coordinates"),
])
def test_bad_coordinates(lat_q, lon_q, lat_t, lon_t, needle):
    with pytest.raises(AuditError, match=needle.replace("[", r"\[").replace("]", r"\]")) as err:
        geo.nearest_train_distance_miles(lat_q, lon_q, lat_t, lon_t)
    assert "\n" not in str(err.value)


def test_leakage_efficacy_handmade(monkeypatch):
    lat_t = np.array([0.0, 0.0, 10.0, 10.0, 50.0])
    lon_t = np.array([0.01, 1.0, 10.001, 12.0, 50.0])
    lat_q = np.array([0.0, 10.0, -40.0])
    lon_q = np.array([0.0, 10.0, -40.0])
    cand = np.array([[1, 4, 1], [2, -1, -1], [0, 1, 1]])   # repeats and padding
    calls = []
    real = geo._geodesic

    class Counting:
        def __init__(self):
            self.inner = real()

        def measure(self, a, b):
            calls.append((a, b))
            return self.inner.measure(a, b)

    nearest, _ = geo.nearest_train_distance_miles(lat_q, lon_q, lat_t, lon_t)
    monkeypatch.setattr(geo, "_geodesic", Counting)
    out = geo.leakage_efficacy(cand, lat_q, lon_q, lat_t, lon_t, [0, 0.5, 1, 100], nearest_miles=nearest)
    assert len(calls) == 5                              # distinct pairs: (0,1) (0,4) (1,2) (2,0) (2,1)
    assert out["n_ground_truth"] == [0, 1, 2, 2]
    assert out["n_found"] == [0, 1, 1, 2]
    assert out["efficacy"] == [None, 1.0, 0.5, 1.0]
    assert out["frac_with_candidate"] == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3])
    assert out["k"] == 3 and out["n_test"] == 3
    monkeypatch.setattr(geo, "_geodesic", real)
    again = geo.leakage_efficacy(cand, lat_q, lon_q, lat_t, lon_t, [0, 0.5, 1, 100])   # nearest computed inside
    assert again["n_found"] == out["n_found"] and again["nearest_train_miles"] == nearest.tolist()
    import json
    json.dumps(again, allow_nan=False)


def test_leakage_efficacy_rejects_bad_candidates():
    with pytest.raises(AuditError, match=r"candidate \[0, 1\] = 9"):
        geo.leakage_efficacy([[0, 9]], [0.0], [0.0], [0.0, 1.0], [0.0, 1.0], [1.0], nearest_miles=np.zeros(1))
