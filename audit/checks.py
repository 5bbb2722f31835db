"""`audit check`: a dataset gate for CI, from a run directory's saved results.

Thresholds come from ``audit.toml`` (its ``[check]`` table, or top-level keys), from
``[tool.audit.check]`` / ``[tool.audit]`` in ``pyproject.toml``, or from options (options
win). Each check reads one saved result of the run:

=====================  =========================================  ======================================
threshold key          value                                       read from
=====================  =========================================  ======================================
min_lds                mean datamodel LDS of ``lds_group``          evaluation.json
max_brittle_fraction   test targets with certified support ≤ k      audits/brittleness.json
max_mislabel_fraction  test targets with label-flip support ≤ k     audits/mislabel.json
max_geo_leak_fraction  test images with a candidate ≤ d miles       audits/leakage_geo.csv (leakage.json)
max_mturk_leak_fraction  annotated test images with score ≥ s       audits/leakage_mturk.json
min_planted_recall     planted duplicates found in the top k        audits/leakage.json
=====================  =========================================  ======================================

The table ``METRICS`` is the one place that maps a threshold to its file and extractor.
A configured check whose file is missing is bad input (AuditError); a file that exists
without a configured threshold is reported as information. ``run_checks`` returns the
result and writes RUN/audits/check.json; ``junit_xml`` renders it for CI systems.
"""

from __future__ import annotations

import csv
import difflib
import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from audit.errors import AuditError
from audit.jsonio import atomic_write_text, read_json, write_json

CONFIG_FILE = "audit.toml"
PYPROJECT = "pyproject.toml"
CHECK_JSON = "check.json"
METHODS_SUPPORT = ("datamodels", "representation", "random")
METHODS_LEAK = ("datamodels", "representation")
GROUPS = ("all", "train", "test")


# ----- the parameters a check may take ---------------------------------------------------
@dataclass(frozen=True)
class Param:
    """A setting of a check (e.g. k for the support check): its default and how to validate it."""

    kind: str  # "fraction" | "lds" | "count" | "miles" | "choice"
    default: Any
    help: str
    choices: tuple[str, ...] = ()


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise AuditError(f"threshold {key} = {value!r} is not a finite number; write e.g. {key} = 0.1")
    return float(value)


def _validate(key: str, kind: str, value: Any, choices: tuple[str, ...] = ()) -> Any:
    """One threshold or setting, type- and range-checked; AuditError naming the key otherwise."""
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
    if kind == "miles" and v <= 0:
        raise AuditError(f"{key} = {value!r}; use a distance in miles > 0")
    return v


# ----- extractors: (run_dir, path, params) -> (value, details) -----------------------------
def _read(path: Path, what: str) -> Any:
    try:
        return read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AuditError(f"{path} is unreadable ({type(exc).__name__}); run `{what}` again") from None


def _require(data: Any, keys: tuple, path: Path, what: str) -> Any:
    node = data
    for key in keys:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            node = node[key]
        else:
            where = ".".join(str(k) for k in keys)
            raise AuditError(f"{path} has no '{where}'; it was written by another version: run `{what}` again")
    return node


def lds_value(run_dir: Path, path: Path, p: Mapping[str, Any]) -> tuple[float | None, dict]:
    """Mean LDS (Spearman, held-out models) of a target group from evaluation.json."""
    what = f"audit evaluate {run_dir}"
    data = _read(path, what)
    group = _require(data, (p["lds_group"],), path, what)
    value = _require(group, ("lds_mean",), path, what)
    return _finite(value), {"group": p["lds_group"], "n_targets": group.get("n_targets") if isinstance(group, dict) else None,
                            "baseline_lds_mean": group.get("baseline_lds_mean") if isinstance(group, dict) else None}


def _support_fraction(run_dir: Path, path: Path, k: int, method: str, command: str) -> tuple[float | None, dict]:
    """Fraction of audited test targets whose certified support (method's ranking) is ≤ k."""
    what = f"audit {command} {run_dir}"
    data = _read(path, what)
    records = _require(data, ("targets",), path, what)
    if not isinstance(records, list) or not records:
        raise AuditError(f"{path} lists no targets; run `{what}` again")
    max_k = _largest_k(data, records, method)
    if max_k is None:
        raise AuditError(f"{path} does not say which k the audit tried, so support <= {k} cannot be decided; "
                         f"run `{what}` again")
    if k > max_k:
        raise AuditError(f"k = {k} lies beyond the largest k the audit tried ({max_k} in {path}), so it cannot "
                         f"decide whether a support is <= {k}; set the check's k to at most {max_k} or run "
                         f"`{what} --k-grid ...` up to {k}")
    small = 0
    for i, rec in enumerate(records):
        res = _require(rec, ("methods", method), path, f"{what} --methods {method}")
        certified = _require(res, ("certified",), path, what)
        if not isinstance(certified, bool):
            raise AuditError(f"{path}: targets[{i}] has certified = {certified!r}, not true/false; run `{what}` again")
        raw = res.get("certified_support")
        size = _finite(raw)
        if certified and size is None:
            raise AuditError(f"{path}: targets[{i}] is certified but its certified_support is {raw!r}, not a "
                             f"number; run `{what}` again")
        if certified and size <= k:
            small += 1
    return small / len(records), {"k": k, "method": method, "n_targets": len(records), "n_at_most_k": small}


def _largest_k(data: Any, records: list, method: str) -> int | None:
    """The largest k of the audit's grid (summary.max_k, else the targets' curves), or None."""
    summary = data.get("summary") if isinstance(data, dict) else None
    value = summary.get("max_k") if isinstance(summary, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    ks = set()
    for rec in records:
        curve = rec.get("methods", {}).get(method, {}).get("curve") if isinstance(rec, dict) else None
        if isinstance(curve, dict):
            ks.update(int(k) for k in curve if str(k).isdigit())
    return max(ks) if ks else None


def brittle_value(run_dir: Path, path: Path, p: Mapping[str, Any]) -> tuple[float | None, dict]:
    return _support_fraction(run_dir, path, p["support_k"], p["support_method"], "brittleness")


def mislabel_value(run_dir: Path, path: Path, p: Mapping[str, Any]) -> tuple[float | None, dict]:
    return _support_fraction(run_dir, path, p["mislabel_k"], p["support_method"], "mislabel")


def geo_value(run_dir: Path, path: Path, p: Mapping[str, Any]) -> tuple[float | None, dict]:
    """Fraction of test images with a leakage candidate within ``leak_miles`` (FMoW geodesic check).

    Read from leakage_geo.csv (nearest candidate distance per test image: any d works); when
    only leakage.json exists, d must be on its distance grid.
    """
    what = f"audit leakage {run_dir}"
    d, method = float(p["leak_miles"]), p["leak_method"]
    column = f"{method}_nearest_candidate_miles"
    if path.name.endswith(".csv"):
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if column not in (reader.fieldnames or []):
                    raise AuditError(f"{path} has no column {column}; run `{what}` again")
                dist = []
                for row in reader:
                    raw = (row.get(column) or "").strip()
                    dist.append(float(raw) if raw else math.inf)
        except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
            raise AuditError(f"{path} is unreadable ({type(exc).__name__}); run `{what}` again") from None
        if not dist:
            raise AuditError(f"{path} lists no test images; run `{what}` again")
        n = sum(x <= d for x in dist)
        return n / len(dist), {"d_miles": d, "method": method, "n_test": len(dist), "n_within": n}
    data = _read(path, what)
    if not isinstance(data, dict) or "geo" not in data:
        raise AuditError(f"{path} has no geodesic check (the dataset has no lat/lon); "
                         "max_geo_leak_fraction applies to FMoW-like data only")
    grid = [float(x) for x in _require(data, ("geo", "d_miles"), path, what)]
    fracs = _require(data, ("geo", "frac_with_candidate", method), path, what)
    for x, f in zip(grid, fracs):
        if math.isclose(x, d):
            return _finite(f), {"d_miles": d, "method": method}
    raise AuditError(f"leak_miles = {d:g} is not on the distance grid of {path} ({', '.join(f'{x:g}' for x in grid)}) "
                     f"and leakage_geo.csv is missing; use a grid value or run `{what} --d-grid ...` again")


def mturk_value(run_dir: Path, path: Path, p: Mapping[str, Any]) -> tuple[float | None, dict]:
    """Fraction of the annotated test images whose MTurk leakage score is ≥ ``mturk_score``."""
    what = f"audit leakage {run_dir} --mturk-results FILE"
    tests = _require(_read(path, what), ("tests",), path, what)
    if not isinstance(tests, list) or not tests:
        raise AuditError(f"{path} has no annotated test images; run `{what}` again")
    s = float(p["mturk_score"])
    scores = [_finite(_require(t, ("leakage_score",), path, what)) for t in tests]
    n = sum(v is not None and v >= s for v in scores)
    return n / len(scores), {"min_score": s, "n_annotated": len(scores), "n_at_least": n}


def planted_value(run_dir: Path, path: Path, p: Mapping[str, Any]) -> tuple[float | None, dict]:
    """Recall@k of planted duplicates (the run's planted check, or the run's own planted copies)."""
    what = f"audit leakage {run_dir} --plant N"
    data = _read(path, what)
    section = data.get("planted_check") or data.get("planted") if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise AuditError(f"{path} has no planted-duplicate results; run `{what}` first")
    recall = _require(section, ("methods", p["planted_method"], "recall_at_k"), path, what)
    k = p["planted_k"]
    key = str(k) if k else max(recall, key=int)
    if key not in recall:
        raise AuditError(f"planted_k = {k}: {path} has recall at k = {', '.join(recall)} only; "
                         "use one of those")
    return _finite(recall[key]), {"k": int(key), "method": p["planted_method"],
                                  "n_planted": section.get("n_planted")}


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# ----- the table of checks ---------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """One check: its threshold key, direction, where its value lives and how to read it."""

    key: str  # threshold key in audit.toml, e.g. "min_lds"
    name: str  # shown in the table and in JUnit
    direction: str  # "min": value must be >= threshold; "max": value must be <= threshold
    kind: str  # threshold kind for validation ("fraction" | "lds")
    files: tuple[str, ...]  # candidates relative to RUN, the first that exists is read
    extract: Callable[[Path, Path, Mapping[str, Any]], tuple[float | None, dict]]
    params: tuple[str, ...]  # the PARAMS this check uses
    label: Callable[[Mapping[str, Any]], str]  # what the value measures, for people


PARAMS: dict[str, Param] = {
    "lds_group": Param("choice", "test", "target group for min_lds", GROUPS),
    "support_k": Param("count", 20, "k for max_brittle_fraction: support of at most k examples counts as brittle"),
    "mislabel_k": Param("count", 20, "k for max_mislabel_fraction"),
    "support_method": Param("choice", "datamodels", "ranking whose certified support is checked", METHODS_SUPPORT),
    "leak_miles": Param("miles", 0.25, "d for max_geo_leak_fraction (miles)"),
    "leak_method": Param("choice", "datamodels", "candidate ranking for max_geo_leak_fraction", METHODS_LEAK),
    "mturk_score": Param("fraction", 0.5, "s for max_mturk_leak_fraction: leakage score at least s counts"),
    "planted_k": Param("count", 0, "k for min_planted_recall (0: the largest k saved)"),
    "planted_method": Param("choice", "datamodels", "candidate ranking for min_planted_recall", METHODS_LEAK),
}

METRICS: tuple[Metric, ...] = (
    Metric("min_lds", "datamodel LDS", "min", "lds", ("evaluation.json",), lds_value, ("lds_group",),
           lambda p: f"mean LDS ({p['lds_group']} targets)"),
    Metric("max_brittle_fraction", "brittle predictions", "max", "fraction", ("audits/brittleness.json",),
           brittle_value, ("support_k", "support_method"),
           lambda p: f"test targets with certified support <= {p['support_k']} ({p['support_method']})"),
    Metric("max_mislabel_fraction", "label-flip sensitivity", "max", "fraction", ("audits/mislabel.json",),
           mislabel_value, ("mislabel_k", "support_method"),
           lambda p: f"test targets flipped by relabelling <= {p['mislabel_k']} ({p['support_method']})"),
    Metric("max_geo_leak_fraction", "geographic leakage", "max", "fraction",
           ("audits/leakage_geo.csv", "audits/leakage.json"), geo_value, ("leak_miles", "leak_method"),
           lambda p: f"test images with a candidate within {p['leak_miles']:g} miles ({p['leak_method']})"),
    Metric("max_mturk_leak_fraction", "annotated leakage", "max", "fraction", ("audits/leakage_mturk.json",),
           mturk_value, ("mturk_score",),
           lambda p: f"annotated test images with MTurk leakage score >= {p['mturk_score']:g}"),
    Metric("min_planted_recall", "planted duplicates found", "min", "fraction", ("audits/leakage.json",),
           planted_value, ("planted_k", "planted_method"),
           lambda p: f"planted copies in the top {p['planted_k'] or 'k'} candidates ({p['planted_method']})"),
)
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
    for rel in metric.files:
        if (run_dir / rel).is_file():
            return run_dir / rel
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
    if not (run_dir / "run.json").is_file():
        raise AuditError(f"{run_dir} is not a run directory (no run.json); pass the folder `audit train` made")
    t = validate_thresholds(thresholds, source)
    configured = [m for m in METRICS if m.key in t]
    if not configured:
        raise AuditError(f"no thresholds configured; write {CONFIG_FILE} with a [check] table "
                         f"(e.g. min_lds = 0.05) or pass options such as --min-lds 0.05")
    missing = [m for m in configured if _source(run_dir, m) is None]
    if missing:
        m = missing[0]
        raise AuditError(f"{m.key} is configured but {run_dir}/{m.files[0]} does not exist; run "
                         f"{_producer(m, run_dir)} first or drop the threshold")
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
            details = {**details, "note": "no value (undefined or not computed)"}
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
        write_json(run_dir / "audits" / CHECK_JSON, result)
    return result


def _producer(metric: Metric, run_dir: Path) -> str:
    return {"min_lds": f"`audit evaluate {run_dir}`", "max_brittle_fraction": f"`audit brittleness {run_dir}`",
            "max_mislabel_fraction": f"`audit mislabel {run_dir}`",
            "max_geo_leak_fraction": f"`audit leakage {run_dir}` (FMoW or data with lat/lon)",
            "max_mturk_leak_fraction": f"`audit leakage {run_dir} --mturk-results FILE`",
            "min_planted_recall": f"`audit leakage {run_dir} --plant N`"}[metric.key]


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
