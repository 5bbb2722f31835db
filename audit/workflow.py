"""`audit run`: every step on one dataset, in order, each skipped when its result is current.

train -> fit -> evaluate -> brittleness -> mislabel -> leakage -> report. Training and the
retraining audits resume by themselves (their stores mark finished rows); fit and evaluate
are skipped when their saved results already cover the run's finished models, so running
`audit run` again after an interruption redoes nothing finished. The summary of every step
goes to RUN/run_summary.json.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from audit import pipeline
from audit.errors import AuditError
from audit.jsonio import read_json, write_json
from audit.progress import SILENT, Progress
from audit.store import RunStore

SUMMARY_FILE = "run_summary.json"
STEPS = ("train", "fit", "evaluate", "brittleness", "mislabel", "leakage", "report")


@dataclass
class RunOptions:
    """What `audit run` does; the defaults are the digits first look (≤ 10 min on 2 CPU cores)."""

    n_models: int = 5000
    alpha: float = 0.5
    seed: int = 0
    eval_subsets: int = 200
    device: str = "auto"
    audit_targets: int = 100  # test targets for the brittleness and mislabel audits
    audit_T: int | None = None  # models per retraining point (None: the audit's default for the dataset)
    audits: tuple[str, ...] = ("brittleness", "mislabel", "leakage")
    trainer_options: dict = field(default_factory=dict)

    def check(self) -> None:
        """One clear error for options that cannot work, before anything runs."""
        if not 0 < self.alpha < 1:
            raise AuditError(f"--alpha must be in (0, 1), got {self.alpha}")
        if self.n_models < 20:
            raise AuditError(f"--n-models must be at least 20 to fit datamodels, got {self.n_models}")
        if self.eval_subsets < 5:
            raise AuditError(f"--eval-subsets must be at least 5, got {self.eval_subsets}")
        if self.audit_targets < 1:
            raise AuditError(f"--audit-targets must be at least 1, got {self.audit_targets}")
        unknown = [a for a in self.audits if a not in STEPS[3:6]]
        if unknown:
            raise AuditError(f"unknown audit(s) {', '.join(unknown)}: choose among brittleness, mislabel, leakage")


def fit_is_current(run_dir: Path) -> bool:
    """The saved datamodels were fitted on exactly the run's finished models."""
    run_dir = Path(run_dir)
    if not (run_dir / pipeline.DATAMODELS_FILE).exists() or not (run_dir / "fit.json").exists():
        return False
    store = RunStore.open(run_dir, writable=False)
    return read_json(run_dir / "fit.json").get("n_models") == len(store.finished_rows())


def evaluation_is_current(run_dir: Path, n_subsets: int) -> bool:
    """evaluation.json scores the current datamodels on ``n_subsets`` held-out subsets."""
    run_dir = Path(run_dir)
    path, dm = run_dir / "evaluation.json", run_dir / pipeline.DATAMODELS_FILE
    if not path.exists() or not dm.exists() or path.stat().st_mtime < dm.stat().st_mtime:
        return False
    ev = read_json(path)
    fit = read_json(run_dir / "fit.json") if (run_dir / "fit.json").exists() else {}
    return ev.get("n_fit_models") == fit.get("n_models") and ev.get("n_subsets_requested", n_subsets) == n_subsets


StepCallback = Callable[[str, dict], None]


def run_pipeline(spec: str, run_dir: Path | str, options: RunOptions | None = None, *,
                 progress: Progress = SILENT, on_step: StepCallback | None = None) -> dict:
    """Run every step for ``spec`` into ``run_dir``; returns (and saves) the per-step summaries.

    ``on_step(name, summary)`` is called after each step (the command prints it). A step
    whose result is already current reports ``{"skipped": True, ...}``.
    """
    options = options or RunOptions()
    options.check()
    run_dir = Path(run_dir)
    path = run_dir / SUMMARY_FILE
    steps: dict[str, dict] = {}
    start = time.perf_counter()

    def done(name: str, summary: dict, t0: float) -> None:
        summary = {**summary, "step_seconds": round(time.perf_counter() - t0, 2)}
        steps[name] = summary
        write_json(path, {"dataset": spec, "options": asdict(options), "steps": steps,
                          "seconds": round(time.perf_counter() - start, 2)})
        if on_step:
            on_step(name, summary)

    t0 = time.perf_counter()
    done("train", pipeline.train(spec, run_dir, n_models=options.n_models, alpha=options.alpha, seed=options.seed,
                                 trainer_options=options.trainer_options or None, progress=progress), t0)
    t0 = time.perf_counter()
    if fit_is_current(run_dir):
        done("fit", {**read_json(run_dir / "fit.json"), "skipped": True}, t0)
    else:
        done("fit", pipeline.fit(run_dir, device=options.device, progress=progress), t0)
    t0 = time.perf_counter()
    if evaluation_is_current(run_dir, options.eval_subsets):
        done("evaluate", {**read_json(run_dir / "evaluation.json"), "skipped": True}, t0)
    else:
        done("evaluate", pipeline.evaluate(run_dir, n_subsets=options.eval_subsets, progress=progress), t0)
    ds = pipeline.dataset_of(RunStore.open(run_dir, writable=False))
    for name in ("brittleness", "mislabel"):
        if name in options.audits:
            from audit.audits.support import run_brittleness

            t0 = time.perf_counter()
            done(name, run_brittleness(run_dir, mode="remove" if name == "brittleness" else "relabel",
                                       n=options.audit_targets, T=options.audit_T, seed=options.seed, dataset=ds,
                                       progress=progress), t0)
    if "leakage" in options.audits:
        from audit.audits.leakage_audit import run_leakage

        t0 = time.perf_counter()
        done("leakage", run_leakage(run_dir, dataset=ds, progress=progress), t0)
    from audit.reports.render import render_report

    t0 = time.perf_counter()
    done("report", {"path": str(render_report(run_dir, progress=progress))}, t0)
    return read_json(path)
