"""Report figures with matplotlib (object API, no pyplot state), returned as SVG data URIs.

Each figure is an SVG inside an ``<img src="data:image/svg+xml;base64,...">``: vector in
print, isolated from the page (its element ids cannot collide with another figure's, and
nothing in it can run). Dense scatters are rasterised inside the SVG to keep it small.
"""

from __future__ import annotations

import functools
import io
from typing import Mapping, Sequence

import numpy as np

from audit.reports.images import data_uri

METHOD_COLORS = {"datamodels": "#1f5fa8", "datamodel": "#1f5fa8", "representation": "#e07b00", "faiss": "#e07b00",
                 "random": "#7a7a7a", "heuristic": "#2a9d55", "heuristic, all": "#17becf", "difference of means": "#e07b00",
                 "baseline": "#e07b00"}
_FALLBACK = ["#1f5fa8", "#e07b00", "#2a9d55", "#c0392b", "#7a4fa0", "#7a7a7a", "#17becf", "#8c564b"]
_RC = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
       "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "audit-report"}


def color(name: str, i: int = 0) -> str:
    """The colour of a method wherever it appears (longest known prefix of its name), else the i-th fallback."""
    low = str(name).lower()
    keys = [k for k in METHOD_COLORS if low.startswith(k)]
    return METHOD_COLORS[max(keys, key=len)] if keys else _FALLBACK[i % len(_FALLBACK)]


def _symlog_x(ax) -> None:
    """A symlog x axis (0 stays on it) with plain numbers as labels (1, 10, 100 rather than 10^0)."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("symlog", linthresh=1)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    lo, hi = ax.get_xlim()
    if lo < 0 <= ax.dataLim.x0:  # no negative tick for data that starts at 0 (call after plotting)
        ax.set_xlim(-0.3, hi)


def text(value: object) -> str:
    """A string that matplotlib shows literally (no mathtext from '$'; control characters, which no font has a
    glyph for, as spaces)."""
    return "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in str(value)).replace("$", r"\$")


def _styled(fn):
    """Run a plotting function under the report's matplotlib style (no global state changed)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(_RC):
            return fn(*args, **kwargs)

    return wrapper


def _figure(width: float = 4.8, height: float = 3.1):
    from matplotlib.figure import Figure  # Figure without pyplot: no GUI backend, no global figure list

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot(1, 1, 1)


def to_uri(fig) -> str:
    """Render a Figure as an SVG data URI."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return data_uri(buf.getvalue(), "image/svg+xml")


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, log_x: bool = False,
            ylim: tuple[float, float] | None = None) -> str:
    """Axes labels, title, legend and grid of a line figure; its SVG data URI."""
    if log_x:
        _symlog_x(ax)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(frameon=False)
    ax.grid(alpha=0.25)
    return to_uri(fig)


def _finite(values) -> np.ndarray:
    a = np.asarray([np.nan if v is None else v for v in values] if isinstance(values, list) else values,
                   dtype=np.float64).ravel()
    return a[np.isfinite(a)]


@_styled
def histograms(series: Mapping[str, Sequence[float]], xlabel: str, title: str, bins: int = 40,
               vline: float | None = None, log_x: bool = False) -> str | None:
    """Overlaid histograms of one or more named series; None when no series has a finite value.

    ``log_x``: log-spaced bins on a log axis (for a long right tail such as MSE), used when
    every value is positive.
    """
    data = {name: _finite(v) for name, v in series.items()}
    data = {k: v for k, v in data.items() if v.size}
    if not data:
        return None
    fig, ax = _figure()
    lo = min(float(v.min()) for v in data.values())
    hi = max(float(v.max()) for v in data.values())
    log_x = log_x and lo > 0 and hi > lo
    edges = np.geomspace(lo, hi, bins + 1) if log_x else np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    top = 0.0
    for i, (name, v) in enumerate(data.items()):
        counts, _, _ = ax.hist(v, bins=edges, alpha=0.55, color=color(name, i),
                               label=f"{text(name)} (mean {v.mean():.3f}, n={v.size})")
        top = max(top, float(np.max(counts)))
    ax.set_ylim(0, top * (1.12 + 0.1 * len(data)) + 1)  # head room for the legend
    if vline is not None:
        ax.axvline(vline, color="k", lw=0.8, ls=":")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("targets")
    ax.set_title(title)
    ax.legend(loc="best", framealpha=0.85, edgecolor="none")
    return to_uri(fig)


@_styled
def scatter_predicted(groups: Sequence[dict], title: str, xlabel: str = "predicted margin (datamodel)",
                      ylabel: str = "actual margin (held-out model)") -> str | None:
    """Predicted vs actual values (margins by default), a colour per group; ``groups``: dicts with ``pred``,
    ``actual``, ``label``."""
    groups = [g for g in groups if len(g["pred"])]
    if not groups:
        return None
    fig, ax = _figure(4.8, 4.0)
    allv = np.concatenate([np.concatenate([g["pred"], g["actual"]]) for g in groups])
    allv = allv[np.isfinite(allv)]
    for i, g in enumerate(groups):
        ax.scatter(g["pred"], g["actual"], s=7, alpha=0.7, color=_FALLBACK[i % len(_FALLBACK)], lw=0,
                   label=text(g["label"]), rasterized=True)
    if allv.size:
        lo, hi = float(allv.min()), float(allv.max())
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.7, ls="--")
    ax.axhline(0, color="#999", lw=0.5)
    ax.axvline(0, color="#999", lw=0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=7, loc="upper left", markerscale=1.5)
    return to_uri(fig)


@_styled
def step_cdfs(curves: Mapping[str, Sequence[tuple[float, float]]], xlabel: str, title: str,
              ylabel: str = "fraction of targets", log_x: bool = True, dashed: Sequence[str] = ()) -> str | None:
    """Step curves y(x) per method (e.g. CDF of support sizes); None when all are empty."""
    curves = {k: [(float(x), float(y)) for x, y in v if x is not None and y is not None] for k, v in curves.items()}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    fig, ax = _figure()
    for i, (name, pts) in enumerate(curves.items()):
        pts = sorted(pts)
        style = dict(ls="--", lw=1.3, zorder=3) if name in dashed else dict(ls="-", lw=1.8, marker="o", ms=3, zorder=2)
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color=color(name, i), label=text(name), **style)
    return _finish(fig, ax, xlabel, ylabel, title, log_x, (-0.02, 1.02))


@_styled
def margin_curves(curves: Mapping[str, Mapping[str, float | None]], title: str,
                  marks: Mapping[str, float | None] | None = None) -> str | None:
    """Mean margin against the number of examples edited, per method (``{"k": margin}``)."""
    fig, ax = _figure(3.6, 2.5)
    drawn = False
    for i, (name, curve) in enumerate(curves.items()):
        pts = sorted((float(k), float(v)) for k, v in curve.items() if v is not None)
        if not pts:
            continue
        drawn = True
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color(name, i), marker="o", ms=3, lw=1.3,
                label=text(name))
        mark = (marks or {}).get(name)
        if mark is not None:
            ax.axvline(mark, color=color(name, i), lw=0.8, ls=":")
    if not drawn:
        return None
    ax.axhline(0, color="k", lw=0.7)
    _symlog_x(ax)
    ax.set_xlabel("training examples edited (k)")
    ax.set_ylabel("mean margin")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=7)
    return to_uri(fig)


@_styled
def lines(series: Mapping[str, tuple[Sequence[float], Sequence[float | None]]], xlabel: str, ylabel: str, title: str,
          log_x: bool = False, ylim: tuple[float, float] | None = None) -> str | None:
    """Line plot of named (x, y) series (None y values skipped), e.g. efficacy vs distance."""
    fig, ax = _figure()
    drawn = False
    for i, (name, (xs, ys)) in enumerate(series.items()):
        pts = [(float(x), float(y)) for x, y in zip(xs, ys) if x is not None and y is not None]
        if not pts:
            continue
        drawn = True
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color(name, i), marker="o", ms=3, lw=1.5,
                label=text(name))
    if not drawn:
        return None
    return _finish(fig, ax, xlabel, ylabel, title, log_x, ylim)


@_styled
def empirical_cdf(values: Mapping[str, Sequence[float]], xlabel: str, title: str, log_x: bool = True,
                  vlines: Sequence[float] = ()) -> str | None:
    """Empirical CDFs of named samples (e.g. miles from each test image to its nearest training image)."""
    data = {k: np.sort(_finite(v)) for k, v in values.items()}
    data = {k: v for k, v in data.items() if v.size}
    if not data:
        return None
    fig, ax = _figure()
    for i, (name, v) in enumerate(data.items()):
        ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", color=color(name, i), lw=1.5,
                label=f"{text(name)} (n={v.size})")
    for d in vlines:
        ax.axvline(d, color="#999", lw=0.7, ls=":")
    return _finish(fig, ax, xlabel, "fraction of test images", title, log_x, (0, 1.02))


@_styled
def binned(hists: Mapping[str, tuple[Sequence[float], Sequence[int]]], xlabel: str, title: str) -> str | None:
    """Bar charts of pre-binned counts (``edges``, ``counts``) per name, side by side within bins."""
    hists = {k: v for k, v in hists.items() if v and len(v[1])}
    if not hists:
        return None
    fig, ax = _figure()
    n = len(hists)
    for i, (name, (edges, counts)) in enumerate(hists.items()):
        edges = np.asarray(edges, dtype=np.float64)
        width = np.diff(edges) / (n + 0.5)
        ax.bar(edges[:-1] + width * (i + 0.25), np.asarray(counts), width=width, align="edge", color=color(name, i + 2),
               label=text(name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend(frameon=False)
    return to_uri(fig)
