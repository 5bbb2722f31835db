"""The step contract: typed results with one codec, one "is it current?" rule, the registry."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from audit import pipeline
from audit.contract import Line, Registry, Result, Step, StepRecord, setting
from audit.jsonio import read_json, write_json
from audit.steps import REGISTRY
from tests.conftest import FAST_MLP, run_cli


class _Scores(Result):
    median: float
    best: float | None = None


def test_result_codec_round_trips_non_finite_numbers():
    r = _Scores(median=math.inf, best=math.nan, extra={"kept": -math.inf})
    data = r.to_json()
    assert data["median"] == "Infinity" and data["best"] == "NaN" and data["extra"]["kept"] == "-Infinity"
    json.dumps(data, allow_nan=False)  # standard JSON
    back = _Scores.from_json(json.loads(json.dumps(data)))
    assert math.isinf(back.median) and math.isnan(back.best) and back.get("extra") == {"kept": "-Infinity"}
    with pytest.raises(Exception):
        _Scores.from_json({"best": 1.0})  # a declared field missing is an error, not a silent blank


def test_every_json_file_uses_the_same_non_finite_policy(tmp_path):
    write_json(tmp_path / "x.json", {"a": float("inf"), "b": np.float32("nan"), "c": [1.5]})
    assert read_json(tmp_path / "x.json") == {"a": "Infinity", "b": "NaN", "c": [1.5]}


# ----- a toy step and registry: the contract's rules on their own -------------------------------
@dataclass(frozen=True)
class _CountConfig:
    factor: int = setting(2, "--factor", "multiply by")
    where: str = setting("here", "--where", "does not change the result", volatile=True)


class _CountResult(Result):
    value: int


class _SourceStep(Step[_CountConfig, _CountResult]):
    name, title = "source", "Source"
    config_type, result_type = _CountConfig, _CountResult
    files = {"result": "source.json"}

    def compute(self, run_dir, config, *, dataset=None, progress=None):
        r = _CountResult(value=int((run_dir / "input.txt").read_text()))
        write_json(self.path(run_dir), r.to_json())
        return r


class _DoubleStep(Step[_CountConfig, _CountResult]):
    name, title = "double", "Double"
    config_type, result_type = _CountConfig, _CountResult
    files = {"result": "out/double.json"}

    def __init__(self, source: Step) -> None:
        self.needs = (source,)
        self.calls = 0

    def compute(self, run_dir, config, *, dataset=None, progress=None):
        self.calls += 1
        r = _CountResult(value=config.factor * read_json(run_dir / "source.json")["value"])
        write_json(self.path(run_dir), r.to_json())
        return r

    def summary(self, result):
        return [Line(f"double: {result.value}")]


def test_one_rule_for_is_current(tmp_path):
    (tmp_path / "input.txt").write_text("3")
    source = _SourceStep()
    double = _DoubleStep(source)
    assert not double.is_current(tmp_path)
    source.run(tmp_path)
    assert double.run(tmp_path).value == 6 and double.is_current(tmp_path)
    assert double.load(tmp_path) == _CountResult(value=6)
    rec = StepRecord.read(tmp_path, "double")
    assert rec.inputs == {"source": source.current_digest(tmp_path)} and rec.config == {"factor": 2, "where": "here"}
    assert double.is_current(tmp_path, _CountConfig(where="elsewhere"))  # volatile: same result
    assert not double.is_current(tmp_path, _CountConfig(factor=3))  # other settings: recompute
    (tmp_path / "input.txt").write_text("4")
    source.run(tmp_path)  # the input changed: the source's digest is new, so double is stale
    assert not double.is_current(tmp_path)
    assert double.run(tmp_path).value == 8 and double.is_current(tmp_path)
    # a result rewritten behind the step's back (a library call, a hand edit) is not current
    path = double.path(tmp_path)
    path.write_text(path.read_text().replace("8", "80"))
    os.utime(path, ns=(1, 1))
    assert not double.is_current(tmp_path)


def test_registry_order_and_needs():
    source = _SourceStep()
    double = _DoubleStep(source)
    reg = Registry([source, double])
    assert reg.names == ("source", "double") and reg["double"] is double
    with pytest.raises(ValueError, match="needs"):
        Registry([double, source])  # a step must come after what it needs
    with pytest.raises(ValueError, match="share a name"):
        Registry([source, source])


def test_the_registry_names_every_step_and_its_files():
    assert REGISTRY.names[:4] == ("train", "fit", "gradients", "evaluate")  # evaluate scores the gradients too
    assert {"brittleness", "mislabel", "leakage", "influence"} <= set(REGISTRY.audits())
    owned = [(s.name, f) for s in REGISTRY for f in s.files.values()]
    result_files = [f for s in REGISTRY for r, f in s.files.items() if r == "result"]
    assert len(set(result_files)) == len(result_files), owned  # no two steps own the same result file
    metric_keys = [m.key for _, m in REGISTRY.metrics()]
    assert len(set(metric_keys)) == len(metric_keys)


def test_fit_is_current_by_digest_after_a_run_grows(small_digits_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_digits_run, run)
    fit = pipeline.FitConfig(n_lambdas=8)
    pipeline.FIT.note(run, fit)  # the copied datamodels were fitted with these settings on these models
    assert pipeline.FIT.is_current(run, fit)
    assert not pipeline.FIT.is_current(run, pipeline.FitConfig(n_lambdas=9))
    pipeline.train("digits", run, n_models=450, block_size=200, trainer_options=FAST_MLP)
    assert not pipeline.FIT.is_current(run, fit)  # new models: the datamodels are stale


def test_a_new_audit_is_picked_up_by_run_report_and_check(tmp_path):
    """The influence audit is one module plus one registry line: `audit run`, `audit report`,
    `audit check` and its own command work with it without any other wiring."""
    run = tmp_path / "run"
    args = ("run", "digits", "--run", str(run), "-m", "60", "--eval-subsets", "6", "--audits", "influence",
            *[f"-o{k}={v}" for k, v in FAST_MLP.items()])
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    steps = json.loads((run / "run_summary.json").read_text())["steps"]
    assert list(steps) == ["train", "fit", "evaluate", "influence", "report"]  # gradients left out by --audits
    saved = json.loads((run / "audits" / "influence.json").read_text())
    assert saved["n_test"] == 500 and saved["top_k"] == 10 and 0 < saved["max_share"] <= 1
    assert "test predictions" in first.stdout
    page = (run / "report.html").read_text()
    assert 'id="influence"' in page and "Influential training examples" in page
    gate = run_cli("check", str(run), "--max-influence-share", "1.0")
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert "max_influence_share" in gate.stdout
    strict = run_cli("check", str(run), "--max-influence-share", "0.0")
    assert strict.returncode == 1
    own = run_cli("influence", str(run), "--top-k", "3")
    assert own.returncode == 0, own.stderr
    assert json.loads((run / "audits" / "influence.json").read_text())["top_k"] == 3
    again = run_cli(*args)  # the run's influence settings (top-k 10) differ from the last ones: recomputed
    assert again.returncode == 0, again.stderr
    steps = json.loads((run / "run_summary.json").read_text())["steps"]
    assert steps["fit"]["skipped"] and steps["evaluate"]["skipped"] and not steps["influence"].get("skipped")
    assert steps["train"]["skipped"] and steps["train"]["trained_now"] == 0  # a new run's train is current at once
    assert Path(run / "steps" / "influence.json").exists()
