"""The heuristic support audit: from the weights alone, so it runs on an imported release."""

from __future__ import annotations

import csv

import numpy as np

from audit import pipeline
from audit.audits.heuristic import HEURISTIC, HeuristicConfig
from audit.release_import import import_release
from tests.cli_inprocess import call_main
from tests.test_release import SPEC, write_release


def smallest_k(w: np.ndarray, b: float) -> int | None:
    """The definition, one target at a time: fewest largest weights whose sum reaches bias + all weights."""
    margin = b + w.sum()
    if margin <= 0:
        return 0
    total = 0.0
    for k, x in enumerate(sorted(w, reverse=True), start=1):
        total += x
        if total >= margin:
            return k
    return None


def test_heuristic_support_of_the_published_weights(tmp_path):
    truth = write_release(tmp_path / "release", data=False)
    import_release(tmp_path / "release", SPEC, tmp_path / "run", eval_models=0)
    r = HEURISTIC.run(tmp_path / "run", HeuristicConfig(n_show=5))
    want = [smallest_k(truth["weights"][40 + t].astype(np.float64), float(truth["bias"][40 + t])) for t in range(20)]
    with open(HEURISTIC.path(tmp_path / "run", "table"), newline="") as f:
        got = [int(row["heuristic_k"]) if row["heuristic_k"] else None for row in csv.DictReader(f)]
    assert got == want
    found = sorted(k for k in want if k)
    assert r.n_found == len(found) and r.median_k == float(np.median(found))
    assert [p.heuristic_k for p in r.smallest] == found[:5]
    assert pipeline.FIT.is_current(tmp_path / "run") and HEURISTIC.is_current(tmp_path / "run", HeuristicConfig(n_show=5))


def test_bad_n_show_is_one_line(tmp_path):
    write_release(tmp_path / "release", data=False)
    import_release(tmp_path / "release", SPEC, tmp_path / "run", eval_models=0)
    result = call_main("support-heuristic", str(tmp_path / "run"), "--n-show", "0")
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert not (tmp_path / "run" / "audits").exists()

