"""`audit check`: a dataset gate for CI, from a run directory's saved results.

Thresholds come from ``audit.toml`` (its ``[check]`` table, or top-level keys), from
``[tool.audit.check]`` / ``[tool.audit]`` in ``pyproject.toml``, or from options (options
win). The checks are the ``metrics`` of the registered steps (audit.steps.REGISTRY):
each names its threshold key (``min_lds``, ``max_brittle_fraction``, ``max_mislabel_fraction``,
``max_geo_leak_fraction``, ``max_mturk_leak_fraction``, ``min_planted_recall``, and whatever a
new audit declares), its direction, the step file it reads and the settings it takes.
A configured check whose file is missing is bad input (AuditError); a file that exists
without a configured threshold is reported as information. ``run_checks`` returns the
result and writes RUN/audits/check.json; ``junit_xml`` renders it for CI systems.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any, Mapping

import tomllib

from audit import scores
from audit.contract import Metric, Param, Result, Step, unreadable
from audit.errors import AuditError
from audit.jsonio import atomic_write_text, read_json, write_json
from audit.steps import REGISTRY
from audit.store import RUN_JSON

CONFIG_FILE = "audit.toml"
PYPROJECT = "pyproject.toml"
CHECK_JSON = "check.json"
METHODS_SUPPORT = ("datamodels", "representation", "random")
METHODS_LEAK = ("datamodels", "representation")
GROUPS = ("all", "train", "test")


# ----- validating thresholds and settings ------------------------------------------------
def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise AuditError(f"threshold {key} = {value!r} is not a finite number; write e.g. {key} = 0.1")
    return float(value)


def _validate(key: str, kind: str, value: Any, choices: tuple[str, ...] = ()) -> Any:
    """One threshold or setting, type- and range-checked; AuditError naming the key otherwise."""
    if kind == "method":  # a built-in ranking or a score matrix's name (the run says whether it has it)
        if not isinstance(value, str) or (value not in choices and not scores.NAME_PATTERN.fullmatch(value)):
            raise AuditError(f"{key} = {value!r}; use one of {', '.join(choices)} or a score matrix's name")
        return value
    if kind == "choice":
        if value not in choices:
            raise AuditError(f"{key} = {value!r}; use one of {', '.join(choices)}")
        return value
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise AuditError(f"{key} = {value!r}; use a whole number >= 0")
        return int(value)
    v = _number(key, value)
    if kind == "fraction" and not 0.0 <= v <= 1.0:
        raise AuditError(f"{key} = {value!r} is a fraction; use a value between 0 and 1")
    if kind == "lds" and not -1.0 <= v <= 1.0:
        raise AuditError(f"{key} = {value!r}; LDS is a Spearman correlation between -1 and 1")
    if kind == "correlation" and not -1.0 <= v <= 1.0:
        raise AuditError(f"{key} = {value!r}; use a correlation between -1 and 1")
    if kind == "miles" and v <= 0:
        raise AuditError(f"{key} = {value!r}; use a distance in miles > 0")
    return v


# ----- the checks: every registered step's metrics ----------------------------------------
def _collect_params() -> dict[str, Param]:
    out: dict[str, Param] = {}
    for step, metric in REGISTRY.metrics():
        for name, param in metric.params.items():
            if name in out and out[name] != param:
                raise TypeError(f"check setting {name} is declared twice with different meanings")
            out[name] = param
    return out


METRICS: tuple[Metric, ...] = tuple(m for _, m in REGISTRY.metrics())
OWNER: dict[str, Step] = {m.key: s for s, m in REGISTRY.metrics()}
PARAMS: dict[str, Param] = _collect_params()
THRESHOLD_KEYS = tuple(m.key for m in METRICS)
KNOWN_KEYS = THRESHOLD_KEYS + tuple(PARAMS)


# ----- configuration ---------------------------------------------------------------------
def _load_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise AuditError(f"{path} not found; write it or leave --config out") from None
    except tomllib.TOMLDecodeError as exc:
        raise AuditError(f"{path} is not valid TOML ({exc}); fix the file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"{path} cannot be read ({type(exc).__name__}); fix the file") from None


def _section(doc: dict, path: Path) -> dict | None:
    """The check settings of a parsed file, or None when it has none."""
    if path.name == PYPROJECT:
        doc = doc.get("tool", {}).get("audit")
        if doc is None:
            return None
        if not isinstance(doc, dict):
            raise AuditError(f"{path} [tool.audit] is not a table; write [tool.audit.check] with the thresholds")
    section = doc.get("check")
    if section is None:
        return {k: v for k, v in doc.items() if not isinstance(v, dict)}  # tables belong to other commands
    if not isinstance(section, dict):
        raise AuditError(f"{path}: 'check' must be a table ([check]) of thresholds")
    return section


def find_config(start: Path | str | None = None) -> Path | None:
    """``audit.toml``, or a ``pyproject.toml`` with ``[tool.audit]``, in ``start`` (cwd) or above."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder / CONFIG_FILE
        pyproject = folder / PYPROJECT
        if pyproject.is_file():
            try:
                with open(pyproject, "rb") as fh:
                    doc = tomllib.load(fh)
            except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
                continue  # a broken pyproject of some other project is not ours to judge
            if isinstance(doc.get("tool"), dict) and "audit" in doc["tool"]:
                return pyproject
    return None


def load_thresholds(path: Path | str) -> dict:
    """The check settings of one file (audit.toml or pyproject.toml), validated."""
    path = Path(path)
    section = _section(_load_toml(path), path)
    if section is None:
        raise AuditError(f"{path} has no [tool.audit] table; add [tool.audit.check] with the thresholds")
    return validate_thresholds(section, str(path))


def validate_thresholds(values: Mapping[str, Any], source: str = "options") -> dict:
    """Known keys only, each type- and range-checked; None values are dropped."""
    out: dict = {}
    for key, value in values.items():
        if value is None:
            continue
        if key not in KNOWN_KEYS:
            near = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            hint = f"did you mean {near[0]}?" if near else f"known keys: {', '.join(KNOWN_KEYS)}"
            raise AuditError(f"{source}: unknown check setting '{key}'; {hint}")
        if key in PARAMS:
            out[key] = _validate(key, PARAMS[key].kind, value, PARAMS[key].choices)
        else:
            out[key] = _validate(key, next(m.kind for m in METRICS if m.key == key), value)
    return out


def resolve_thresholds(config: Path | str | None = None, options: Mapping[str, Any] | None = None,
                       cwd: Path | str | None = None) -> tuple[dict, str]:
    """Thresholds from ``config`` (or the file found from ``cwd`` up), overridden by ``options``.

    Returns (thresholds, where they came from).
    """
    path = Path(config) if config is not None else find_config(cwd)
    from_file = load_thresholds(path) if path is not None else {}
    from_options = validate_thresholds(options or {}, "options")
    sources = [str(path)] if path is not None else []
    if from_options:
        sources.append("options")
    return {**from_file, **from_options}, " + ".join(sources) or "none"


# ----- running the checks ----------------------------------------------------------------
def _source(run_dir: Path, metric: Metric) -> Path | None:
    """The first of the metric's files (roles of its step) that exists."""
    for role in metric.file_roles:
        path = OWNER[metric.key].path(run_dir, role)
        if path.is_file():
            return path
    return None


def run_checks(run_dir: Path | str, thresholds: Mapping[str, Any], *, source: str = "options",
               save: bool = True) -> dict:
    """Evaluate every configured check (and report the others whose data exists) for a run.

    ``thresholds``: threshold keys (``min_lds``, ``max_brittle_fraction``, ...; see
    ``METRICS``) and settings (``support_k``, ``leak_miles``, ...; see ``PARAMS``). Raises
    AuditError for bad thresholds, a configured check whose data is missing, or no
    threshold at all. Returns ``{"run", "passed", "n_checks", "n_failed", "checks": [...]}``
    (each check: key, name, measure, direction, threshold, value, status pass/fail/info,
    file, details) and, with ``save``, writes it to RUN/audits/check.json.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RUN_JSON).is_file():
        raise AuditError(f"{run_dir} is not a run directory (no {RUN_JSON}); pass the folder `audit train` made")
    t = validate_thresholds(thresholds, source)
    configured = [m for m in METRICS if m.key in t]
    if not configured:
        raise AuditError(f"no thresholds configured; write {CONFIG_FILE} with a [check] table "
                         f"(e.g. min_lds = 0.05) or pass options such as --min-lds 0.05")
    missing = [m for m in configured if _source(run_dir, m) is None]
    if missing:
        m = missing[0]
        raise AuditError(f"{m.key} is configured but {OWNER[m.key].path(run_dir, m.file_roles[0])} does not exist; "
                         f"run {_producer(m, run_dir)} first or drop the threshold")
    params = {name: t.get(name, spec.default) for name, spec in PARAMS.items()}
    checks = []
    for metric in METRICS:
        path = _source(run_dir, metric)
        if path is None:
            continue
        p = {name: params[name] for name in metric.params}
        threshold = t.get(metric.key)
        try:
            value, details = metric.extract(run_dir, path, p)
        except AuditError:
            if threshold is not None:
                raise
            continue  # not configured and not readable as this check's data: nothing to report
        if threshold is None:
            status = "info"
        elif value is None:
            status = "fail"
            details = {**details, "note": details.get("note", "no value (undefined or not computed)")}
        elif metric.direction == "min":
            status = "pass" if value >= threshold else "fail"
        else:
            status = "pass" if value <= threshold else "fail"
        checks.append({"key": metric.key, "name": metric.name, "measure": metric.label(p),
                       "direction": metric.direction, "threshold": threshold, "value": value, "status": status,
                       "file": str(path.relative_to(run_dir)), "settings": p, "details": details})
    failed = [c for c in checks if c["status"] == "fail"]
    result = {"run": str(run_dir), "source": source, "passed": not failed,
              "n_checks": sum(c["status"] != "info" for c in checks), "n_failed": len(failed),
              "thresholds": dict(t), "checks": checks}
    if save:
        write_json(check_path(run_dir), result)
    return result


def _producer(metric: Metric, run_dir: Path) -> str:
    command, _, note = metric.producer.replace("RUN", str(run_dir)).partition(" (")
    return f"`{command}`" + (f" ({note}" if note else "")


def check_path(run_dir: Path | str) -> Path:
    """RUN/audits/check.json: the gate's last result (the report shows it)."""
    return Path(run_dir) / "audits" / CHECK_JSON


class CheckOutcome(Result):
    """One check of check.json."""

    key: str
    name: str
    measure: str = ""
    direction: str
    threshold: float | None = None
    value: float | None = None
    status: str  # pass | fail | info
    file: str = ""


class CheckReport(Result):
    """RUN/audits/check.json as written by :func:`run_checks`."""

    passed: bool
    n_checks: int
    n_failed: int
    source: str = ""
    checks: list[CheckOutcome]


def read_check_report(run_dir: Path | str) -> CheckReport | None:
    """The gate's last result (None when `audit check` has not run); AuditError when unreadable."""
    path = check_path(run_dir)
    if not path.is_file():
        return None
    try:
        return CheckReport.from_json(read_json(path))  # type: ignore[return-value]
    except (OSError, ValueError, TypeError) as exc:
        raise unreadable(path, "audit check", exc) from None


def exit_code(result: Mapping[str, Any]) -> int:
    """0 when every configured check passed, 1 when one failed."""
    return 0 if result["passed"] else 1


def junit_xml(result: Mapping[str, Any]) -> str:
    """JUnit XML: one testcase per configured check, a <failure> for each failed one."""
    import xml.etree.ElementTree as ET

    cases = [c for c in result["checks"] if c["status"] != "info"]
    failures = sum(c["status"] == "fail" for c in cases)
    suites = ET.Element("testsuites", name="audit check", tests=str(len(cases)), failures=str(failures))
    suite = ET.SubElement(suites, "testsuite", name=f"audit check {result['run']}", tests=str(len(cases)),
                          failures=str(failures), errors="0", skipped="0")
    for c in cases:
        case = ET.SubElement(suite, "testcase", classname="audit.check", name=c["key"], time="0")
        text = f"{c['measure']} = {_fmt(c['value'])}, threshold {_op(c)} {_fmt(c['threshold'])} ({c['file']})"
        if c["status"] == "fail":
            failure = ET.SubElement(case, "failure", message=text, type="threshold")
            failure.text = text
        else:
            ET.SubElement(case, "system-out").text = text
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(result: Mapping[str, Any], path: Path | str) -> None:
    """Write :func:`junit_xml` atomically; AuditError when the path cannot take a file."""
    try:
        atomic_write_text(path, junit_xml(result))
    except OSError as exc:
        raise AuditError(f"cannot write the JUnit file {path} ({exc.strerror or type(exc).__name__}); "
                         "pass --junit a writable file path") from None


def _op(check: Mapping[str, Any]) -> str:
    return ">=" if check["direction"] == "min" else "<="


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def describe(check: Mapping[str, Any]) -> tuple[str, str, str]:
    """(value, threshold, status) strings for a table row."""
    threshold = "-" if check["threshold"] is None else f"{_op(check)} {_fmt(check['threshold'])}"
    return _fmt(check["value"]), threshold, check["status"]
