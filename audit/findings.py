"""The findings of a run: what every step says is wrong with which example, ranked and saved.

Each registered step turns its saved result into per-example :class:`audit.contract.Finding`
values (``Step.findings``). This module collects them from every step of a run, lets them
support each other (a training example that is both influential and a likely label error; a
test prediction that rests on likely label errors), ranks them, and writes RUN/findings.json
and RUN/findings.csv. `audit run` writes them at the end, each audit command after it finishes,
`audit findings RUN` prints them, `audit export` hands them to labelling tools.

Ranking: severity (high, medium, low), then the issue (leaked test images, likely label errors,
influential training examples, brittle predictions, label-sensitive predictions: the order in
which they say something is wrong with the data rather than with a model's reliance on it), then
the score (whose meaning is the issue's own), then split and index.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

from audit.audits.influence import INFLUENCE_ISSUE
from audit.audits.label_errors import LABEL_ERROR_ISSUE
from audit.audits.leakage_audit import LEAK_ISSUE
from audit.audits.support import BRITTLE_ISSUE, LABEL_SENSITIVE_ISSUE
from audit.contract import SEVERITIES, Finding, Registry
from audit.errors import AuditError
from audit.jsonio import read_json, write_csv, write_json
from audit.steps import REGISTRY

FINDINGS_JSON, FINDINGS_CSV = "findings.json", "findings.csv"
SUMMARY_FILE = "run_summary.json"  # every step's summary of the last `audit run` (written by audit.workflow)
ISSUES = (LEAK_ISSUE, LABEL_ERROR_ISSUE, INFLUENCE_ISSUE, BRITTLE_ISSUE, LABEL_SENSITIVE_ISSUE)
WHAT_TO_DO = {  # per issue, for an overview (each finding says it for its own example)
    LEAK_ISSUE: "remove the leaked test images (or their training copies) and measure test accuracy again",
    LABEL_ERROR_ISSUE: "look at each image: relabel it to the suggested class or remove it if it is ambiguous",
    INFLUENCE_ISSUE: "check their labels and sources: many test predictions lean on them",
    BRITTLE_ISSUE: "check the few training examples each rests on; collect more data like these test images",
    LABEL_SENSITIVE_ISSUE: "check the labels of the training examples each rests on",
}
CSV_COLUMNS = ("rank", "index", "split", "issue", "severity", "score", "given_label", "predicted_label", "evidence",
               "suggested_action", "related", "rule", "step")


@dataclass(frozen=True)
class Findings:
    """A run's ranked findings, the issues its steps look for, and the steps whose results could not be read."""

    items: tuple[Finding, ...]
    looked_for: tuple[str, ...] = ()  # issues of the steps that have a saved result
    notes: dict[str, str] = field(default_factory=dict)  # step -> why its findings are missing
    skipped: dict[str, str] = field(default_factory=dict)  # step -> why `audit run` did not run it (no result)
    kept: bool = False  # the saved findings files were kept (a result could not be read), not rewritten

    def of(self, issue: str) -> list[Finding]:
        return [f for f in self.items if f.issue == issue]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{issue: {severity: n}}`` for every issue looked for or found."""
        by = Counter((f.issue, f.severity) for f in self.items)
        issues = [i for i in order_issues({*self.looked_for, *(f.issue for f in self.items)})]
        return {i: {s: by[(i, s)] for s in SEVERITIES} for i in issues}


def order_issues(issues: Iterable[str]) -> list[str]:
    """Issues in ranking order (known ones first, others by name)."""
    return sorted(set(issues), key=lambda i: (ISSUES.index(i) if i in ISSUES else len(ISSUES), i))


def rank_key(f: Finding) -> tuple:
    issue = ISSUES.index(f.issue) if f.issue in ISSUES else len(ISSUES)
    return SEVERITIES.index(f.severity), issue, -f.score, f.split, f.index


def collect(run_dir: Path | str, registry: Registry = REGISTRY) -> Findings:
    """Every step's findings from its saved result, cross-referenced and ranked. A step whose result
    cannot be read costs only its own findings (named in ``notes``)."""
    run_dir = Path(run_dir)
    items: list[Finding] = []
    looked_for: list[str] = []
    notes: dict[str, str] = {}
    ran = _run_summary_steps(run_dir)
    skipped = {name: str(entry["reason"]) for name, entry in ran.items()
               if isinstance(entry, dict) and entry.get("skipped") and entry.get("reason")}
    for step in registry:
        if not step.issues or not step.path(run_dir).exists():
            continue
        skipped.pop(step.name, None)  # run since (its own command)
        looked_for += step.issues
        try:
            items += step.findings(run_dir)
        except AuditError as exc:
            notes[step.name] = str(exc)
    skipped = {name: why for name, why in skipped.items() if name in registry.audits()}
    return Findings(tuple(sorted(cross_reference(items), key=rank_key)), tuple(looked_for), notes, skipped)


def _run_summary_steps(run_dir: Path) -> dict:
    """The steps of the last `audit run` (RUN/run_summary.json), or {} when there is none or it is unreadable."""
    try:
        steps = read_json(run_dir / SUMMARY_FILE).get("steps", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return steps if isinstance(steps, dict) else {}


def _raise(severity: str) -> str:
    return SEVERITIES[max(0, SEVERITIES.index(severity) - 1)]


def cross_reference(items: Sequence[Finding]) -> list[Finding]:
    """Findings that support each other, each raised one severity level: an influential training example
    that is also a label error (its wrong label reaches many test predictions), and a brittle or
    label-sensitive test prediction at least a third of whose training examples are label errors (it
    rests on wrong labels). Every finding lists the other issues found on the same example
    (``details['also']``)."""
    errors = {f.index: f for f in items if f.issue == LABEL_ERROR_ISSUE and f.split == "train"}
    issues_of: dict[tuple[str, int], list[str]] = {}
    for f in items:
        issues_of.setdefault(f.key, []).append(f.issue)
    out = []
    for f in items:
        update: dict = {"details": {**f.details, "also": [i for i in issues_of[f.key] if i != f.issue]}}
        if f.issue == INFLUENCE_ISSUE and f.index in errors:
            e = errors[f.index]
            update.update(severity=_raise(f.severity), rule=f.rule + "; raised one level when also a label error",
                          evidence=f"{f.evidence}; also a likely label error (models predict {e.predicted_name!r})",
                          predicted_label=e.predicted_label, predicted_name=e.predicted_name)
        elif f.split == "test" and f.issue in (BRITTLE_ISSUE, LABEL_SENSITIVE_ISSUE):
            wrong = [j for j in f.related if j in errors]
            if wrong and 3 * len(wrong) >= len(f.related):
                update.update(severity=_raise(f.severity),
                              rule=f.rule + "; raised one level when a third of those examples are label errors",
                              evidence=f"{f.evidence}; label errors among them: {', '.join(map(str, wrong))}")
                update["details"]["likely_label_errors"] = wrong
        out.append(f.model_copy(update=update))
    return out


# ----- files -----------------------------------------------------------------------------------
def write(run_dir: Path | str, found: Findings) -> tuple[Path, Path]:
    """RUN/findings.json (every finding, typed, with counts and notes) and RUN/findings.csv (one row each)."""
    run_dir = Path(run_dir)
    rows = [{"rank": i, **f.to_json()} for i, f in enumerate(found.items, 1)]
    write_json(run_dir / FINDINGS_JSON, {"counts": found.counts(), "notes": found.notes, "skipped": found.skipped,
                                         "findings": rows})
    write_csv(run_dir / FINDINGS_CSV, ({"rank": i, "index": f.index, "split": f.split, "issue": f.issue,
                                        "severity": f.severity, "score": f.score, "given_label": f.given_name,
                                        "predicted_label": f.predicted_name, "evidence": f.evidence,
                                        "suggested_action": f.action, "related": " ".join(map(str, f.related)),
                                        "rule": f.rule, "step": f.step}
                                       for i, f in enumerate(found.items, 1)), CSV_COLUMNS)
    return run_dir / FINDINGS_JSON, run_dir / FINDINGS_CSV


def refresh(run_dir: Path | str, registry: Registry = REGISTRY) -> Findings:
    """Collect the run's findings and :func:`save` them."""
    return save(run_dir, collect(run_dir, registry))


def save(run_dir: Path | str, found: Findings) -> Findings:
    """Write RUN/findings.json and RUN/findings.csv, unless :func:`keeps_saved` (then ``found``, marked kept)."""
    if keeps_saved(run_dir, found):
        return replace(found, kept=True)
    write(run_dir, found)
    return found


def keeps_saved(run_dir: Path | str, found: Findings) -> bool:
    """True when an audit's result could not be read (``found.notes``) and findings were saved before: those
    files may hold that audit's findings, which partial ones must not replace."""
    return bool(found.notes) and any((Path(run_dir) / name).exists() for name in (FINDINGS_JSON, FINDINGS_CSV))


def unread_error(found: Findings, issues: Iterable[str] | None = None,
                 registry: Registry = REGISTRY) -> AuditError | None:
    """One line for findings that could not all be read (of ``issues``, default any): the first unreadable
    result and its fix, and whether the saved findings were kept (``found.kept``, as :func:`save` left them);
    None when every wanted finding was read."""
    wanted = None if issues is None else set(issues)
    notes = {step: why for step, why in found.notes.items() if wanted is None or wanted & set(registry[step].issues)}
    if not notes:
        return None
    step, why = next(iter(notes.items()))
    kept = f"; {FINDINGS_JSON} and {FINDINGS_CSV} were kept as they were" if found.kept else ""
    more = f" (and {len(notes) - 1} more audit(s))" if len(notes) > 1 else ""
    return AuditError(f"the {step} findings could not be read{more}: {why}{kept}")


def load(run_dir: Path | str) -> list[Finding] | None:
    """The findings saved in RUN/findings.json, or None when there are none; AuditError when unreadable."""
    path = Path(run_dir) / FINDINGS_JSON
    if not path.is_file():
        return None
    try:
        return [Finding.from_json(row) for row in read_json(path)["findings"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"{path} is unreadable ({type(exc).__name__}); run `audit findings {run_dir}` "
                         "again") from None


# ----- for people --------------------------------------------------------------------------------
def shorten(text: str, width: int = 110) -> str:
    return text if len(text) <= width else text[:width - 1].rstrip() + "…"


def summary_lines(found: Findings, per_issue: int = 1) -> list[str]:
    """The "what we found" block: per issue, counts by severity and the top finding(s); plain text."""
    lines = []
    for issue, counts in found.counts().items():
        n = sum(counts.values())
        if not n:
            lines.append(f"{issue}: none")
            continue
        by = ", ".join(f"{c} {s}" for s, c in counts.items() if c)
        top = found.of(issue)[:per_issue]
        lines.append(f"{issue}: {n} ({by}); first: " + shorten(top[0].headline))
        lines += ["    " + shorten(f.headline) for f in top[1:]]
    for step, why in found.notes.items():
        lines.append(f"{step}: findings not read ({shorten(why)})")
    if found.notes and found.kept:
        lines.append(f"{FINDINGS_JSON} and {FINDINGS_CSV} kept as they were (they may hold the findings not read)")
    for step, why in found.skipped.items():
        lines.append(f"{step}: not run ({shorten(why, 160)})")
    return lines or ["no audit results yet: run `audit run` or an audit (brittleness, mislabel, leakage, influence, "
                     "label-errors)"]
