"""``audit report``: one self-contained HTML page for a run (RUN/report.html).

Each section has one small function that pulls its data out of the run directory and
returns a dict for its template (or None when the data does not exist). The audit JSONs
are written by other commands; when their keys change, the function of that section is
the one place to adapt. The page inlines every image and figure (data URIs), carries its
own CSS and a small table-sorting script, and loads nothing from anywhere.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
from rich.text import Text

from audit import findings, pipeline
from audit.audits.counterfactual import COUNTERFACTUAL
from audit.audits.embed import EMBED, Extreme, Spectrum
from audit.audits.geo import haversine_miles
from audit.audits.leakage_audit import (LEAKAGE, LEAK_RANKING_WORDS, Candidate, GeoTable, LeakageFile, MTurkScores,
                                        found_only_by, sources_of_union)
from audit.audits.support import (RANKING_WORDS, RankingVerdict, SupportRecord, datamodel_top, planned_lists,
                                  ranking_verdict, read_records)
from audit.checks import read_check_report
from audit.contract import Line, Step
from audit.errors import AuditError
from audit.jsonio import atomic_write_text
from audit.progress import SILENT, Progress
from audit.reports import plots
from audit.reports.data import DatamodelRows, RunFiles, num
from audit.reports.images import ImageSource
from audit.reference import load_reference
from audit.steps import REGISTRY
from audit.store import RUN_JSON, RunConfig, RunStore

REPORT_FILE = "report.html"
T = TypeVar("T")
TEMPLATES = Path(__file__).parent / "templates"


# ----- the context every section reads from ------------------------------------------------
@dataclass
class Context:
    """What the section functions share: the run's files, its config, lazily its dataset and datamodels."""

    files: RunFiles
    run: RunConfig
    n_examples: int = 8
    n_neighbours: int = 5
    _dataset: Any = None
    _dataset_tried: bool = False
    _dm: DatamodelRows | None = None
    _dm_tried: bool = False
    _images: ImageSource | None = None
    cache: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.files.path

    @property
    def n_train(self) -> int:
        return self.run.n_train

    @property
    def n_test(self) -> int:
        return self.run.n_test

    def read(self, reader: Callable[[Path], T | None]) -> T | None:
        """``reader(run_dir)`` (a step's typed read); None plus a note when the file is unreadable."""
        try:
            return reader(self.path)
        except AuditError as exc:
            self.files.notes.append(f"{exc}; its section is left out")
            return None

    @property
    def dataset(self):
        """The run's dataset, or None (with a note) when it cannot be loaded any more."""
        if not self._dataset_tried:
            self._dataset_tried = True
            try:
                self._dataset = pipeline.dataset_of(RunStore.open(self.path, writable=False))
            except AuditError as exc:
                self.files.notes.append(f"images are not shown: the dataset could not be loaded ({exc})")
        return self._dataset

    @property
    def images(self) -> ImageSource:
        """Thumbnails, each with its given label and the full-data models' prediction (when the run has them)."""
        if self._images is None:
            try:
                ref = load_reference(self.path)
            except AuditError as exc:
                self.files.notes.append(f"predicted labels are not shown ({exc})")
                ref = None
            preds = ref.mean_logits.argmax(1) if ref is not None else None
            self._images = ImageSource(self.dataset, predictions=preds)
        return self._images

    @property
    def datamodels(self) -> DatamodelRows | None:
        """Row access to RUN/datamodels.npz, or None when there is none (or it is unreadable: a note)."""
        if not self._dm_tried:
            self._dm_tried = True
            p = pipeline.FIT.path(self.path, "datamodels")
            if p.exists():
                try:
                    self._dm = DatamodelRows(p)
                except (OSError, ValueError, KeyError) as exc:
                    self.files.notes.append(f"{p.name} could not be read ({exc})")
        return self._dm

    def class_name(self, label: Any) -> str | None:
        if label is None:
            return None
        ds = self.dataset
        try:
            return str(ds.classes[int(label)]) if ds is not None else str(label)
        except (IndexError, ValueError, TypeError):
            return str(label)


# ----- formatting helpers used by the section functions -------------------------------------
def fmt(value: Any, digits: int = 3) -> str:
    """Numbers for people: ints with separators, floats with ``digits`` significant decimals, None -> '–'."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not np.isfinite(v):
            return "∞" if v > 0 else ("–" if np.isnan(v) else "-∞")
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 10 ** -digits):
            return f"{v:.{digits}g}"
        return f"{v:,.{digits}f}"
    return str(value)


def pct(value: Any) -> str:
    v = num(value)
    return "–" if v is None else f"{100 * v:.1f}%"


def sortkey(value: Any) -> str:
    """The data-sort attribute of a cell: a number JavaScript's parseFloat reads ('Infinity' included), or ''."""
    if value is None or isinstance(value, bool):
        return "" if value is None else str(int(value))
    try:
        v = float(value)
    except (TypeError, ValueError):
        return ""
    if np.isnan(v):
        return ""
    return "Infinity" if v == np.inf else ("-Infinity" if v == -np.inf else repr(v))


def cell(value: Any, digits: int = 3) -> dict:
    """A table cell: ``text`` shown, ``sort`` the raw number the sorting script uses."""
    v = num(value)
    return {"text": fmt(value, digits) if not isinstance(value, str) else value, "sort": v}


# ----- sections ---------------------------------------------------------------------------
def findings_section(ctx: Context, per_issue: int = 6, n_related: int = 5) -> dict | None:
    """What the audits say is wrong with the data, ranked (audit.findings): per issue how many at each
    severity and what to do, then the strongest findings with their images and evidence."""
    found = findings.collect(ctx.path)
    for step, why in found.notes.items():
        ctx.files.notes.append(f"{step}: its findings could not be read ({why})")
    for step, why in found.skipped.items():
        ctx.files.notes.append(f"{step}: not run by `audit run` ({why})")
    counts = found.counts()
    if not counts:
        return None
    issues = []
    for issue, by in counts.items():
        items = found.of(issue)
        cards = []
        for f in items[:per_issue]:
            related = [ctx.images.example("train", j) for j in f.related[:n_related]]
            cards.append({"example": ctx.images.example(f.split, f.index), "severity": f.severity,
                          "headline": f.headline, "evidence": f.evidence, "action": f.action,
                          "given": f.given_name, "suggested": f.predicted_name, "score": fmt(f.score, 3),
                          "score_meaning": f.score_meaning, "related": related,
                          "more_related": max(0, len(f.related) - n_related)})
        rule = items[0].rule if items else ""
        action = findings.WHAT_TO_DO.get(issue, items[0].action if items else "")
        issues.append({"issue": issue, "n": sum(by.values()), "by": by, "cards": cards, "rule": rule,
                       "action": action, "more": max(0, len(items) - per_issue)})
    total = sum(i["n"] for i in issues)
    high = sum(i["by"].get("high", 0) for i in issues)
    return {"issues": issues, "total": total, "high": high, "csv": findings.FINDINGS_CSV}


def summary_section(ctx: Context) -> dict | None:
    """run.json, the train and fit results: what was trained, how well, and how long it took."""
    run = ctx.run
    train, fit = ctx.read(pipeline.TRAIN.load), ctx.read(pipeline.FIT.load)
    facts = [
        ("dataset", run.dataset),
        ("training / test examples", f"{fmt(run.n_train)} / {fmt(run.n_test)}"),
        ("subset fraction α", fmt(run.alpha, 2)),
        ("models planned", fmt(run.n_models)),
    ]
    if train is not None:
        facts += [("models trained", fmt(train.trained)), ("diverged", fmt(train.diverged)),
                  ("pending", fmt(train.pending)),
                  ("test accuracy of a model trained at α", pct(train.test_accuracy))]
    facts.append(("trainer", ", ".join(f"{k}={v}" for k, v in run.trainer.items()) if run.trainer else None))
    if fit is not None:
        facts += [("models used to fit", fmt(fit.n_models)), ("datamodels (targets)", fit.targets_text()),
                  ("mean non-zero weights per datamodel", fmt(fit.mean_nonzero_weights, 1)),
                  ("median λ / λmax", fmt(fit.median_lambda_ratio, 4))]
    facts += [("seed", run.seed), ("created", run.created),
              ("versions", ", ".join(f"{k} {v}" for k, v in run.versions.items()) or None)]
    timings = []
    for step in REGISTRY:  # the cost each step had when it last ran (RUN/steps/*.json), or its saved seconds
        result = ctx.read(step.load)
        if result is None:
            continue
        rec = step.record(ctx.path)
        seconds = rec.seconds if rec else step.seconds(result)
        if seconds is None:
            continue
        timings.append({"step": step.name, "seconds": seconds, "text": fmt(seconds, 1),
                        "detail": step.cost_detail(result)})
    return {"facts": [(k, v) for k, v in facts if v not in (None, "")], "timings": timings}


def _rel(step: Step, role: str = "result") -> str:
    """A step's file, relative to the run directory (for links on the page)."""
    return step.files[role]


def quality_section(ctx: Context) -> dict | None:
    """The evaluate step's result (+ its per-target scores): LDS/MSE on held-out models vs difference of means."""
    ev = ctx.read(pipeline.EVALUATE.load)
    if ev is None:
        return None
    rows = []
    for group in ("test", "train", "all"):
        g: pipeline.GroupQuality = getattr(ev, group)
        n = {"text": g.targets_text(), "sort": g.n_targets}
        rows.append({"estimator": "datamodels (LASSO)", "group": group, "n": n,
                     "lds_mean": {"text": g.lds_text(), "sort": num(g.lds_mean)}, "lds_median": cell(g.lds_median),
                     "mse_mean": cell(g.mse_mean), "n_lds": cell(g.n_lds)})
        if num(g.baseline_lds_mean) is not None:
            rows.append({"estimator": "difference of means", "group": group, "n": n,
                         "lds_mean": {"text": g.lds_text(baseline=True), "sort": num(g.baseline_lds_mean)},
                         "lds_median": cell(g.baseline_lds_median),
                         "mse_mean": cell(None), "n_lds": cell(g.baseline_n_lds)})
        for q in ev.scores.values():  # the run's score matrices (audit import-scores, audit gradients)
            if (sg := getattr(q, group)) is not None:
                rows.append({"estimator": f"{q.name} ({q.how})", "group": group, "n": cell(sg.n_targets),
                             "lds_mean": cell(sg.lds_mean), "lds_median": cell(sg.lds_median),
                             "mse_mean": cell(None), "n_lds": cell(sg.n_lds)})
    facts = [("held-out subsets", fmt(ev.n_subsets)), ("models per subset (margins averaged)", fmt(ev.repeats)),
             ("models the datamodels were fitted on", fmt(ev.n_fit_models))]
    if ev.train.sampled or ev.test.sampled:
        facts.append(("targets scored", "a seeded random sample per group; mean LDS ± one standard error "
                      "(audit evaluate --lds-targets 0 scores every target)"))
    if num(ev.noise_floor_mse) is not None:
        facts.append(("noise floor MSE (a perfect predictor of the mean margin)", fmt(ev.noise_floor_mse)))
    figures = []
    per = ctx.read(pipeline.EVALUATE.targets)
    if per is not None:
        n_train = ctx.n_train
        for gname, sl in (("test", slice(n_train, None)), ("train", slice(0, n_train))):
            if per.lds is not None and per.lds[sl].size:
                series = {"datamodels": per.lds[sl]}
                if per.baseline_lds is not None:
                    series["difference of means"] = per.baseline_lds[sl]
                uri = plots.histograms(series, "LDS (Spearman, predicted vs actual margin)",
                                       f"LDS per {gname} target", vline=0.0)
                if uri:
                    figures.append({"uri": uri, "caption": f"Linear datamodeling score of each {gname} target over "
                                                           "the held-out models; higher is better."})
        if per.mse is not None and per.mse.size:
            series = {"test targets": per.mse[n_train:], "train targets": per.mse[:n_train]}
            uri = plots.histograms(series, "MSE of the predicted margin (log scale)", "MSE per target", log_x=True)
            if uri:
                figures.append({"uri": uri, "caption": "Mean squared error of each datamodel on the held-out models."})
    scatters = _scatter_saved(ctx, per) or [f for f in [_scatter_predicted(ctx, ev, per)] if f]
    figures[:0] = scatters
    return {"rows": rows, "facts": facts, "figures": figures}


def _scatter_saved(ctx: Context, per: pipeline.TargetQuality | None) -> list[dict]:
    """Predicted vs measured margins saved by ``audit evaluate`` (its scatter sample).

    One figure for the test targets and one for the train targets; a train target's dots are
    only the held-out models whose subset excluded it.
    """
    sc = per.scatter if per is not None else None
    if sc is None:
        return []
    lds = per.lds
    out = []
    for group, is_group in (("test", sc.targets >= ctx.n_train), ("train", sc.targets < ctx.n_train)):
        groups = []
        for j in np.flatnonzero(is_group):
            t = int(sc.targets[j])
            index = t - ctx.n_train if group == "test" else t
            label = ctx.images.label(group, index)
            score = f", LDS {float(lds[t]):.2f}" if lds is not None and t < len(lds) and np.isfinite(lds[t]) else ""
            groups.append({"pred": sc.pred[sc.valid[:, j], j], "actual": sc.measured[sc.valid[:, j], j],
                           "label": f"{group} {index}" + (f" ({label})" if label else "") + score})
        n_models = int(sc.valid[:, is_group].any(axis=1).sum()) if is_group.any() else 0
        uri = plots.scatter_predicted(groups, f"{group} targets: {n_models} held-out models")
        if uri:
            why = (" For a train target, only the models whose subset left it out." if group == "train" else "")
            out.append({"uri": uri, "caption": "Each dot is one held-out model: the margin the datamodel predicts from "
                                               "the model's training subset against the margin the model actually "
                                               "has. Dashed: y = x." + why})
    return out


def _scatter_predicted(ctx: Context, ev: pipeline.EvaluateResult, per: pipeline.TargetQuality | None,
                       n_targets: int = 6) -> dict | None:
    """Predicted vs actual margins on the held-out models for a few test targets (paper Fig. 2);
    for evaluations saved without a scatter sample."""
    dm = ctx.datamodels
    repeats = int(ev.repeats or 1)
    eval_dir = pipeline.eval_run_dir(ctx.path, repeats)
    if dm is None or not (eval_dir / RUN_JSON).exists() or ctx.n_test == 0:
        return None
    try:
        store = RunStore.open(eval_dir, writable=False)
        done = np.asarray(store.done)
        n_sub = len(done) // repeats
        done = done[: n_sub * repeats].reshape(n_sub, repeats)
        margins = np.asarray(store.margins[: n_sub * repeats]).reshape(n_sub, repeats, -1)
        keep = done.all(1) & np.isfinite(margins).all(axis=(1, 2))
        masks = np.asarray(store.masks[: n_sub * repeats]).reshape(n_sub, repeats, -1)[keep, 0]
        actual = margins[keep].mean(1)
    except (AuditError, OSError, ValueError) as exc:
        ctx.files.notes.append(f"held-out models in {eval_dir.name} could not be read ({exc})")
        return None
    if not keep.any() or masks.shape[1] != dm.n_train:
        return None
    rng = np.random.default_rng(0)
    candidates = np.arange(ctx.n_test)
    lds_all = per.lds if per is not None and per.lds is not None and len(per.lds) == ctx.n_train + ctx.n_test \
        else None
    if lds_all is not None:
        finite = np.isfinite(lds_all[ctx.n_train:])
        candidates = candidates[finite] if finite.any() else candidates
    picks = np.sort(rng.choice(candidates, size=min(n_targets, len(candidates)), replace=False))
    rows = ctx.n_train + picks
    w = dm.rows(rows)
    pred = masks.astype(np.float32) @ w.T + dm.bias[rows][None, :]
    groups = []
    for j, t in enumerate(picks):
        lds = lds_all[ctx.n_train + t] if lds_all is not None else np.nan
        label = ctx.images.label("test", int(t))
        groups.append({"pred": pred[:, j], "actual": actual[:, ctx.n_train + t],
                       "label": f"test {t}" + (f" ({label})" if label else "") + f", LDS {lds:.2f}"})
    uri = plots.scatter_predicted(groups, f"{int(keep.sum())} held-out models, {len(picks)} test targets")
    return {"uri": uri, "caption": "Each dot is one held-out model: the margin the datamodel predicts from the model's "
                                   "training subset against the margin the model actually has. Dashed: y = x."} if uri else None


def nearest_section(ctx: Context) -> dict | None:
    """datamodels.npz: a class-balanced sample of test images with their strongest positive and negative weights."""
    dm = ctx.datamodels
    if dm is None or ctx.n_test == 0 or dm.n_targets < ctx.n_train + ctx.n_test:
        return None
    picks, w = _with_weights(ctx, dm, _balanced_test_sample(ctx, ctx.n_test), ctx.n_examples)
    k = ctx.n_neighbours
    items = []
    for t, row in zip(picks, w):
        order = np.argsort(-row, kind="stable")
        pos = [int(j) for j in order[:k] if row[j] > 0]
        neg = [int(j) for j in order[::-1][:k] if row[j] < 0]
        items.append({"test": ctx.images.example("test", int(t)),
                      "positive": [ctx.images.example("train", j, weight=fmt(float(row[j]), 3)) for j in pos],
                      "negative": [ctx.images.example("train", j, weight=fmt(float(row[j]), 3)) for j in neg],
                      "nonzero": int((row != 0).sum()), "bias": fmt(float(dm.bias[ctx.n_train + t]), 2)})
    return {"items": items, "k": k}


def _with_weights(ctx: Context, dm: DatamodelRows, order: np.ndarray, n: int, chunk: int = 256,
                  max_rows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` test images of ``order`` whose datamodel has a non-zero weight, and their rows.

    Reads rows in chunks (a CIFAR row is 50,000 floats) and at most ``max_rows``; fills up
    with images without weights when too few have any.
    """
    keep: list[int] = []
    rows: list[np.ndarray] = []
    empty: list[int] = []
    for start in range(0, min(len(order), max_rows), chunk):
        idx = order[start:start + chunk]
        w = dm.rows(ctx.n_train + idx)
        for t, row in zip(idx, w):
            if (row != 0).any() and len(keep) < n:
                keep.append(int(t))
                rows.append(row)
            elif len(empty) < n:
                empty.append(int(t))
        if len(keep) >= n:
            break
    fill = empty[: n - len(keep)]
    picks = np.asarray(sorted(keep + fill), dtype=np.int64)
    return picks, dm.rows(ctx.n_train + picks)


def _balanced_test_sample(ctx: Context, n: int) -> np.ndarray:
    """The first test example of each class in turn (class 0, 1, ...), ``n`` in all (in that order)."""
    ds = ctx.dataset
    if ds is None:
        return np.arange(min(n, ctx.n_test))
    y = np.asarray(ds.y_test)
    pools = [np.flatnonzero(y == c) for c in np.unique(y)]
    picked: list[int] = []
    depth = 0
    while len(picked) < min(n, len(y)):
        for pool in pools:
            if depth < len(pool) and len(picked) < n:
                picked.append(int(pool[depth]))
        depth += 1
    return np.asarray(picked, dtype=np.int64)


def support_section(ctx: Context, name: str = "brittleness", n_show: int = 6, n_support: int = 12) -> dict | None:
    """RUN/audits/{brittleness,mislabel}.json: support-size CDFs per ranking, certification, the most brittle targets."""
    step = REGISTRY[name]
    if not step.path(ctx.path).exists():
        return None
    try:
        s, records = read_records(step.path(ctx.path), f"audit {name} {ctx.path}")
    except AuditError as exc:
        ctx.files.notes.append(f"the {step.title.lower()} section could not be drawn ({exc})")
        return None
    methods_table = []
    for method, r in s.per_method.items():
        methods_table.append({"method": method, "n": cell(r.n_targets),
                              "certified": {"text": pct(r.fraction_certified), "sort": num(r.fraction_certified)},
                              "median_support": {"text": r.median_certified_support_label,
                                                 "sort": r.median_certified_support},
                              "median_kstar": {"text": r.median_k_star_label, "sort": r.median_k_star},
                              "no_crossing": {"text": pct(r.fraction_no_crossing), "sort": num(r.fraction_no_crossing)}})
    curves = {m: [(c.k, c.fraction) for c in r.cdf] for m, r in s.per_method.items()}
    dashed = []
    for h, label in ((s.heuristic, "heuristic (datamodel sum, no retraining)"),
                     (s.heuristic_all, "heuristic, all test images")):
        if h is not None and h.cdf:
            curves[label] = [(c.k, c.fraction) for c in h.cdf]
            dashed.append(label)
    what = "removed" if s.mode == "remove" else "relabelled"
    cdf = plots.step_cdfs(curves, f"training examples {what} (k)", "support size: fraction of targets ≤ k",
                          dashed=dashed)
    unnamed = any(r.methods["datamodels"].edited is None for r in records if "datamodels" in r.methods)
    planned = planned_lists(ctx.path, name, s, [r.target for r in records]) if unnamed else None  # older files
    brittle = _most_brittle(ctx, records, n_show, n_support, s.datamodel_ranking, planned)
    facts = [("test targets", fmt(s.n_targets)), ("models per grid point (T)", fmt(s.T)),
             ("k grid", ", ".join(str(k) for k in s.k_grid)),
             ("full-data accuracy on these targets", pct(s.full_data_accuracy)),
             ("models trained (in plan)", fmt(s.models_in_plan))]
    if "datamodels" in s.per_method:
        facts.append(("datamodels ranked by", RANKING_WORDS[s.datamodel_ranking]))
    already = sum(1 for r in records if "datamodels" in r.methods and r.methods["datamodels"].certified_support == 0)
    if already:
        facts.append(("targets already misclassified by full-data models (support 0)", fmt(already)))
    verdict = s.verdict or RankingVerdict.from_json(ranking_verdict(
        {m: r.to_json() for m, r in s.per_method.items()}, s.mode) or {"datamodels_lose": False, "text": ""})
    return {"mode": s.mode, "what": what, "facts": facts, "methods": methods_table,
            "verdict": verdict.text or None, "datamodels_lose": verdict.datamodels_lose,
            "cdf": cdf, "brittle": brittle, "csv": _rel(step, "table") if step.path(ctx.path, "table").exists() else None}


def _shown_support(ctx: Context, ranking: str, r: SupportRecord, k: int,
                   planned: dict[tuple[int, str], np.ndarray] | None = None) -> list[int]:
    """The datamodel ranking's first ``k`` training examples for target ``r``: those its search edited (recorded
    since the searches name them), else the first of the list its search planned (``planned``: older files whose
    plan is found), else recomputed with the ranking the result used (``weights`` or ``embedding``), skipping
    examples already of the target's wrong class when it relabelled."""
    res = r.methods.get("datamodels")
    if res is not None and res.edited is not None:
        return list(res.edited[:k])
    if planned is not None and (int(r.target), "datamodels") in planned:
        return [int(j) for j in planned[(int(r.target), "datamodels")][:k] if j >= 0]
    y_train = ctx.images.dataset.y_train if ctx.images.dataset is not None else None
    wrong = np.array([r.wrong_class]) if r.wrong_class is not None and y_train is not None else None
    top = datamodel_top(ctx.datamodels.weights, np.array([ctx.n_train + int(r.target)]), ctx.n_train, k, ranking,
                        y_train, wrong)
    return [int(j) for j in top[0] if j >= 0]


def _most_brittle(ctx: Context, records: list[SupportRecord], n_show: int, n_support: int,
                  ranking: str = "weights", planned: dict[tuple[int, str], np.ndarray] | None = None) -> list[dict]:
    """Targets with the smallest certified support > 0 (datamodel ranking), with their support sets."""
    def key(r: SupportRecord) -> tuple:
        res = r.methods.get("datamodels")
        size = res.certified_support if res is not None and res.certified else None
        kstar = res.k_star if res is not None else None
        return (size is None, size if size is not None else (kstar if kstar is not None else np.inf))

    chosen = [r for r in records if r.methods.get("datamodels") is None or r.methods["datamodels"].certified_support != 0]
    chosen = sorted(chosen, key=key)[:n_show]
    dm = ctx.datamodels
    out = []
    for r in chosen:
        t = r.target
        res = r.methods.get("datamodels")
        kstar = num(res.k_star) if res is not None else None
        k = (res.certified_support if res is not None else None) or (int(np.ceil(kstar)) if kstar else 0)
        support = []
        if dm is not None and k and ctx.n_train + int(t) < dm.n_targets:
            row = dm.rows([ctx.n_train + int(t)])[0]
            order = _shown_support(ctx, ranking, r, k, planned)[:n_support]
            support = [ctx.images.example("train", int(j), weight=fmt(float(row[j]), 3)) for j in order]
        curve = plots.margin_curves({m: v.curve for m, v in r.methods.items()}, f"test {t}: mean margin vs k",
                                    marks={m: num(v.k_star) for m, v in r.methods.items()})
        per = [{"method": m, "k_star": fmt(num(v.k_star), 1), "certified": fmt(v.certified),
                "support": fmt(v.certified_support), "verify_margin": fmt(num(v.verify_margin), 2)}
               for m, v in r.methods.items()]
        out.append({"test": ctx.images.example("test", int(t)), "label": r.label_name,
                    "wrong": r.wrong_class_name, "full_margin": fmt(num(r.full_margin), 2),
                    "predicted": fmt(num(r.predicted_full_margin), 2), "heuristic_k": fmt(r.heuristic_k),
                    "k": k, "certified": bool(res.certified) if res is not None else False, "support": support,
                    "more": max(0, k - len(support)), "curve": curve, "per": per})
    return out


def leakage_section(ctx: Context, n_show: int = 8, n_cand: int = 5) -> dict | None:
    """The leakage step's files: summary, candidates, geodesic table, MTurk scores.

    Shows the candidate summary and the overlap of datamodel and representation (FAISS)
    candidates, planted-duplicate recall, FMoW efficacy vs distance per method and the
    distance CDF, MTurk score distributions, and test images with their candidates.
    """
    data = ctx.read(LEAKAGE.details)
    cands = ctx.read(LEAKAGE.candidates)
    if data is None and cands is None:
        return None
    s = data.summary if data is not None else None
    facts = []
    if s is not None:
        dc = s.datamodel_candidates
        facts = [("candidates per test image (k)", fmt(s.k)), ("test images", fmt(s.n_test)),
                 ("datamodel candidates ranked by", LEAK_RANKING_WORDS.get(s.datamodel_ranking, s.datamodel_ranking)),
                 ("mean datamodel candidates listed", fmt(dc.mean_positive, 2)),
                 ("test images with no datamodel candidate", fmt(dc.n_tests_none)),
                 ("datamodel candidates of the test image's class", pct(dc.same_class_fraction)),
                 ("full-data reference models (representation baseline)", fmt(s.n_reference_models)),
                 ("their test accuracy", pct(s.reference_test_accuracy))]
        facts = [(k, v) for k, v in facts if v != "–"]
    overlap = []
    ov = s.overlap if s is not None else None
    if ov is not None and ov.mean_jaccard is not None:
        overlap.append({"which": "datamodels vs representation", "k": fmt(ov.k), "jaccard": fmt(ov.mean_jaccard),
                        "at_k": fmt(ov.mean_overlap_at_k), "chance": fmt(ov.chance_overlap_at_k),
                        "any": pct(ov.frac_any_overlap)})
    planted = []
    for sec, label in ((data.planted if data else None, "this run's planted copies"),
                       (data.planted_check if data else None, "planted twin run")):
        if sec is None:
            continue
        if sec is data.planted_check and (sec.datamodel_ranking or "weights") != data.summary.datamodel_ranking:
            twin_ranking = sec.datamodel_ranking or "weights"  # the twin's own, when the run's audit has changed since
            label += f" (datamodels: {LEAK_RANKING_WORDS.get(twin_ranking, twin_ranking)})"
        groups = [(label, sec.n_planted, sec.methods)] + [
            (f"{label}: {family}", f.n_planted, f.methods) for family, f in (sec.by_family or {}).items()]
        for where, n, methods in groups:
            for method, r in methods.items():
                planted.append({"where": where, "method": method, "n": fmt(n),
                                "recall": ", ".join(f"@{k}: {pct(v)}" for k, v in r.recall_at_k.items()),
                                "median_rank": fmt(r.median_full_rank, 1)})
    who = _who_finds_what(data, cands or {})
    figures = []
    geo = data.geo if data is not None else None
    if geo is not None and geo.efficacy:
        series = {m: (geo.d_miles, v) for m, v in geo.efficacy.items()}
        uri = plots.lines(series, "distance d (miles)", "efficacy: found / ground truth",
                          "leakage found within d miles", ylim=(-0.02, 1.02))
        if uri:
            figures.append({"uri": uri, "caption": "Of the test images whose nearest training image lies within d "
                                                   "miles, the fraction with a candidate within d, per ranking (paper Fig. 12)."})
    geo_table = ctx.read(LEAKAGE.geo_table)
    if geo_table is not None:
        dists = {"nearest train": geo_table.nearest_train_miles}
        dists.update({f"{m} nearest candidate": v for m, v in geo_table.nearest_candidate_miles.items()})
        uri = plots.empirical_cdf(dists, "distance (miles)", "distance from each test image")
        if uri:
            figures.append({"uri": uri, "caption": "Cumulative distribution over test images of the geodesic distance to "
                                                   "the nearest training image and to the nearest candidate (paper Fig. 40)."})
    elif geo is not None and geo.cdf is not None:
        uri = plots.step_cdfs({"nearest training image": list(zip(geo.cdf.d_miles, geo.cdf.fraction_within))},
                              "distance d (miles)", "test images within d miles of a training image",
                              ylabel="fraction of test images")
        if uri:
            figures.append({"uri": uri, "caption": "Share of test images whose nearest training image is within d (paper Fig. 40)."})
    mturk = ctx.read(LEAKAGE.mturk_scores)
    if mturk is not None:
        ms = mturk.summary
        hists = {}
        if ms.leakage_score is not None and ms.leakage_score.hist is not None:
            hists["leakage score (max per test image)"] = (ms.leakage_score.hist.bin_edges, ms.leakage_score.hist.counts)
        if ms.pair_score_hist is not None:
            hists["annotation score (per pair)"] = (ms.pair_score_hist.bin_edges, ms.pair_score_hist.counts)
        uri = plots.binned(hists, "fraction of annotators who marked the pair", "MTurk annotation and leakage scores")
        if uri:
            figures.append({"uri": uri, "caption": "Annotation score of each (test, candidate) pair and leakage score "
                                                   "of each test image (its highest annotation score)."})
        facts += [("MTurk assignments used", fmt(ms.n_assignments_used)), ("MTurk workers", fmt(ms.n_workers)),
                  ("annotated test images", fmt(ms.n_tests_answered))]
        if ms.leakage_score is not None:
            facts += [("mean leakage score", fmt(ms.leakage_score.mean)),
                      ("test images with leakage score ≥ 0.5", fmt(ms.leakage_score.n_at_least_half))]
    pairs = _leak_pairs(ctx, data, cands or {}, mturk, geo_table, n_show, n_cand)
    ranking = s.datamodel_ranking if s is not None else "weights"
    return {"facts": facts, "figures": figures, "overlap": overlap, "planted": planted, "who": who,
            "dm_words": LEAK_RANKING_WORDS.get(ranking, ranking), "pairs": pairs["items"], "k": n_cand,
            "order": pairs["order"], "csv": _rel(LEAKAGE, "candidates") if cands is not None else None}


def _who_finds_what(data: LeakageFile | None, by: dict[str, dict[int, list[Candidate]]]) -> dict | None:
    """Which rankings propose the union's candidate pairs, and the planted copies each ranking alone finds."""
    union = by.get("union")
    sources = sources_of_union(union) if union else {}
    k = data.summary.k if data is not None else None
    only: list[dict] = []
    for sec, label in ((data.planted if data else None, "this run's planted copies"),
                       (data.planted_check if data else None, "planted twin run")):
        counts = found_only_by(sec.methods, k) if sec is not None and k else None
        if counts is not None:
            union_recall = sec.methods["union"].recall_at_k.get(str(k)) if "union" in sec.methods else None
            only.append({"where": label, "n": fmt(sec.n_planted), "union": pct(union_recall),
                         "only": [(m, fmt(v)) for m, v in counts.items()]})
    if not sources and not only:
        return None
    total = sum(sources.values())
    return {"k": fmt(k), "sources": [{"by": key.replace("+", " + "), "n": fmt(v), "share": pct(v / total)}
                                     for key, v in sources.items()], "only": only}


def _leak_pairs(ctx: Context, data: LeakageFile | None, by: dict[str, dict[int, list[Candidate]]],
                mturk: MTurkScores | None, geo: GeoTable | None, n_show: int, n_cand: int) -> dict:
    """Test images with their datamodel and representation candidates.

    Which test images: the highest MTurk leakage scores when annotated; else planted copies;
    else the nearest datamodel candidates (geodesic); else the largest datamodel weight among the candidates.
    """
    scores = {t.test_id: t.leakage_score for t in (mturk.tests if mturk else []) if num(t.leakage_score) is not None}
    pair_score = {(p.test_id, p.train_id): p.score for p in (mturk.pairs if mturk else []) if num(p.score) is not None}
    copies = {int(t): int(j) for t, j in (data.planted.pairs if data is not None and data.planted is not None else [])}
    dm_lists = by.get("datamodels", {})
    nearest_dm = geo.nearest_candidate_miles.get("datamodels") if geo is not None else None
    if scores:
        order, why = sorted(scores, key=lambda t: (-scores[t], t)), "highest MTurk leakage score first"
    elif copies:
        order, why = sorted(copies), "test images with a planted copy in the training set (marked ★)"
    elif nearest_dm is not None:
        d = {t: m for t, m in zip(geo.test_index, nearest_dm) if m is not None}
        order, why = sorted(d, key=lambda t: (d[t], t)), "nearest datamodel candidate (miles) first"
    else:
        # the largest weight among the candidates: the first one only when they are ranked by weight alone
        top = {t: max(w) for t, v in dm_lists.items() if (w := [c.score for c in v if c.score is not None])}
        order, why = sorted(top, key=lambda t: (-top[t], t)), "largest datamodel weight among the candidates first"
    meta = ctx.dataset.meta if ctx.dataset is not None else {}
    has_geo = all(k in meta for k in ("lat_train", "lon_train", "lat_test", "lon_test"))
    ranking = data.summary.datamodel_ranking if data is not None else "weights"
    dm_words = LEAK_RANKING_WORDS.get(ranking, ranking)
    items = []
    for t in order[:n_show]:
        strips = []
        for method, label in (("union", "every ranking's top candidates (union, by best rank)"),
                              ("datamodels", f"datamodel candidates ({dm_words})"),
                              ("representation", "representation neighbours (FAISS)"),
                              ("pixels", "pixel neighbours (correlation of pixels)"),
                              ("annotation", "shown to annotators (top and bottom weights)")):
            if method == "annotation" and not scores:
                continue
            shown = []
            for c in by.get(method, {}).get(t, [])[: n_cand if method != "annotation" else None]:
                w, j = c.score, c.train
                similarity = method in ("representation", "pixels")
                extra: dict = {"weight": fmt(w, 3) if w is not None and not similarity else None, "by": c.found_by,
                               "sim": fmt(w, 2) if w is not None and similarity else None,
                               "score": pct(pair_score[(t, j)]) if (t, j) in pair_score else None,
                               "star": copies.get(t) == j}
                if has_geo:
                    extra["miles"] = fmt(float(haversine_miles(meta["lat_test"][t], meta["lon_test"][t],
                                                               meta["lat_train"][j], meta["lon_train"][j])), 1)
                shown.append(ctx.images.example("train", j, **extra))
            if shown:
                strips.append({"label": label, "kind": method, "items": shown})
        items.append({"test": ctx.images.example("test", t), "strips": strips,
                      "score": pct(scores[t]) if t in scores else None, "copy": copies.get(t)})
    return {"items": items, "order": why}


def counterfactual_section(ctx: Context) -> dict | None:
    """audits/counterfactual.json: predicted vs actual effect of removing training sets, a colour per heuristic
    (paper Fig. 8), and the Spearman / Pearson correlations per heuristic and overall."""
    r = ctx.read(COUNTERFACTUAL.load)
    if r is None:
        return None
    rows = [{"heuristic": h, "n": cell(c.n_points), "spearman": cell(c.spearman), "pearson": cell(c.pearson)}
            for h, c in [*r.per_heuristic.items(), ("all heuristics", r.overall)]]
    groups = []
    for h in r.heuristics:
        pts = [p for p in r.points if p.heuristic == h and p.actual is not None]
        c = r.per_heuristic.get(h)
        score = f", Spearman {c.spearman:.2f}" if c is not None and c.spearman is not None else ""
        groups.append({"pred": np.array([p.predicted for p in pts]), "actual": np.array([p.actual for p in pts]),
                       "label": f"{h}{score}"})
    uri = plots.scatter_predicted(groups, f"{r.n_targets} test targets, k = {', '.join(map(str, r.k_grid))}",
                                  xlabel="predicted effect (sum of the removed weights)",
                                  ylabel="actual effect (drop in mean margin)")
    figures = [{"uri": uri, "caption": "Each dot is one test target and one removed set: the drop in its margin the "
                                       "datamodel predicts against the drop measured on models retrained without the "
                                       "set (full-data models minus retrained, means over T models). Dashed: y = x."}] \
        if uri else []
    facts = [("test targets", fmt(r.n_targets)), ("models per point (T)", fmt(r.T)),
             ("sizes of the removed sets (k)", ", ".join(map(str, r.k_grid))),
             ("full-data accuracy on the targets", fmt(r.full_data_accuracy)),
             ("models trained / rows reused", f"{fmt(r.models_trained_now)} / {fmt(r.models_reused)}")]
    return {"rows": rows, "figures": figures, "facts": facts, "file": _rel(COUNTERFACTUAL),
            "skipped": [f"{h} left out: {why}" for h, why in r.skipped.items()]}
def embed_section(ctx: Context, n_points: int = 60) -> dict | None:
    """RUN/audits/embed.json: variance curves (datamodels vs representation), component ends, clusters."""
    r = ctx.read(EMBED.load)
    if r is None:
        return None

    def curve(sp: Spectrum) -> tuple[list[int], list[float]]:
        cum = np.cumsum(sp.ratios)
        xs = np.unique(np.geomspace(1, max(sp.computed, 1), n_points).round().astype(int))
        return [int(x) for x in xs], [float(cum[x - 1]) for x in xs]

    spectra = {"datamodel embeddings": r.datamodels}
    if r.representation is not None:
        spectra["representation"] = r.representation
    figure = plots.lines({f"{name} (50%: {sp.count_label(0.5)}, 90%: {sp.count_label(0.9)})": curve(sp)
                          for name, sp in spectra.items()}, "principal components", "cumulative explained variance",
                         "explained variance: datamodel embeddings vs representation", log_x=True, ylim=(0, 1.02))
    counts = [{"name": name, "shape": f"{sp.n_samples} × {sp.width}", "c50": sp.count_label(0.5),
               "c90": sp.count_label(0.9), "how": "full spectrum" if sp.exact else f"top {sp.computed} components"}
              for name, sp in spectra.items()]

    def thumbs(split: str, ends: list[Extreme]) -> list[dict]:
        return [ctx.images.example(split, e.index, caption=ctx.images.caption(split, e.index)
                                   + [("pc", fmt(e.coordinate, 3))]) for e in ends]

    components = [{"n": c.component + 1, "variance": pct(c.variance_ratio),
                   "strips": [{"label": f"{split}, most {end}", "kind": kind, "items": thumbs(split, ends)}
                              for split, end, kind, ends in (("train", "positive", "pos", c.train_positive),
                                                             ("train", "negative", "neg", c.train_negative),
                                                             ("test", "positive", "pos", c.test_positive),
                                                             ("test", "negative", "neg", c.test_negative))]}
                  for c in r.top]
    clusters = [{"id": c.cluster, "size": c.size, "majority": c.majority, "purity": pct(c.purity),
                 "mix": ", ".join(f"{name} {n}" for name, n in c.class_counts.items()),
                 "examples": [ctx.images.example("test", i) for i in c.examples]} for c in r.clusters]
    return {"figure": figure, "counts": counts, "note": None if r.representation is not None else r.representation_note,
            "method": r.method, "components": components, "k": r.k, "cluster_space": r.cluster_space,
            "clusters": clusters, "per_end": len(r.top[0].train_positive) if r.top else 0,
            "files": [_rel(EMBED, role) for role in ("result", "clusters", "train", "test", "variance")]}


def check_section(ctx: Context) -> dict | None:
    """RUN/audits/check.json (audit.checks.run_checks): each check's value, threshold and outcome."""
    data = ctx.read(read_check_report)
    if data is None or not data.checks:
        return None
    ops = {"min": "≥", "max": "≤"}
    rows = [{"name": c.name, "key": c.key, "measure": c.measure, "value": cell(c.value, 4),
             "op": ops.get(c.direction, "") if c.threshold is not None else "", "threshold": cell(c.threshold, 4),
             "status": c.status, "file": c.file} for c in data.checks]
    return {"rows": rows, "passed": data.passed, "n_failed": data.n_failed, "n_checks": data.n_checks,
            "source": data.source or None}


def generic_section(ctx: Context, step: Step) -> dict | None:
    """Any registered step without a section of its own: its summary (lines and tables) as the terminal shows it."""
    result = ctx.read(step.load)
    if result is None:
        return None
    lines, tables = [], []
    for block in step.summary(result):
        if isinstance(block, Line):
            lines.append(_plain(block.text))
        else:
            tables.append({"title": block.title, "columns": list(block.columns), "rows": [list(r) for r in block.rows]})
    return {"lines": lines, "tables": tables, "file": _rel(step)}


def _plain(markup: str) -> str:
    """Terminal markup ([bold]...[/]) as plain text."""
    return Text.from_markup(markup).plain


@dataclass(frozen=True)
class SectionSpec:
    id: str
    title: str
    template: str
    build: Callable[[Context], dict | None]
    command: str = ""  # what makes its data, for the closing line of the page


# the page's own sections, and the sections registered steps have beyond the generic one
RUN_SECTIONS: tuple[SectionSpec, ...] = (
    SectionSpec("findings", "What we found", "findings.html", findings_section),
    SectionSpec("summary", "Run summary", "summary.html", summary_section),
    SectionSpec("check", "Audit check", "check.html", check_section, "audit check"),
)
STEP_SECTIONS: dict[str, tuple[SectionSpec, ...]] = {
    "train": (),  # in the run summary
    "fit": (SectionSpec("nearest", "Nearest training examples", "nearest.html", nearest_section, "audit fit"),),
    "evaluate": (SectionSpec("quality", "Datamodel quality", "quality.html", quality_section, "audit evaluate"),),
    "brittleness": (SectionSpec("brittleness", REGISTRY["brittleness"].title, "support.html",
                                lambda ctx: support_section(ctx, "brittleness"), "audit brittleness"),),
    "mislabel": (SectionSpec("mislabel", REGISTRY["mislabel"].title, "support.html",
                             lambda ctx: support_section(ctx, "mislabel"), "audit mislabel"),),
    "leakage": (SectionSpec("leakage", LEAKAGE.title, "leakage.html", leakage_section, "audit leakage"),),
    "counterfactual": (SectionSpec("counterfactual", COUNTERFACTUAL.title, "counterfactual.html",
                                   counterfactual_section, "audit counterfactual"),),
    "embed": (SectionSpec("embed", EMBED.title, "embed.html", embed_section, "audit embed"),),
}
PAGE_ORDER = ("findings", "summary", "check", "quality", "nearest")  # first on the page, then the audits


def section_specs() -> list[SectionSpec]:
    """Every section of the page, in order: the run's, then each registered step's (generic if it has none)."""
    specs = list(RUN_SECTIONS)
    for step in REGISTRY:
        own = STEP_SECTIONS.get(step.name)
        if own is None:
            own = (SectionSpec(step.name, step.title, "generic.html",
                               lambda ctx, step=step: generic_section(ctx, step), f"audit {step.name}"),)
        specs += own
    order = {sid: i for i, sid in enumerate(PAGE_ORDER)}
    return sorted(specs, key=lambda spec: order.get(spec.id, len(order)))  # stable: registry order after


SECTIONS = tuple(section_specs())


# ----- rendering --------------------------------------------------------------------------
def environment():
    """The jinja2 environment: HTML autoescaping everywhere, templates from the package."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["pct"] = pct
    env.filters["sortkey"] = sortkey
    return env


def build_sections(run_dir: Path | str, *, n_examples: int = 8, progress: Progress = SILENT) -> tuple[Context, list[dict]]:
    """Run every section function; returns the context (with notes) and the sections that have data."""
    run_dir = Path(run_dir)
    files = RunFiles(run_dir)
    ctx = Context(files=files, run=RunStore.read_config(run_dir), n_examples=n_examples)
    sections = []
    specs = section_specs()
    with progress.task("rendering report", total=len(specs), unit="sections") as task:
        for spec in specs:
            try:
                data = spec.build(ctx)
            except AuditError:
                raise
            except Exception as exc:  # one malformed audit file must not cost the whole report
                files.notes.append(f"the {spec.title.lower()} section could not be drawn "
                                   f"({type(exc).__name__}: {exc}); its input files may be from another version")
                data = None
            if data is not None:
                sections.append({"id": spec.id, "title": spec.title, "template": spec.template, "data": data})
            task.advance(1)
    return ctx, sections


def render_html(run_dir: Path | str, *, n_examples: int = 8, progress: Progress = SILENT) -> str:
    """The report page as a string (nothing written)."""
    ctx, sections = build_sections(run_dir, n_examples=n_examples, progress=progress)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    title = f"datamodel audit: {ctx.run.dataset}"
    return environment().get_template("report.html").render(
        title=title, run=ctx.run, run_dir=str(Path(run_dir)), generated=now, sections=sections,
        notes=ctx.files.notes, missing=_missing(sections))


def _missing(sections: list[dict]) -> list[dict]:
    """What the page would show after more commands: ``{"title", "command"}`` (the closing line of the page)."""
    present = {s["id"] for s in sections}
    return [{"title": spec.title, "command": spec.command} for spec in section_specs()
            if spec.command and spec.id not in present]


def render_report(run_dir: Path | str, progress: Progress = SILENT, *, n_examples: int = 8,
                  out: Path | str | None = None) -> Path:
    """Render RUN/report.html (or ``out``) atomically and return its path."""
    page = render_html(run_dir, n_examples=n_examples, progress=progress)
    path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    atomic_write_text(path, page)
    return path


__all__ = ["render_report", "render_html", "build_sections", "SECTIONS", "REPORT_FILE"]
