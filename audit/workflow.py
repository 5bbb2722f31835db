"""`audit run`: every registered step on one dataset, in order, each skipped when its result is current.

The steps come from ``audit.steps.REGISTRY`` (train, fit, evaluate, then the audits), then the
report. A step is skipped when ``step.is_current`` says its saved result was computed with
these settings from the inputs as they are now (one rule for every step, audit.contract);
training and the retraining audits also resume by themselves, so running `audit run` again
after an interruption redoes nothing finished. Every step's summary goes to RUN/run_summary.json.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from audit import findings, pipeline
from audit.contract import Cost, Result, Step, config_json, settings_of
from audit.errors import AuditError
from audit.findings import SUMMARY_FILE
from audit.jsonio import write_json
from audit.progress import SILENT, Progress
from audit.release import MissingWeights, is_imported
from audit.reports.render import render_report
from audit.steps import REGISTRY

MIN_MODELS_TO_FIT = 20


@dataclass(frozen=True)
class RunOptions:
    """What `audit run` does: the settings of each step (defaults: the steps' own) and which audits."""

    configs: Mapping[str, Any] = field(default_factory=dict)  # step name -> its settings dataclass
    audits: tuple[str, ...] = REGISTRY.default_audits()

    @classmethod
    def from_values(cls, audits: tuple[str, ...] | None = None, **values: Any) -> "RunOptions":
        """Settings by field name (``n_models=60, alpha=0.5, n_subsets=6, ...``), shared by every step
        that has a setting of that name (``seed``, ``engine``); unknown names are an error."""
        known = {f.name for s in REGISTRY for f in settings_of(s.config_type)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise AuditError(f"unknown setting(s) {', '.join(unknown)} for `audit run`")
        configs = {}
        for s in REGISTRY:
            names = {f.name for f in settings_of(s.config_type)}
            configs[s.name] = s.config_type(**{k: v for k, v in values.items() if k in names})
        return cls(configs=configs, audits=REGISTRY.default_audits() if audits is None else tuple(audits))

    def steps(self) -> list[Step]:
        """The registry's steps this run takes, in order: every step that is not an audit, and the audits chosen."""
        return [s for s in REGISTRY if s.name not in REGISTRY.audits() or s.name in self.audits]

    def config(self, step: Step) -> Any:
        return self.configs.get(step.name) or step.config_type()

    def check(self) -> None:
        """One clear error for options that cannot work, before anything runs."""
        for s in REGISTRY:  # the steps' settings that check themselves (train's --plant-labels first)
            own_check = getattr(self.config(s), "check", None)
            if callable(own_check):
                own_check()
        train = self.config(pipeline.TRAIN)
        if not 0 < train.alpha < 1:
            raise AuditError(f"--alpha must be in (0, 1), got {train.alpha}")
        if train.n_models < MIN_MODELS_TO_FIT:
            raise AuditError(f"--n-models must be at least {MIN_MODELS_TO_FIT} to fit datamodels, got "
                             f"{train.n_models}")
        evaluate = self.config(pipeline.EVALUATE)
        if evaluate.n_subsets < 5:
            raise AuditError(f"--n-subsets (--eval-subsets) must be at least 5, got {evaluate.n_subsets}")
        for s in REGISTRY:
            n = getattr(self.config(s), "n", None)
            if n is not None and n < 1:
                raise AuditError(f"--n (--audit-targets) must be at least 1, got {n}")
        unknown = [a for a in self.audits if a not in REGISTRY.audits()]
        if unknown:
            raise AuditError(f"unknown audit(s) {', '.join(unknown)}: choose among {', '.join(REGISTRY.audits())}")

    def to_json(self) -> dict:
        return {"audits": list(self.audits),
                "settings": {name: config_json(c) for name, c in self.configs.items()}}


StepCallback = Callable[[Step, "Result | None", dict], None]  # None: skipped for the entry's "reason"
CostCallback = Callable[[Step, Cost, str], None]


def check_score_matrices(run_dir: Path, options: RunOptions) -> None:
    """One line, before anything trains, when an audit of this run ranks by a score matrix (``--methods``,
    ``--score-methods``) that the run has not got and no step before it writes (``gradients``: tracin, influence)."""
    coming: list[str] = []
    for step in options.steps():
        step.check_scores(run_dir, options.config(step), coming)
        coming += step.scores_written(options.config(step))


def skip_hint(step: Step, options: RunOptions) -> str:
    """The option of `audit run` that leaves ``step`` out: --audits with the other audits chosen."""
    others = ",".join(a for a in options.audits if a != step.name) or "''"
    return f"skip it with --audits {others}"


def run_pipeline(spec: str, run_dir: Path | str, options: RunOptions | None = None, *,
                 progress: Progress = SILENT, on_step: StepCallback | None = None,
                 on_cost: CostCallback | None = None) -> dict:
    """Run every registered step for ``spec`` into ``run_dir``, then write the findings
    (RUN/findings.json, RUN/findings.csv) and the report; returns (and saves) the per-step summaries,
    with the findings under ``"findings"``.

    ``on_step(step, result, entry)`` is called after each step (the command prints it); ``entry``
    is the step's line of run_summary.json (``skipped`` when its result was already current,
    ``step_seconds`` its cost: when skipped, the cost recorded when it last ran).
    ``on_cost(step, cost, hint)`` is called before an audit that retrains many models starts
    (:meth:`Step.cost`), with the option that would skip it, and at the end for each audit left out
    by default (``Step.in_run`` false), with how to run it.
    """
    options = options or RunOptions()
    options.check()
    run_dir = Path(run_dir)
    check_score_matrices(run_dir, options)
    path = run_dir / SUMMARY_FILE
    steps: dict[str, dict] = {}
    start = time.perf_counter()

    def save() -> None:
        write_json(path, {"dataset": spec, "options": options.to_json(), "steps": steps,
                          "seconds": round(time.perf_counter() - start, 2)})

    dataset = None
    imported = is_imported(run_dir)
    for step in options.steps():
        if imported and needs_models_of_its_own(step):
            steps[step.name] = {"skipped": True, "reason": IMPORTED_SKIP}
            save()
            if on_step:
                on_step(step, None, steps[step.name])
            continue
        runner = pipeline.TRAIN.for_dataset(spec) if step is pipeline.TRAIN else step
        config = options.config(step)
        t0 = time.perf_counter()
        if runner.is_current(run_dir, config):
            result = runner.load(run_dir)
            rec = runner.record(run_dir)
            entry = {**skipped_summary(runner, result), "skipped": True,
                     "step_seconds": rec.seconds if rec else None, "seconds_now": round(time.perf_counter() - t0, 2)}
        else:
            cost = runner.cost(run_dir, config) if step.name in REGISTRY.audits() else None
            if cost is not None and on_cost:
                on_cost(step, cost, skip_hint(step, options))
            try:
                result = runner.run(run_dir, config, dataset=dataset, progress=progress)
            except MissingWeights as exc:  # an import of one split's weights: the steps reading the other
                steps[step.name] = {"skipped": True, "reason": str(exc)}
                save()
                if on_step:
                    on_step(step, None, steps[step.name])
                continue
            entry = {**result.to_json(), "step_seconds": round(time.perf_counter() - t0, 2)}
        if step is pipeline.TRAIN:
            dataset = pipeline.dataset_of(pipeline.RunStore.open(run_dir, writable=False))
        steps[step.name] = entry
        save()
        if on_step:
            on_step(step, result, entry)
    if on_cost:
        for step in left_out(options):
            if imported and needs_models_of_its_own(step):
                continue
            try:
                cost = step.cost(run_dir, options.config(step))
            except AuditError:
                continue  # what it would cost cannot be said now; its own command says why
            if cost is not None:
                on_cost(step, cost, f"not part of `audit run` by default: add it with --audits "
                                    f"{','.join((*options.audits, step.name))} or run `audit {step.name} {run_dir}`")
    found = findings.refresh(run_dir)  # before the report, which may show them
    t0 = time.perf_counter()
    report = render_report(run_dir, progress=progress)
    steps["report"] = {"path": str(report), "step_seconds": round(time.perf_counter() - t0, 2)}
    save()
    return {"dataset": spec, "steps": steps, "report": str(report), "findings": found}


def left_out(options: RunOptions) -> list[Step]:
    """The audits `audit run` leaves out by default (``in_run`` false) that these options did not choose."""
    return [REGISTRY[name] for name in REGISTRY.audits() if not REGISTRY[name].in_run and name not in options.audits]


IMPORTED_SKIP = "the run was imported from a published release: this step trains models of its own (the " \
                "release's trainer on a CUDA GPU)"


def needs_models_of_its_own(step: Step) -> bool:
    """Does the step train models (retraining audits; leakage's full-data reference models)? An imported run
    has none to train; its evaluation uses the release's evaluation models instead."""
    return step is not pipeline.EVALUATE and (step.retrains or step.name == "leakage")


def skipped_summary(step: Step, result: Result) -> dict:
    """A skipped step's summary: its saved result, with nothing done now."""
    return step.skipped(result).to_json()


def fit_is_current(run_dir: Path | str) -> bool:
    """The saved datamodels are current with the default fit settings (see FitStep)."""
    return pipeline.FIT.is_current(run_dir)


def evaluation_is_current(run_dir: Path | str, n_subsets: int) -> bool:
    """evaluation.json scores the current datamodels on ``n_subsets`` held-out subsets."""
    return pipeline.EVALUATE.is_current(run_dir, pipeline.EvaluateConfig(n_subsets=n_subsets))
