"""The step contract: every step of a run (train, fit, evaluate, each audit) is one object.

A step owns

- its settings: a frozen dataclass (``Step.config_type``) whose fields carry their default,
  their command-line flag and help (:func:`setting`): the single home of each default; the
  options of the step's command and of `audit run` are derived from it (``audit.commands.options``);
- its files: ``Step.files`` maps a role to a path relative to the run directory; every
  other module asks the step (``step.path(run_dir, role)``) instead of spelling the name;
- "is it current?": one rule for every step — a digest of its settings and of the digests
  of the steps it needs (plus, for the root step, the models trained), recorded in
  ``RUN/steps/<name>.json`` when the step finishes (:class:`StepRecord`);
- a typed result (``Step.result_type``, a :class:`Result`): one JSON codec, the same in
  memory and on disk (non-finite numbers as the strings ``"Infinity"``, ``"-Infinity"``,
  ``"NaN"``, read back as floats);
- what it tells people: ``summary(result)`` gives plain :class:`Block` values (lines and
  tables) that the terminal prints and the report's generic section shows;
- what `audit check` can gate on: ``metrics`` (:class:`Metric`), each a function of the
  saved result.

``audit.steps.REGISTRY`` lists the steps in order; `audit run`, `audit report` and
`audit check` loop over it, so a new audit is one module plus one registry line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Generic, Literal, Mapping, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict

from audit.errors import AuditError
from audit.jsonio import read_json, write_json
from audit.progress import SILENT, Progress

STEPS_DIR = "steps"  # RUN/steps/<name>.json: what each step last computed, from what


# ----- settings ------------------------------------------------------------------------------
def setting(default: Any, flag: str, help: str, *, aliases: Sequence[str] = (), command_only: bool = False,
            parse: str | None = None, volatile: bool = False, minimum: float | None = None) -> Any:
    """A field of a step's settings: its default, its command-line ``flag`` (plus ``aliases``) and help.

    ``parse``: how the command line spells it when it is not a scalar ("names": comma-separated
    words, "ints" / "floats": comma-separated numbers, "options": repeated NAME=VALUE).
    ``command_only``: shown by the step's own command but not by `audit run`. ``volatile``:
    does not change the result (where it runs, e.g. the Ray address), so not part of the digest.
    ``minimum``: the smallest value the command line accepts (a usage error below it).
    """
    meta = {"flag": flag, "help": help, "aliases": tuple(aliases), "command_only": command_only, "parse": parse,
            "volatile": volatile, "minimum": minimum}
    if isinstance(default, (list, dict, set)):
        raise TypeError("settings are frozen: use a tuple for a sequence default")
    return field(default=default, metadata=meta)


def settings_of(config_type: type) -> list[dataclasses.Field]:
    """The fields of a settings dataclass that have a command-line flag."""
    return [f for f in dataclasses.fields(config_type) if "flag" in f.metadata]


def config_json(config: Any, *, results_only: bool = False) -> dict:
    """A settings dataclass as plain JSON values (tuples as lists); ``results_only`` leaves out
    the volatile settings (those that do not change the result)."""
    data = json.loads(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str))
    if results_only:
        volatile = {f.name for f in dataclasses.fields(config) if f.metadata.get("volatile")}
        data = {k: v for k, v in data.items() if k not in volatile}
    return data


# ----- results ---------------------------------------------------------------------------------
class Result(BaseModel):
    """A step's typed result. Declared fields are what other modules read; a step may carry more.

    One codec: :meth:`to_json` writes non-finite floats as "Infinity"/"-Infinity"/"NaN"
    strings, :meth:`from_json` reads them back as floats, so a result round-trips unchanged.
    """

    model_config = ConfigDict(frozen=True, extra="allow", ser_json_inf_nan="strings", populate_by_name=True)

    def to_json(self) -> dict:
        return json.loads(self.model_dump_json(by_alias=True))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Result":
        return cls.model_validate(data)

    def get(self, key: str, default: Any = None) -> Any:
        """A field or carried value by name (for code that handles any step's result)."""
        if key in type(self).model_fields:
            return getattr(self, key)
        return (self.model_extra or {}).get(key, default)


# ----- findings: what is wrong with the data, per example ---------------------------------------
SEVERITIES = ("high", "medium", "low")  # most urgent first


class Finding(Result):
    """One example the audits say to look at: what, how sure, why, and what to do.

    ``headline`` says it in one short line; ``score`` ranks findings of the same issue (higher =
    stronger; its meaning is the issue's, stated in ``score_meaning``); ``severity`` comes from a stated ``rule``. ``given_label`` and
    ``predicted_label`` are class indices (``*_name`` their class names) where known;
    ``predicted_label`` is the class the evidence suggests (for a likely label error: the class
    the models that never saw the example predict). ``related`` lists the training examples the
    evidence names (voting against a label, the copy of a leaked test image, the examples a
    prediction rests on); ``details`` holds the rest of the evidence as plain JSON values.
    """

    index: int
    split: Literal["train", "test"]
    issue: str
    severity: Literal["high", "medium", "low"]
    rule: str
    score: float
    score_meaning: str
    step: str
    headline: str  # the finding in a short line, naming the example
    evidence: str
    action: str
    given_label: int | None = None
    given_name: str | None = None
    predicted_label: int | None = None
    predicted_name: str | None = None
    related: list[int] = []
    details: dict[str, Any] = {}

    @property
    def key(self) -> tuple[str, int]:
        """The example it is about: ``(split, index)``."""
        return self.split, self.index


# ----- what people see -------------------------------------------------------------------------
@dataclass(frozen=True)
class Line:
    """One line of text; ``[bold]...[/]`` style markup is allowed (the report shows it plain)."""

    text: str


@dataclass(frozen=True)
class Table:
    """A small table of strings."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    right_aligned: bool = False


Block = Line | Table


# ----- checks ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """A setting of a check (e.g. the k below which a support counts as brittle)."""

    kind: str  # "count" | "fraction" | "miles" | "choice"
    default: Any
    help: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Metric:
    """One thing `audit check` can gate on: a threshold key, its direction, and how to read it.

    ``extract(run_dir, path, params)`` returns (value or None, details) from the first of the
    step's ``file_roles`` files that exists (``path``); it raises AuditError when the saved
    data cannot decide the check.
    """

    key: str  # threshold key in audit.toml, e.g. "min_lds"
    name: str  # shown in the table and in JUnit
    direction: str  # "min": value must be >= threshold; "max": value must be <= threshold
    kind: str  # threshold kind for validation ("fraction" | "lds")
    extract: Callable[[Path, Path, Mapping[str, Any]], tuple[float | None, dict]]
    params: Mapping[str, Param] = field(default_factory=dict)
    label: Callable[[Mapping[str, Any]], str] = lambda p: ""  # what the value measures, for people
    producer: str = ""  # the command that makes its data; RUN stands for the run directory
    file_roles: tuple[str, ...] = ("result",)  # the step's files the value may be read from, first found wins


# helpers for extractors: one wording for unreadable or outdated result files
def read_result(path: Path, what: str) -> Any:
    """Parsed JSON of a result file; AuditError saying which command to run again."""
    try:
        return read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AuditError(f"{path} is unreadable ({type(exc).__name__}); run `{what}` again") from None


def unreadable(path: Path, command: str, exc: BaseException) -> AuditError:
    """The one wording for a result file that exists but cannot be read as what its step wrote."""
    return AuditError(f"{path} could not be read ({type(exc).__name__}); run `{command}` again")


def require(data: Any, keys: tuple, path: Path, what: str) -> Any:
    """``data[k1][k2]...``; AuditError naming the missing key and the command to run again."""
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


def finite(value: Any) -> float | None:
    """A finite number as float; None for anything else (null, "NaN", "Infinity", text, bools)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# ----- the record of a finished step -----------------------------------------------------------
@dataclass(frozen=True)
class StepRecord:
    """RUN/steps/<name>.json: what a step computed from (its digest) and what it cost."""

    step: str
    digest: str
    config: dict
    inputs: dict  # name of each needed step -> its digest
    seconds: float
    finished: str
    stamp: str  # size and modification time of the step's result file when it was recorded

    @classmethod
    def read(cls, run_dir: Path | str, name: str) -> "StepRecord | None":
        path = Path(run_dir) / STEPS_DIR / f"{name}.json"
        if not path.is_file():
            return None
        try:
            data = read_json(path)
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable record: the step is simply not current

    def write(self, run_dir: Path | str) -> None:
        write_json(Path(run_dir) / STEPS_DIR / f"{self.step}.json", dataclasses.asdict(self))


def file_stamp(path: Path) -> str:
    """``size:mtime_ns`` of a file ("" when missing): a result rewritten behind the step's back shows."""
    try:
        st = path.stat()
    except OSError:
        return ""
    return f"{st.st_size}:{st.st_mtime_ns}"


def digest_of(*parts: Any) -> str:
    """A short stable hash of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----- the step --------------------------------------------------------------------------------
C = TypeVar("C")
R = TypeVar("R", bound=Result)
M = TypeVar("M", bound=Result)


class Step(Generic[C, R]):
    """One step of a run. Subclasses set the class attributes and implement :meth:`compute`."""

    name: ClassVar[str]  # registry key and command name
    title: ClassVar[str]  # for people (report section title)
    config_type: ClassVar[type]
    result_type: ClassVar[type[Result]]
    files: ClassVar[Mapping[str, str]]  # role -> path relative to RUN; "result" holds the result JSON
    result_key: ClassVar[str | None] = None  # the result is this key of the result file (None: the whole file)
    needs: ClassVar[tuple["Step", ...]] = ()  # steps whose results this one reads
    metrics: ClassVar[tuple[Metric, ...]] = ()
    retrains: ClassVar[bool] = False  # trains models of its own (needs the run's trainer)
    in_run: ClassVar[bool] = True  # part of `audit run` by default
    issues: ClassVar[tuple[str, ...]] = ()  # the issues its findings name (audit.findings counts them)

    # ----- files -------------------------------------------------------------------------
    def path(self, run_dir: Path | str, role: str = "result") -> Path:
        """``RUN/<the file this step keeps for role>``."""
        try:
            return Path(run_dir) / self.files[role]
        except KeyError:
            raise KeyError(f"step {self.name} has no file role {role!r} (it has {', '.join(self.files)})") from None

    # ----- running -----------------------------------------------------------------------
    def compute(self, run_dir: Path, config: C, *, dataset: Any = None, progress: Progress = SILENT) -> R:
        """Do the work, save the step's files, return the typed result."""
        raise NotImplementedError

    def run(self, run_dir: Path | str, config: C | None = None, *, dataset: Any = None,
            progress: Progress = SILENT) -> R:
        """:meth:`compute`, then record the digest it was computed from (RUN/steps/<name>.json)."""
        run_dir = Path(run_dir)
        config = self.config_type() if config is None else config
        inputs = self.input_digests(run_dir)  # before computing: what the result is computed from
        start = time.perf_counter()
        result = self.compute(run_dir, config, dataset=dataset, progress=progress)
        root = self.state(run_dir) is not None  # a root step's own state (its models) is read after the work
        self.note(run_dir, config, seconds=time.perf_counter() - start, inputs=None if root else inputs)
        return result

    def note(self, run_dir: Path | str, config: C | None = None, *, seconds: float = 0.0,
             inputs: Mapping[str, Any] | None = None) -> StepRecord:
        """Record that the step's saved result is current (computed from ``inputs``, default: as they are now)."""
        run_dir = Path(run_dir)
        config = self.config_type() if config is None else config
        inputs = dict(self.input_digests(run_dir) if inputs is None else inputs)
        rec = StepRecord(step=self.name, digest=self.digest(config, inputs), config=config_json(config),
                         inputs=inputs, seconds=round(seconds, 2),
                         finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         stamp=file_stamp(self.path(run_dir)))
        rec.write(run_dir)
        return rec

    # ----- "is it current?" ----------------------------------------------------------------
    def state(self, run_dir: Path) -> str | None:
        """Extra input of a root step (what it was computed from besides other steps); None: none."""
        return None

    def current_digest(self, run_dir: Path) -> str | None:
        """The digest of this step's saved result as the steps after it see it: what it was computed
        from and when its result file was written (a rerun is a new input for the steps after it,
        even with the same settings). None when there is no record or the result file was rewritten
        since (e.g. by a library call that bypassed the step)."""
        rec = StepRecord.read(run_dir, self.name)
        if rec is None or rec.stamp != file_stamp(self.path(run_dir)):
            return None
        return digest_of(rec.digest, rec.stamp)

    def input_digests(self, run_dir: Path) -> dict:
        """Digest of each needed step's result as it is now (None: unknown), plus this step's own state."""
        out: dict = {need.name: need.current_digest(run_dir) for need in self.needs}
        own = self.state(run_dir)
        if own is not None:
            out[self.name] = own
        return out

    def digest(self, config: C, inputs: Mapping[str, Any]) -> str:
        return digest_of(self.name, config_json(config, results_only=True), dict(inputs))

    def is_current(self, run_dir: Path | str, config: C | None = None) -> bool:
        """The saved result was computed with these settings from the inputs as they are now.

        A run made before steps kept records (no RUN/steps/<name>.json) is judged by
        :meth:`legacy_current`, so finished work of an older run is not redone.
        """
        run_dir = Path(run_dir)
        config = self.config_type() if config is None else config
        if not self.path(run_dir).exists():
            return False
        rec = StepRecord.read(run_dir, self.name)
        if rec is None:
            return self.legacy_current(run_dir, config)
        inputs = self.input_digests(run_dir)
        if any(v is None for v in inputs.values()) or rec.stamp != file_stamp(self.path(run_dir)):
            return False
        return rec.digest == self.digest(config, inputs)

    def legacy_current(self, run_dir: Path, config: C) -> bool:
        """For a result without a step record (an older run): may it count as current? Default: no."""
        return False

    # ----- reading -------------------------------------------------------------------------
    def load(self, run_dir: Path | str) -> R | None:
        """The saved result, or None when the step has not run; AuditError when it is unreadable."""
        return self.read(run_dir, "result", self.result_type, self.result_key)  # type: ignore[return-value]

    def read(self, run_dir: Path | str, role: str, model: type[M], key: str | None = None) -> M | None:
        """The step's JSON file of ``role`` (its ``key`` when given) as ``model``; None when the file
        does not exist; AuditError naming the file and the command to run again when it cannot be read."""
        path = self.path(run_dir, role)
        if not path.is_file():
            return None
        try:
            data = read_json(path)
            if key is not None:
                data = data[key]
            return model.from_json(data)  # type: ignore[return-value]
        except (OSError, ValueError, KeyError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            raise unreadable(path, f"audit {self.name}", exc) from None

    def record(self, run_dir: Path | str) -> StepRecord | None:
        return StepRecord.read(run_dir, self.name)

    # ----- what people see ---------------------------------------------------------------------
    def summary(self, result: R) -> list[Block]:
        """Lines and tables for the terminal and the report's generic section."""
        return [Line(f"{self.name}: " + ", ".join(f"{k} {v}" for k, v in result.to_json().items()
                                                   if isinstance(v, (int, float, str))))]

    def seconds(self, result: R) -> float | None:
        """What computing the saved result took, from the result itself (used when no step record has it)."""
        return finite(result.get("seconds"))

    def cost_detail(self, result: R) -> str:
        """A few words on the work behind the cost (e.g. models retrained), for the timings table."""
        return ""

    def skipped(self, result: R) -> R:
        """The saved result as a run that skipped this step reports it (nothing done now)."""
        return result

    def skip_line(self) -> str:
        return f"{self.name}: already current, skipped"

    def findings(self, run_dir: Path | str) -> list[Finding]:
        """Per-example findings from the step's saved result (none by default, or when it has not run)."""
        return []

    def cost(self, run_dir: Path | str, config: C | None = None) -> "Cost | None":
        """What running the step would train, said before it starts (None: nothing worth saying)."""
        return None

    # ----- score matrices (RUN/scores/NAME) ------------------------------------------------------
    def scores_written(self, config: C) -> tuple[str, ...]:
        """The score matrices the step writes into the run with these settings (none by default)."""
        return ()

    def check_scores(self, run_dir: Path | str, config: C, coming: Sequence[str] = ()) -> None:
        """One line when these settings rank by a score matrix the run has not got and no step before this one
        writes (``coming``), said before `audit run` trains anything; the default ranks by none."""


@dataclass(frozen=True)
class Cost:
    """Models a step would train: ``models`` at most, ``rate`` models per second measured on this run
    (None: unknown) for models up to ``slowdown`` times cheaper than these (1: the same kind), and the
    settings that make it cheaper (``cheaper``)."""

    models: int
    rate: float | None
    detail: str
    cheaper: str
    slowdown: float = 1.0
    measured_on: str = "models"  # what the rate was measured on, for people

    @property
    def seconds(self) -> tuple[float, float] | None:
        """(fastest, slowest) expected time: at the measured rate, and ``slowdown`` times that."""
        return (self.models / self.rate, self.models * self.slowdown / self.rate) if self.rate else None


class Registry:
    """The steps of a run, in the order `audit run` takes them."""

    def __init__(self, steps: Sequence[Step]) -> None:
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"two steps share a name: {names}")
        self._steps = {s.name: s for s in steps}
        for s in steps:
            unknown = [n.name for n in s.needs
                       if n.name not in self._steps or names.index(n.name) >= names.index(s.name)]
            if unknown:
                raise ValueError(f"step {s.name} needs {unknown}, which are not registered before it")

    def __iter__(self):
        return iter(self._steps.values())

    def __getitem__(self, name: str) -> Step:
        try:
            return self._steps[name]
        except KeyError:
            raise AuditError(f"unknown step '{name}': choose among {', '.join(self._steps)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._steps

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._steps)

    def audits(self) -> tuple[str, ...]:
        """The steps after fit and evaluate that `audit run --audits` chooses among."""
        return tuple(s.name for s in self if s.name not in ("train", "fit", "evaluate"))

    def default_audits(self) -> tuple[str, ...]:
        """The audits `audit run` runs when --audits is not given: those with ``in_run``."""
        return tuple(name for name in self.audits() if self[name].in_run)

    def metrics(self) -> tuple[tuple[Step, Metric], ...]:
        return tuple((s, m) for s in self for m in s.metrics)
