"""Report figures: SVG data URIs that parse, None for nothing to draw, text shown literally."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

import numpy as np

from audit.reports import plots


def svg(uri: str) -> ET.Element:
    assert uri.startswith("data:image/svg+xml;base64,")
    root = ET.fromstring(base64.b64decode(uri.split(",", 1)[1]))
    assert root.tag.endswith("svg")
    return root


def texts(root: ET.Element) -> str:
    return " ".join(t for e in root.iter() for t in (e.text or "", e.get("aria-label") or "") if t)


def test_histograms(rng):
    uri = plots.histograms({"a": rng.normal(size=50), "b": [np.nan, 1.0, 2.0]}, "x", "t", vline=0.0)
    svg(uri)
    assert plots.histograms({"a": [np.nan], "b": []}, "x", "t") is None
    log = plots.histograms({"mse": rng.lognormal(size=200)}, "mse", "t", log_x=True)
    lin = plots.histograms({"mse": rng.lognormal(size=200)}, "mse", "t")
    assert log != lin
    svg(plots.histograms({"one value": [3.0, 3.0]}, "x", "t", log_x=True))  # degenerate range still draws


def test_step_cdfs_and_curves():
    root = svg(plots.step_cdfs({"datamodels": [(0, 0.0), (8, 0.5), (16, 1.0)], "heuristic": [(0, 0.0), (4, 1.0)],
                                "empty": []}, "k", "title", dashed=["heuristic"]))
    assert root is not None
    assert plots.step_cdfs({"empty": [], "none": [(None, 1.0)]}, "k", "t") is None
    svg(plots.margin_curves({"datamodels": {"0": 3.0, "2": 1.0, "8": -1.0}, "random": {"0": 3.0, "2": None}},
                            "t", marks={"datamodels": 5.0}))
    assert plots.margin_curves({"datamodels": {"0": None}}, "t") is None
    svg(plots.lines({"datamodels": ([0.25, 0.5], [0.2, None])}, "d", "eff", "t", ylim=(0, 1)))
    assert plots.lines({"datamodels": ([0.25], [None])}, "d", "eff", "t") is None
    svg(plots.empirical_cdf({"nearest": [0.1, 2.0, 30.0, np.nan]}, "miles", "t"))
    svg(plots.binned({"score": ([0, 0.5, 1.0], [3, 1])}, "score", "t"))
    assert plots.binned({"score": ([0, 1], [])}, "s", "t") is None


def test_scatter_predicted(rng):
    groups = [{"pred": rng.normal(size=20), "actual": rng.normal(size=20), "label": "test 3 (cat)"},
              {"pred": np.array([]), "actual": np.array([]), "label": "empty"}]
    svg(plots.scatter_predicted(groups, "t"))
    assert plots.scatter_predicted(groups[1:], "t") is None


def test_text_is_literal_and_markup_stays_text():
    label = '$x$ <script>alert(1)</script> & "q"'
    root = svg(plots.lines({label: ([1, 2], [0.1, 0.2])}, "d", "e", "t"))
    assert not [e for e in root.iter() if str(e.tag).endswith("script")]
    assert plots.text("$5") == r"\$5"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns of a glyph missing for a control character
        svg(plots.lines({"a\tb\x01c": ([1, 2], [0.1, 0.2])}, "d", "e", plots.text("t\tt")))
    assert plots.text("a\tb\nc") == "a b c"


def test_method_colours_are_stable():
    assert plots.color("datamodels") == plots.color("DataModels", 3)
    assert plots.color("heuristic (datamodel sum, no retraining)") == plots.color("heuristic")
    assert plots.color("heuristic, all test images") != plots.color("heuristic")
    assert plots.color("something new", 0) != plots.color("something new", 1)
