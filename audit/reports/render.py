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
from typing import Any, Callable

import numpy as np
from rich.text import Text

from audit import pipeline
from audit.audits.geo import haversine_miles
from audit.audits.leakage_audit import LEAKAGE
from audit.audits.support import SupportRecord, read_records
from audit.checks import check_path
from audit.contract import Line, Step
from audit.errors import AuditError
from audit.jsonio import atomic_write_text
from audit.progress import SILENT, Progress
from audit.reports import plots
from audit.reports.data import DatamodelRows, RunFiles, num
from audit.reports.images import ImageSource
from audit.steps import REGISTRY
from audit.store import RUN_JSON, RunStore

REPORT_FILE = "report.html"
TEMPLATES = Path(__file__).parent / "templates"


# ----- the context every section reads from ------------------------------------------------
@dataclass
class Context:
    """What the section functions share: the run's files, its config, lazily its dataset and datamodels."""

    files: RunFiles
    run: dict
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
        return int(self.run.get("n_train", 0))

    @property
    def n_test(self) -> int:
        return int(self.run.get("n_test", 0))

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
        if self._images is None:
            self._images = ImageSource(self.dataset)
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
def summary_section(ctx: Context) -> dict | None:
    """run.json, train.json, fit.json: what was trained, how well, and how long it took."""
    run, train, fit = ctx.run, ctx.files.json(_rel(pipeline.TRAIN)) or {}, ctx.files.json(_rel(pipeline.FIT)) or {}
    trainer = run.get("trainer") or {}
    facts = [
        ("dataset", run.get("dataset")),
        ("training / test examples", f"{fmt(run.get('n_train'))} / {fmt(run.get('n_test'))}"),
        ("subset fraction α", fmt(num(run.get("alpha")), 2)),
        ("models planned", fmt(run.get("n_models"))),
    ]
    if train:
        facts += [("models trained", fmt(train.get("trained"))), ("diverged", fmt(train.get("diverged"))),
                  ("pending", fmt(train.get("pending"))),
                  ("test accuracy of a model trained at α", pct(train.get("test_accuracy")))]
    facts.append(("trainer", ", ".join(f"{k}={v}" for k, v in trainer.items()) if trainer else None))
    if fit:
        facts += [("models used to fit", fmt(fit.get("n_models"))), ("datamodels (targets)", fmt(fit.get("n_targets"))),
                  ("mean non-zero weights per datamodel", fmt(num(fit.get("mean_nonzero_weights")), 1)),
                  ("median λ / λmax", fmt(num(fit.get("median_lambda_ratio")), 4))]
    facts += [("seed", run.get("seed")), ("created", run.get("created")),
              ("versions", ", ".join(f"{k} {v}" for k, v in (run.get("versions") or {}).items()) or None)]
    timings = []
    for step in REGISTRY:  # the cost each step had when it last ran (RUN/steps/*.json), or its saved seconds
        data = ctx.files.json(_rel(step))
        summary = data.get(step.result_key) if isinstance(data, dict) and step.result_key else data
        summary = summary if isinstance(summary, dict) else {}
        rec = step.record(ctx.path)
        seconds = rec.seconds if rec else num(summary.get("total_seconds", summary.get("seconds")))
        if seconds is None or not summary:
            continue
        timings.append({"step": step.name, "seconds": seconds, "detail": _timing_detail(step.name, summary)})
    for t in timings:
        t["text"] = fmt(t["seconds"], 1)
    return {"facts": [(k, v) for k, v in facts if v not in (None, "")], "timings": timings}


def _timing_detail(name: str, s: dict) -> str:
    if name == "train":
        rate = num(s.get("models_per_second"))
        return f"{fmt(rate, 2)} models/s in the last session" if rate else ""
    if name == "fit":
        return f"on {s.get('device', '?')}, {fmt(s.get('n_models'))} models"
    if name == "evaluate":
        return f"{fmt(s.get('n_subsets'))} held-out subsets"
    trained = s.get("models_trained_now")
    return f"{fmt(trained)} models retrained" if trained is not None else ""


def _rel(step: Step, role: str = "result") -> str:
    """A step's file, relative to the run directory (what RunFiles reads)."""
    return step.files[role]


def quality_section(ctx: Context) -> dict | None:
    """evaluation.json (+ evaluation_targets.npz): LDS/MSE on held-out models vs difference of means."""
    ev = ctx.files.json(_rel(pipeline.EVALUATE))
    if not isinstance(ev, dict):
        return None
    rows = []
    for group in ("test", "train", "all"):
        g = ev.get(group)
        if not isinstance(g, dict):
            continue
        rows.append({"estimator": "datamodels (LASSO)", "group": group, "n": cell(g.get("n_targets")),
                     "lds_mean": cell(num(g.get("lds_mean"))), "lds_median": cell(num(g.get("lds_median"))),
                     "mse_mean": cell(num(g.get("mse_mean"))), "n_lds": cell(g.get("n_lds"))})
        if num(g.get("baseline_lds_mean")) is not None:
            rows.append({"estimator": "difference of means", "group": group, "n": cell(g.get("n_targets")),
                         "lds_mean": cell(num(g.get("baseline_lds_mean"))),
                         "lds_median": cell(num(g.get("baseline_lds_median"))), "mse_mean": cell(None),
                         "n_lds": cell(g.get("baseline_n_lds"))})
    facts = [("held-out subsets", fmt(ev.get("n_subsets"))), ("models per subset (margins averaged)", fmt(ev.get("repeats"))),
             ("models the datamodels were fitted on", fmt(ev.get("n_fit_models")))]
    if num(ev.get("noise_floor_mse")) is not None:
        facts.append(("noise floor MSE (a perfect predictor of the mean margin)", fmt(num(ev.get("noise_floor_mse")))))
    figures = []
    per = ctx.files.npz(_rel(pipeline.EVALUATE, "targets"))
    if per:
        n_train = ctx.n_train
        groups = [("test", slice(n_train, None)), ("train", slice(0, n_train))]
        for gname, sl in groups:
            if "lds" in per and per["lds"][sl].size:
                series = {"datamodels": per["lds"][sl]}
                if "baseline_lds" in per:
                    series["difference of means"] = per["baseline_lds"][sl]
                uri = plots.histograms(series, "LDS (Spearman, predicted vs actual margin)",
                                       f"LDS per {gname} target", vline=0.0)
                if uri:
                    figures.append({"uri": uri, "caption": f"Linear datamodeling score of each {gname} target over "
                                                           "the held-out models; higher is better."})
        if "mse" in per and per["mse"].size:
            series = {"test targets": per["mse"][n_train:], "train targets": per["mse"][:n_train]}
            uri = plots.histograms(series, "MSE of the predicted margin (log scale)", "MSE per target", log_x=True)
            if uri:
                figures.append({"uri": uri, "caption": "Mean squared error of each datamodel on the held-out models."})
    scatters = _scatter_saved(ctx, per) or [f for f in [_scatter_predicted(ctx, ev, per)] if f]
    figures[:0] = scatters
    return {"rows": rows, "facts": facts, "figures": figures}


def _scatter_saved(ctx: Context, per: dict | None) -> list[dict]:
    """Predicted vs measured margins saved by ``audit evaluate`` (evaluation_targets.npz ``scatter_*``).

    One figure for the test targets and one for the train targets; a train target's dots are
    only the held-out models whose subset excluded it (``scatter_valid``).
    """
    keys = ("scatter_targets", "scatter_pred", "scatter_measured")
    if not per or any(k not in per for k in keys):
        return []
    targets = np.asarray(per["scatter_targets"], dtype=np.int64)
    pred, meas = np.asarray(per["scatter_pred"]), np.asarray(per["scatter_measured"])
    valid = np.asarray(per["scatter_valid"], dtype=bool) if "scatter_valid" in per else np.ones(pred.shape, bool)
    if pred.ndim != 2 or pred.shape != meas.shape or pred.shape != valid.shape or pred.shape[1] != len(targets):
        ctx.files.notes.append(f"{_rel(pipeline.EVALUATE, 'targets')} has scatter arrays of mismatched shapes; the scatter is left out")
        return []
    lds = per.get("lds")
    out = []
    for group, is_group in (("test", targets >= ctx.n_train), ("train", targets < ctx.n_train)):
        groups = []
        for j in np.flatnonzero(is_group):
            t = int(targets[j])
            index = t - ctx.n_train if group == "test" else t
            label = ctx.images.label(group, index)
            score = f", LDS {float(lds[t]):.2f}" if lds is not None and t < len(lds) and np.isfinite(lds[t]) else ""
            groups.append({"pred": pred[valid[:, j], j], "actual": meas[valid[:, j], j],
                           "label": f"{group} {index}" + (f" ({label})" if label else "") + score})
        n_models = int(valid[:, is_group].any(axis=1).sum()) if is_group.any() else 0
        uri = plots.scatter_predicted(groups, f"{group} targets: {n_models} held-out models")
        if uri:
            why = (" For a train target, only the models whose subset left it out." if group == "train" else "")
            out.append({"uri": uri, "caption": "Each dot is one held-out model: the margin the datamodel predicts from "
                                               "the model's training subset against the margin the model actually "
                                               "has. Dashed: y = x." + why})
    return out


def _scatter_predicted(ctx: Context, ev: dict, per: dict | None, n_targets: int = 6) -> dict | None:
    """Predicted vs actual margins on the held-out models for a few test targets (paper Fig. 2)."""
    dm = ctx.datamodels
    repeats = int(ev.get("repeats") or 1)
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
    if per and "lds" in per and len(per["lds"]) == ctx.n_train + ctx.n_test:
        finite = np.isfinite(per["lds"][ctx.n_train:])
        candidates = candidates[finite] if finite.any() else candidates
    picks = np.sort(rng.choice(candidates, size=min(n_targets, len(candidates)), replace=False))
    rows = ctx.n_train + picks
    w = dm.rows(rows)
    pred = masks.astype(np.float32) @ w.T + dm.bias[rows][None, :]
    groups = []
    for j, t in enumerate(picks):
        lds = per["lds"][ctx.n_train + t] if per and "lds" in per else np.nan
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
    curves = {m: [(c.get("k"), c.get("fraction")) for c in r.cdf] for m, r in s.per_method.items()}
    dashed = []
    for h, label in ((s.heuristic, "heuristic (datamodel sum, no retraining)"),
                     (s.heuristic_all, "heuristic, all test images")):
        if h is not None and h.cdf:
            curves[label] = [(c.get("k"), c.get("fraction")) for c in h.cdf]
            dashed.append(label)
    what = "removed" if s.mode == "remove" else "relabelled"
    cdf = plots.step_cdfs(curves, f"training examples {what} (k)", "support size: fraction of targets ≤ k",
                          dashed=dashed)
    brittle = _most_brittle(ctx, records, n_show, n_support)
    facts = [("test targets", fmt(s.n_targets)), ("models per grid point (T)", fmt(s.T)),
             ("k grid", ", ".join(str(k) for k in s.k_grid)),
             ("full-data accuracy on these targets", pct(s.full_data_accuracy)),
             ("models trained (in plan)", fmt(s.models_in_plan))]
    already = sum(1 for r in records if "datamodels" in r.methods and r.methods["datamodels"].certified_support == 0)
    if already:
        facts.append(("targets already misclassified by full-data models (support 0)", fmt(already)))
    return {"mode": s.mode, "what": what, "facts": facts, "methods": methods_table,
            "cdf": cdf, "brittle": brittle, "csv": _rel(step, "table") if step.path(ctx.path, "table").exists() else None}


def _most_brittle(ctx: Context, records: list[SupportRecord], n_show: int, n_support: int) -> list[dict]:
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
            order = np.argsort(-row, kind="stable")[: min(k, n_support)]
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
    """RUN/audits/leakage.json (+ leakage_candidates.csv, leakage_geo.csv, leakage_mturk.json).

    Shows the candidate summary and the overlap of datamodel and representation (FAISS)
    candidates, planted-duplicate recall, FMoW efficacy vs distance per method and the
    distance CDF, MTurk score distributions, and test images with their candidates.
    """
    data = ctx.files.json(_rel(LEAKAGE))
    rows = ctx.files.csv(_rel(LEAKAGE, "candidates"))
    if not isinstance(data, dict) and rows is None:
        return None
    data = data if isinstance(data, dict) else {}
    s = data.get("summary") if isinstance(data.get("summary"), dict) else {}
    dc = s.get("datamodel_candidates") if isinstance(s.get("datamodel_candidates"), dict) else {}
    facts = [("candidates per test image (k)", fmt(s.get("k"))),
             ("test images", fmt(s.get("n_test"))),
             ("mean positive-weight candidates", fmt(num(dc.get("mean_positive")), 2)),
             ("test images with no positive weight", fmt(dc.get("n_tests_none"))),
             ("datamodel candidates of the test image's class", pct(dc.get("same_class_fraction"))),
             ("full-data reference models (representation baseline)", fmt(s.get("n_reference_models"))),
             ("their test accuracy", pct(s.get("reference_test_accuracy")))]
    facts = [(k, v) for k, v in facts if v != "–"]
    overlap = []
    ov = s.get("overlap")
    if isinstance(ov, dict) and "mean_jaccard" in ov:
        overlap.append({"which": "datamodels vs representation", "k": fmt(ov.get("k")),
                        "jaccard": fmt(num(ov.get("mean_jaccard"))), "at_k": fmt(num(ov.get("mean_overlap_at_k"))),
                        "chance": fmt(num(ov.get("chance_overlap_at_k"))), "any": pct(ov.get("frac_any_overlap"))})
    planted = []
    for key, label in (("planted", "this run's planted copies"), ("planted_check", "planted twin run")):
        sec = data.get(key)
        if not isinstance(sec, dict):
            continue
        for method, r in (sec.get("methods") or {}).items():
            rec = r.get("recall_at_k") or {}
            planted.append({"where": label, "method": method, "n": fmt(sec.get("n_planted")),
                            "recall": ", ".join(f"@{k}: {pct(v)}" for k, v in rec.items()),
                            "median_rank": fmt(num(r.get("median_full_rank")), 1)})
    figures = []
    geo = data.get("geo") if isinstance(data.get("geo"), dict) else None
    if geo and isinstance(geo.get("efficacy"), dict):
        series = {m: (geo.get("d_miles") or [], v) for m, v in geo["efficacy"].items() if isinstance(v, list)}
        uri = plots.lines(series, "distance d (miles)", "efficacy: found / ground truth",
                          "leakage found within d miles", ylim=(-0.02, 1.02))
        if uri:
            figures.append({"uri": uri, "caption": "Of the test images whose nearest training image lies within d "
                                                   "miles, the fraction with a candidate within d, per ranking (paper Fig. 12)."})
    geo_rows = ctx.files.csv(_rel(LEAKAGE, "geo"))
    dists: dict[str, list] = {}
    if geo_rows:
        for col in geo_rows[0]:
            if col.endswith("_miles"):
                name = col[: -len("_miles")].replace("_", " ")
                dists[name] = [num(r.get(col)) for r in geo_rows]
    if dists:
        uri = plots.empirical_cdf(dists, "distance (miles)", "distance from each test image")
        if uri:
            figures.append({"uri": uri, "caption": "Cumulative distribution over test images of the geodesic distance to "
                                                   "the nearest training image and to the nearest candidate (paper Fig. 40)."})
    elif geo and isinstance(geo.get("cdf"), dict):
        cdf = geo["cdf"]
        uri = plots.step_cdfs({"nearest training image": list(zip(cdf.get("d_miles") or [], cdf.get("fraction_within") or []))},
                              "distance d (miles)", "test images within d miles of a training image",
                              ylabel="fraction of test images")
        if uri:
            figures.append({"uri": uri, "caption": "Share of test images whose nearest training image is within d (paper Fig. 40)."})
    mturk = ctx.files.json(_rel(LEAKAGE, "mturk"))
    mturk = mturk if isinstance(mturk, dict) else {}
    ms = mturk.get("summary") or ((data.get("mturk") or {}).get("summary") if isinstance(data.get("mturk"), dict) else None)
    if isinstance(ms, dict):
        hists = {}
        ls = ms.get("leakage_score")
        if isinstance(ls, dict) and isinstance(ls.get("hist"), dict):
            hists["leakage score (max per test image)"] = (ls["hist"].get("bin_edges"), ls["hist"].get("counts"))
        if isinstance(ms.get("pair_score_hist"), dict):
            hists["annotation score (per pair)"] = (ms["pair_score_hist"].get("bin_edges"), ms["pair_score_hist"].get("counts"))
        uri = plots.binned(hists, "fraction of annotators who marked the pair", "MTurk annotation and leakage scores")
        if uri:
            figures.append({"uri": uri, "caption": "Annotation score of each (test, candidate) pair and leakage score "
                                                   "of each test image (its highest annotation score)."})
        facts += [("MTurk assignments used", fmt(ms.get("n_assignments_used"))), ("MTurk workers", fmt(ms.get("n_workers"))),
                  ("annotated test images", fmt(ms.get("n_tests_answered")))]
        if isinstance(ls, dict):
            facts += [("mean leakage score", fmt(num(ls.get("mean")))),
                      ("test images with leakage score ≥ 0.5", fmt(ls.get("n_at_least_0.5")))]
    pairs = _leak_pairs(ctx, data, rows or [], mturk, geo_rows, n_show, n_cand)
    return {"facts": facts, "figures": figures, "overlap": overlap, "planted": planted, "pairs": pairs["items"], "k": n_cand,
            "order": pairs["order"], "csv": _rel(LEAKAGE, "candidates") if rows is not None else None}


def _leak_pairs(ctx: Context, data: dict, rows: list[dict], mturk: dict, geo_rows: list[dict] | None,
                n_show: int, n_cand: int) -> dict:
    """Test images with their datamodel and representation candidates.

    Which test images: the highest MTurk leakage scores when annotated; else planted copies;
    else the nearest datamodel candidates (geodesic); else the largest top datamodel weight.
    """
    by: dict[str, dict[int, list[tuple[int, int, float | None]]]] = {}
    for r in rows:
        t, j, rank = num(r.get("test_index")), num(r.get("train_index")), num(r.get("rank"))
        if t is None or j is None:
            continue
        by.setdefault(str(r.get("method") or "datamodels"), {}).setdefault(int(t), []).append(
            (int(rank or 0), int(j), num(r.get("weight"))))
    for lists in by.values():
        for v in lists.values():
            v.sort()
    scores = {int(d["test_id"]): float(d["leakage_score"]) for d in mturk.get("tests") or []
              if isinstance(d, dict) and num(d.get("leakage_score")) is not None and num(d.get("test_id")) is not None}
    pair_score = {(int(p["test_id"]), int(p["train_id"])): num(p.get("score")) for p in mturk.get("pairs") or []
                  if isinstance(p, dict) and num(p.get("test_id")) is not None and num(p.get("train_id")) is not None}
    planted_pairs = []
    for key in ("planted",):
        sec = data.get(key)
        if isinstance(sec, dict):
            planted_pairs = [tuple(int(x) for x in p) for p in sec.get("pairs") or [] if len(p) == 2]
    copies = {t: j for t, j in planted_pairs}
    dm_lists = by.get("datamodels", {})
    if scores:
        order, why = sorted(scores, key=lambda t: (-scores[t], t)), "highest MTurk leakage score first"
    elif copies:
        order, why = sorted(copies), "test images with a planted copy in the training set (marked ★)"
    elif geo_rows and geo_rows[0].get("datamodels_nearest_candidate_miles") is not None:
        d = {int(r["test_index"]): num(r.get("datamodels_nearest_candidate_miles")) for r in geo_rows
             if num(r.get("test_index")) is not None}
        order, why = sorted((t for t in d if d[t] is not None), key=lambda t: (d[t], t)), \
            "nearest datamodel candidate (miles) first"
    else:
        top = {t: v[0][2] for t, v in dm_lists.items() if v and v[0][2] is not None}
        order, why = sorted(top, key=lambda t: (-top[t], t)), "largest top datamodel weight first"
    meta = ctx.dataset.meta if ctx.dataset is not None else {}
    has_geo = all(k in meta for k in ("lat_train", "lon_train", "lat_test", "lon_test"))
    items = []
    for t in order[:n_show]:
        strips = []
        for method, label in (("datamodels", "datamodel candidates (largest weights)"),
                              ("representation", "representation neighbours (FAISS)"),
                              ("annotation", "shown to annotators (top and bottom weights)")):
            if method == "annotation" and not scores:
                continue
            cands = by.get(method, {}).get(t, [])[: n_cand if method != "annotation" else None]
            shown = []
            for _, j, w in cands:
                extra: dict = {"weight": fmt(w, 3) if w is not None and method != "representation" else None,
                               "sim": fmt(w, 2) if w is not None and method == "representation" else None,
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


def check_section(ctx: Context) -> dict | None:
    """RUN/audits/check.json (audit.checks.run_checks): each check's value, threshold and outcome."""
    data = ctx.files.json(str(check_path(".")))
    if not isinstance(data, dict) or not isinstance(data.get("checks"), list):
        return None
    ops = {"min": "≥", "max": "≤"}
    rows = []
    for c in data["checks"]:
        if not isinstance(c, dict):
            continue
        status = str(c.get("status") or ("pass" if c.get("passed") else "fail"))
        rows.append({"name": str(c.get("name", c.get("key", "?"))), "key": str(c.get("key", "")),
                     "measure": str(c.get("measure", "")), "value": cell(num(c.get("value")), 4),
                     "op": ops.get(str(c.get("direction")), "") if c.get("threshold") is not None else "",
                     "threshold": cell(num(c.get("threshold")), 4), "status": status,
                     "file": str(c.get("file", ""))})
    if not rows:
        return None
    return {"rows": rows, "passed": bool(data.get("passed")), "n_failed": int(data.get("n_failed") or 0),
            "n_checks": int(data.get("n_checks") or 0), "source": data.get("source")}


def generic_section(ctx: Context, step: Step) -> dict | None:
    """Any registered step without a section of its own: its summary (lines and tables) as the terminal shows it."""
    try:
        result = step.load(ctx.path)
    except AuditError as exc:
        ctx.files.notes.append(str(exc))
        return None
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
}
PAGE_ORDER = ("summary", "check", "quality", "nearest")  # first on the page, then the audits in registry order


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
    if not (run_dir / RUN_JSON).exists():
        raise AuditError(f"{run_dir} is not a run directory (no {RUN_JSON}); run `audit train` first")
    run = files.json(RUN_JSON)
    if not isinstance(run, dict):
        raise AuditError(f"{run_dir}/{RUN_JSON} is unreadable; restore it or train a new run")
    ctx = Context(files=files, run=run, n_examples=n_examples)
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
    title = f"datamodel audit: {ctx.run.get('dataset', Path(run_dir).name)}"
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
