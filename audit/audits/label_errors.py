"""Likely label errors in the training set, from the models that never saw each example.

A run trains M models on random α-subsets. For training example j, the models whose
subset *excluded* j made out-of-sample predictions on it (the same rows the eq. 9 datamodel
of j is fitted on), and the store holds their margin of j's *given* label: its logit minus
the largest other logit. A mislabelled example is one the rest of the data teach to be
another class, so those margins are negative: the models that never saw it predict a
different class.

- **Score** (ranking, higher = more likely wrong), by ``rule``:
  ``margin`` −mean out-of-sample margin (the default: the best of the three on digits with
  planted flips, benchmarks/README.md); ``fraction`` the share of out-of-sample models
  whose margin is negative (ties broken by the mean margin); ``zscore`` −mean / std.
  ``benchmarks/label_errors_vs_cleanlab.py`` measures them against each other and cleanlab.
- **Flag** (the verdict): the mean out-of-sample margin is negative, over at least
  ``min_models`` models: on average the models that never saw the example prefer another
  class to its label. No calibration is needed: 0 is where the prediction changes class.
- **Severity** (``test_share``): the share of test images whose own label the same models
  contradict at least as strongly (their mean margin is at most this example's mean
  out-of-sample margin; every model is out-of-sample on a test image). An empirical p-value
  against examples whose labels are taken as right: a flagged example with ``test_share``
  ≤ 1% is marked ``likely``. Label errors in the test set make it conservative (fewer
  ``likely``), never looser.
- **Predicted class**: margins say "given label vs best other", not which other. ``n_replay``
  of the run's own models are retrained from their stored subset and seed (the trainers are
  deterministic per model, so these are the same models; the largest difference from the
  stored margins is recorded) and their logits give each example's out-of-sample class
  probabilities. A flagged example's predicted class is the other class with the highest
  mean out-of-sample probability; an unflagged one's is its given label.
- **Evidence**: the training examples that vote against the label: the most negative
  weights of j's datamodel row (their presence lowers j's margin), excluding j itself.

The margins are read from the memmaps in blocks of models, never as one [M, N] array.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from audit.contract import Block, Finding, Line, Metric, Result, Step, Table, finite, read_result, require, setting
from audit.data.dataset import Dataset
from audit.data.planting import planted_label_errors
from audit.datamodels import Datamodels
from audit.errors import AuditError
from audit.jsonio import read_json, write_csv, write_json
from audit.pipeline import FIT, open_fitted
from audit.progress import SILENT, Progress
from audit.store import RunStore
from audit.training.base import correct_class_margins
from audit.training.registry import trainer_from_config

RULES = ("margin", "fraction", "zscore")
DEFAULT_RULE = "margin"
DEFAULT_MIN_MODELS = 20
DEFAULT_REPLAY = 32
DEFAULT_EVIDENCE = 10
DEFAULT_LIMIT = 200
BLOCK_ELEMENTS = 1 << 22  # margins per block: 4M (16 MiB float32, a few float64 temporaries of 32 MiB)
LABEL_ERRORS_JSON = "label_errors.json"
LIKELY_TEST_SHARE = 0.01
LABEL_ERROR_ISSUE = "likely label error"
FLAG_RULE = ("flagged when the mean out-of-sample margin of the given label is below 0 over at least "
             "{min_models} models: on average the models that never saw the example predict another class")


# ----- out-of-sample margins, streamed -----------------------------------------------------
@dataclass(frozen=True)
class OOSStats:
    """Per training example: margins of its given label on the models that excluded it (and included it)."""

    n_oos: np.ndarray  # int64 [N] models that excluded the example
    mean: np.ndarray  # float64 [N] mean out-of-sample margin (NaN without such models)
    std: np.ndarray  # float64 [N] its standard deviation over those models (NaN for fewer than 2)
    frac_wrong: np.ndarray  # float64 [N] share of those models with a negative margin
    n_in: np.ndarray  # int64 [N] models that trained on it
    mean_in: np.ndarray  # float64 [N] mean in-sample margin
    test_mean: np.ndarray  # float64 [n_test] mean margin of each test image's label (every model is out-of-sample)
    n_models: int  # finished models read

    @property
    def n_train(self) -> int:
        return int(len(self.n_oos))


def _moments(count: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, s1 / np.maximum(count, 1), np.nan)
        var = (s2 - count * mean ** 2) / np.maximum(count - 1, 1)
        std = np.where(count > 1, np.sqrt(np.maximum(var, 0.0)), np.nan)
    return mean, std


def oos_margin_stats(store: RunStore, rows: np.ndarray | None = None, block_rows: int | None = None,
                     progress: Progress = SILENT) -> OOSStats:
    """Out-of-sample margin statistics of every training example over ``rows`` (default: the
    finished models), reading ``block_rows`` models at a time (default: about 64 MiB of margins)."""
    n, n_targets = store.config.n_train, store.config.n_targets
    rows = store.finished_rows() if rows is None else np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        raise AuditError(f"{store.path} has no finished models; train the run first")
    block = int(block_rows or max(1, BLOCK_ELEMENTS // max(n_targets, 1)))
    n_oos = np.zeros(n, np.int64)
    n_wrong = np.zeros(n, np.int64)
    s1, s2 = np.zeros(n), np.zeros(n)
    n_in, s_in = np.zeros(n, np.int64), np.zeros(n)
    s_test = np.zeros(n_targets - n)
    with progress.task("label errors: reading margins", total=len(rows), unit="models") as bar:
        for start in range(0, len(rows), block):
            chunk = rows[start:start + block]
            masks = np.asarray(store.masks[chunk], dtype=bool)
            full = np.asarray(store.margins[chunk], dtype=np.float64)
            m = full[:, :n]
            s_test += full[:, n:].sum(0)
            out = ~masks
            mo = np.where(out, m, 0.0)
            n_oos += out.sum(0)
            s1 += mo.sum(0)
            s2 += (mo * mo).sum(0)
            n_wrong += (out & (m < 0)).sum(0)
            n_in += masks.sum(0)
            s_in += np.where(masks, m, 0.0).sum(0)
            bar.advance(len(chunk))
    mean, std = _moments(n_oos, s1, s2)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(n_oos > 0, n_wrong / np.maximum(n_oos, 1), np.nan)
        mean_in = np.where(n_in > 0, s_in / np.maximum(n_in, 1), np.nan)
    return OOSStats(n_oos=n_oos, mean=mean, std=std, frac_wrong=frac, n_in=n_in, mean_in=mean_in,
                    test_mean=s_test / len(rows), n_models=int(len(rows)))


def test_share(stats: OOSStats) -> np.ndarray:
    """Per training example, the share of test images whose mean margin is at most its mean
    out-of-sample margin (NaN without out-of-sample models; NaN everywhere without test images)."""
    ref = np.sort(stats.test_mean)
    out = np.full(stats.n_train, np.nan)
    ok = np.isfinite(stats.mean)
    if len(ref):
        out[ok] = np.searchsorted(ref, stats.mean[ok], side="right") / len(ref)
    return out


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise AuditError(f"unknown label-error rule '{rule}': use one of {', '.join(RULES)}")
    return rule


def label_error_scores(stats: OOSStats, rule: str = DEFAULT_RULE, min_models: int = DEFAULT_MIN_MODELS) -> np.ndarray:
    """Score per training example, higher = more likely mislabelled; NaN with fewer than ``min_models``."""
    check_rule(rule)
    with np.errstate(invalid="ignore", divide="ignore"):
        if rule == "margin":
            score = -stats.mean
        elif rule == "fraction":
            score = stats.frac_wrong.copy()
        else:
            score = -stats.mean / np.maximum(stats.std, 1e-6)
    score = np.asarray(score, dtype=np.float64)
    score[stats.n_oos < max(int(min_models), 2)] = np.nan
    return score


def rank_examples(scores: np.ndarray, stats: OOSStats) -> np.ndarray:
    """Training indices, most likely mislabelled first: by score, ties by the lower mean margin,
    then by index; examples without a score (too few out-of-sample models) last."""
    s = np.where(np.isfinite(scores), -scores, np.inf)
    tie = np.where(np.isfinite(stats.mean), stats.mean, np.inf)
    return np.lexsort((np.arange(len(s)), tie, s)).astype(np.int64)


def flag_mask(stats: OOSStats, min_models: int = DEFAULT_MIN_MODELS) -> np.ndarray:
    """The verdict: mean out-of-sample margin < 0 over at least ``min_models`` models."""
    with np.errstate(invalid="ignore"):
        return (stats.n_oos >= max(int(min_models), 2)) & (stats.mean < 0)


# ----- predicted class: replay a few of the run's models -----------------------------------
@dataclass(frozen=True)
class ReplayVotes:
    """Out-of-sample class probabilities from ``rows`` of the run, retrained."""

    probs: np.ndarray  # float64 [N, C] mean softmax over the replayed models that excluded each example
    n: np.ndarray  # int64 [N] how many replayed models excluded it
    rows: np.ndarray  # int64 the run's model indices replayed
    max_margin_diff: float  # largest |replayed - stored| margin on the training targets


def replay_votes(store: RunStore, dataset: Dataset, n_replay: int = DEFAULT_REPLAY,
                 rows: np.ndarray | None = None, progress: Progress = SILENT) -> ReplayVotes:
    """Retrain ``n_replay`` finished models (evenly spread over the run) from their stored subset
    and seed, and average their softmax on the training examples each one excluded."""
    if rows is None:
        done = store.finished_rows()
        if len(done) == 0:
            raise AuditError(f"{store.path} has no finished models; train the run first")
        rows = done[np.unique(np.linspace(0, len(done) - 1, min(int(n_replay), len(done))).astype(np.int64))]
    rows = np.asarray(rows, dtype=np.int64)
    masks = np.asarray(store.masks[rows], dtype=bool)
    trainer = trainer_from_config(store.config.trainer)
    with progress.task("label errors: predicted classes", total=1, unit="blocks") as bar:
        models = trainer.train_block(dataset, masks, store.model_seeds(rows))
        logits = np.asarray(models.logits(dataset.x_train), dtype=np.float64)  # [R, N, C]
        bar.advance(1)
    if not np.isfinite(logits).all():
        raise AuditError("a replayed model diverged; check the trainer settings in run.json")
    replayed = correct_class_margins(logits, dataset.y_train)
    diff = float(np.abs(replayed - np.asarray(store.margins[rows, :store.config.n_train])).max())
    z = logits - logits.max(axis=2, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=2, keepdims=True)
    out = ~masks
    n = out.sum(0).astype(np.int64)
    probs = (p * out[:, :, None]).sum(0) / np.maximum(n, 1)[:, None]
    probs[n == 0] = np.nan
    return ReplayVotes(probs=probs, n=n, rows=rows, max_margin_diff=diff)


def best_other_class(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per example, the class other than ``y`` with the highest probability (-1 where unknown)."""
    p = np.array(probs, dtype=np.float64, copy=True)
    y = np.asarray(y, dtype=np.int64)
    p[np.arange(len(y)), y] = -np.inf
    out = np.nan_to_num(p, nan=-np.inf).argmax(1).astype(np.int64)
    out[~np.isfinite(p).any(1)] = -1
    return out


# ----- evidence: the training examples that vote against the label ------------------------
def voting_against(weights_row: np.ndarray, j: int, k: int = DEFAULT_EVIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, weights)`` of up to ``k`` training examples with the most negative weights in
    training example ``j``'s datamodel row (j itself left out): their presence lowers j's margin."""
    w = np.array(weights_row, dtype=np.float64, copy=True)
    w[int(j)] = 0.0
    k = min(int(k), len(w))
    idx = np.argpartition(w, k - 1)[:k] if k < len(w) else np.arange(len(w))
    idx = idx[np.lexsort((idx, w[idx]))]
    idx = idx[w[idx] < 0]
    return idx.astype(np.int64), w[idx]


# ----- the finding -------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelErrorFinding:
    """One training example's label-error finding."""

    index: int  # training index
    given_label: int
    predicted_label: int  # given label if not flagged, else the most likely other class (-1 unknown)
    score: float  # ranking score under the result's rule, higher = more likely wrong
    rank: int  # 1-based
    flagged: bool
    likely: bool  # flagged and test_share <= the result's likely_test_share
    test_share: float  # share of test images whose label the models contradict at least as much
    mean_margin: float  # mean out-of-sample margin of the given label
    frac_wrong: float  # share of out-of-sample models predicting another class
    n_models: int  # out-of-sample models
    predicted_probability: float  # mean out-of-sample probability of predicted_label (replayed models; NaN unknown)
    evidence: tuple[int, ...] = ()  # training examples voting against the label, strongest first
    evidence_weights: tuple[float, ...] = ()
    evidence_labels: tuple[int, ...] = ()  # their given labels


@dataclass(frozen=True)
class LabelErrors:
    """Ranked label-error findings of a run (the top ``limit`` ranks and every flagged example)."""

    rule: str
    flag_rule: str
    min_models: int
    n_train: int
    n_models: int  # finished models read
    n_flagged: int
    likely_test_share: float
    n_likely: int
    n_replay: int
    replay_max_margin_diff: float | None
    findings: tuple[LabelErrorFinding, ...]
    planted: dict | None = None  # precision/recall against planted flips, when the dataset has them

    def flagged(self) -> tuple[LabelErrorFinding, ...]:
        return tuple(f for f in self.findings if f.flagged)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LabelErrors":
        names = {f.name for f in fields(LabelErrorFinding)}
        findings = []
        for raw in data["findings"]:
            item = {k: v for k, v in raw.items() if k in names}
            for key in ("evidence", "evidence_labels"):
                item[key] = tuple(int(v) for v in item.get(key, ()))
            item["evidence_weights"] = tuple(_float(v) for v in item.get("evidence_weights", ()))
            for key in ("score", "test_share", "mean_margin", "frac_wrong", "predicted_probability"):
                item[key] = _float(item[key])
            findings.append(LabelErrorFinding(**item))
        top = {f.name for f in fields(cls)}
        rest = {k: v for k, v in data.items() if k in top and k != "findings"}
        if rest.get("replay_max_margin_diff") is not None:
            rest["replay_max_margin_diff"] = float(rest["replay_max_margin_diff"])
        return cls(findings=tuple(findings), **rest)

    def save(self, path: Path | str) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path | str) -> "LabelErrors":
        try:
            return cls.from_dict(read_json(path))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AuditError(f"{path} is unreadable ({type(exc).__name__}: {exc}); run the label-error audit again") from None


def _float(v: Any) -> float:
    return math.nan if v is None else float(v)


def planted_precision_recall(order: np.ndarray, flagged: np.ndarray, truth: np.ndarray) -> dict:
    """Against planted flips ``truth``: precision and recall of the top-K (K = number planted) and
    of the flagged set. At K = planted count the top-K precision and recall are equal."""
    truth_set = set(np.asarray(truth, dtype=np.int64).tolist())
    k = len(truth_set)
    hits_k = len(truth_set.intersection(np.asarray(order[:k]).tolist()))
    flagged_idx = np.flatnonzero(flagged)
    hits_f = len(truth_set.intersection(flagged_idx.tolist()))
    return {"n_planted": k, "top_k": k, "precision_at_k": hits_k / k if k else None,
            "recall_at_k": hits_k / k if k else None, "n_flagged": int(len(flagged_idx)),
            "flagged_precision": hits_f / len(flagged_idx) if len(flagged_idx) else None,
            "flagged_recall": hits_f / k if k else None}


def find_label_errors(store: RunStore, dataset: Dataset, datamodels: Datamodels | None = None, *,
                      rule: str = DEFAULT_RULE, min_models: int = DEFAULT_MIN_MODELS, n_replay: int = DEFAULT_REPLAY,
                      n_evidence: int = DEFAULT_EVIDENCE, limit: int = DEFAULT_LIMIT,
                      likely_test_share: float = LIKELY_TEST_SHARE,
                      stats: OOSStats | None = None, progress: Progress = SILENT) -> LabelErrors:
    """Rank the run's training examples by how wrong their given label looks (module docstring).

    ``datamodels`` (the run's fit) gives the evidence; without it findings carry none.
    ``n_replay`` 0 skips the replay (a flagged example's predicted class is then -1).
    """
    check_rule(rule)
    if not 0.0 <= float(likely_test_share) <= 1.0:
        raise AuditError(f"likely_test_share = {likely_test_share}; give a share between 0 and 1, like 0.01")
    c = store.config
    if dataset.fingerprint() != c.fingerprint:
        raise AuditError(f"the dataset passed does not match the one {store.path} was trained on")
    if datamodels is not None and datamodels.weights.shape[1] != c.n_train:
        raise AuditError(f"the datamodels have {datamodels.weights.shape[1]} training weights, the run {c.n_train}")
    stats = stats or oos_margin_stats(store, progress=progress)
    scores = label_error_scores(stats, rule, min_models)
    order = rank_examples(scores, stats)
    flags = flag_mask(stats, min_models)
    shares = test_share(stats)
    likely = flags & (shares <= likely_test_share)
    ranked = np.isfinite(scores[order])
    keep = order[:max(int(limit), 0)]
    keep = np.concatenate([keep, order[flags[order] & ~np.isin(order, keep)]])
    keep = keep[np.isfinite(scores[keep])]
    rank_of = np.empty(len(order), np.int64)
    rank_of[order] = np.arange(1, len(order) + 1)
    votes = replay_votes(store, dataset, n_replay, progress=progress) if n_replay > 0 else None
    y = np.asarray(dataset.y_train, dtype=np.int64)
    other = best_other_class(votes.probs, y) if votes is not None else np.full(len(y), -1, np.int64)
    findings = []
    for j in keep.tolist():
        pred = int(other[j]) if flags[j] else int(y[j])
        prob = float(votes.probs[j, pred]) if votes is not None and pred >= 0 and votes.n[j] > 0 else math.nan
        ev, ew = (voting_against(datamodels.weights[j], j, n_evidence) if datamodels is not None
                  else (np.zeros(0, np.int64), np.zeros(0)))
        findings.append(LabelErrorFinding(
            index=int(j), given_label=int(y[j]), predicted_label=pred, score=float(scores[j]), rank=int(rank_of[j]),
            flagged=bool(flags[j]), likely=bool(likely[j]), test_share=float(shares[j]),
            mean_margin=float(stats.mean[j]), frac_wrong=float(stats.frac_wrong[j]), n_models=int(stats.n_oos[j]), predicted_probability=prob, evidence=tuple(int(i) for i in ev),
            evidence_weights=tuple(float(w) for w in ew), evidence_labels=tuple(int(y[i]) for i in ev)))
    planted = planted_label_errors(dataset)
    planted_summary = None
    if planted is not None:
        planted_summary = planted_precision_recall(order[ranked], flags, planted[0])
        planted_summary["likely"] = planted_precision_recall(order[ranked], likely, planted[0])
    return LabelErrors(rule=rule, flag_rule=FLAG_RULE.format(min_models=max(int(min_models), 2)),
                       min_models=max(int(min_models), 2), n_train=c.n_train, n_models=stats.n_models,
                       n_flagged=int(flags.sum()), likely_test_share=float(likely_test_share),
                       n_likely=int(likely.sum()), n_replay=0 if votes is None else int(len(votes.rows)),
                       replay_max_margin_diff=None if votes is None else votes.max_margin_diff,
                       findings=tuple(findings), planted=planted_summary)


def run_label_errors(run_dir: Path | str, *, progress: Progress = SILENT, **options) -> LabelErrors:
    """The label-error finding of a fitted run (evidence from its datamodels); saves
    RUN/audits/label_errors.json and returns the result. ``options`` go to ``find_label_errors``."""
    store, dm, ds = open_fitted(Path(run_dir))
    result = find_label_errors(store, ds, dm, progress=progress, **options)
    result.save(Path(run_dir) / "audits" / LABEL_ERRORS_JSON)
    return result



# ----- the step (audit.contract) ---------------------------------------------------------------
@dataclass(frozen=True)
class LabelErrorsConfig:
    """Settings of the label-error audit."""

    rule: str = setting(DEFAULT_RULE, "--rule", "ranking: margin (mean out-of-sample margin), fraction (share of "
                                                "out-of-sample models predicting another class) or zscore")
    min_models: int = setting(DEFAULT_MIN_MODELS, "--min-models", "out-of-sample models an example needs to be "
                                                                  "flagged", minimum=1)
    n_replay: int = setting(DEFAULT_REPLAY, "--replay", "run models retrained to name each flagged example's "
                                                        "predicted class (0: none)", minimum=0)
    limit: int = setting(DEFAULT_LIMIT, "--limit", "ranked training examples kept (every flagged one as well)",
                         command_only=True, minimum=1)


class LabelErrorsResult(Result):
    """audits/label_errors.json."""

    rule: str
    n_train: int
    n_models: int
    n_flagged: int
    n_likely: int
    likely_test_share: float
    classes: list[str]
    findings: list[dict]
    planted: dict | None = None


def label_error_share(run_dir: Path, path: Path, p: Mapping[str, Any]) -> tuple[float | None, dict]:
    """Share of the training set marked a likely label error (audits/label_errors.json)."""
    what = f"audit label-errors {run_dir}"
    data = read_result(path, what)
    n_likely, n_train = require(data, ("n_likely",), path, what), require(data, ("n_train",), path, what)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n_likely, n_train)) or n_train < 1:
        raise AuditError(f"{path} has no usable n_likely / n_train; run `{what}` again")
    return n_likely / n_train, {"n_likely": n_likely, "n_train": n_train, "n_flagged": data.get("n_flagged")}


class LabelErrorsStep(Step[LabelErrorsConfig, LabelErrorsResult]):
    """Likely label errors in the training set, from the models that never saw each example."""

    name, title = "label-errors", "Likely label errors in the training set"
    config_type, result_type = LabelErrorsConfig, LabelErrorsResult
    files = {"result": f"audits/{LABEL_ERRORS_JSON}", "table": "audits/label_errors.csv"}
    needs = (FIT,)
    retrains = True  # the replay retrains a few of the run's own models
    issues = (LABEL_ERROR_ISSUE,)
    metrics = (Metric("max_label_error_fraction", "likely label errors", "max", "fraction", label_error_share, {},
                      lambda p: "share of training examples marked a likely label error", "audit label-errors RUN"),)

    def compute(self, run_dir: Path, config: LabelErrorsConfig, *, dataset: Dataset | None = None,
                progress: Progress = SILENT) -> LabelErrorsResult:
        store, dm, ds = open_fitted(Path(run_dir), dataset)
        r = find_label_errors(store, ds, dm, rule=config.rule, min_models=config.min_models,
                              n_replay=config.n_replay, limit=config.limit, progress=progress)
        data = {**r.to_dict(), "classes": list(ds.classes)}
        write_json(self.path(run_dir), data)
        name = lambda c: ds.classes[c] if 0 <= c < len(ds.classes) else ""  # noqa: E731
        write_csv(self.path(run_dir, "table"),
                  ({"rank": f.rank, "train_index": f.index, "given_label": name(f.given_label),
                    "predicted_label": name(f.predicted_label), "flagged": f.flagged, "likely": f.likely,
                    "mean_oos_margin": f.mean_margin, "share_of_models_wrong": f.frac_wrong, "n_models": f.n_models,
                    "voting_against": " ".join(str(j) for j in f.evidence)} for f in r.findings),
                  ["rank", "train_index", "given_label", "predicted_label", "flagged", "likely", "mean_oos_margin",
                   "share_of_models_wrong", "n_models", "voting_against"])
        return LabelErrorsResult.from_json(read_json(self.path(run_dir)))

    def summary(self, r: LabelErrorsResult) -> list[Block]:
        def name(c: Any) -> str:
            return r.classes[c] if isinstance(c, int) and 0 <= c < len(r.classes) else "?"

        flagged = [f for f in r.findings if f.get("flagged")][:10]
        rows = tuple((str(f["index"]), name(f["given_label"]), name(f["predicted_label"]),
                      f"{_float(f['mean_margin']):.2f}", f"{_float(f['frac_wrong']):.2f}",
                      "yes" if f.get("likely") else "") for f in flagged)
        out: list[Block] = [
            Table(f"training examples whose label the models that never saw them contradict ({r.rule} rule)",
                  ("train index", "given", "predicted", "mean margin", "models wrong", "likely"), rows),
            Line(f"{r.n_flagged} of {r.n_train} training labels flagged (mean out-of-sample margin < 0), "
                 f"{r.n_likely} likely (contradicted as strongly as at most {r.likely_test_share:.0%} of test "
                 f"labels); {r.n_models} models read")]
        if r.planted:
            out.append(Line("planted label flips found: " + ", ".join(f"{k} {v}" for k, v in r.planted.items()
                                                                     if isinstance(v, (int, float)))))
        return out

    def findings(self, run_dir: Path | str) -> list[Finding]:
        """Every flagged training example: high when likely (contradicted as strongly as at most
        ``likely_test_share`` of the test labels), medium otherwise."""
        r = self.load(run_dir)
        return [] if r is None else [label_error_finding(f, r) for f in r.findings if f.get("flagged")]


SCORE_MEANING = {"margin": "minus the mean out-of-sample margin of the given label",
                 "fraction": "share of the models that never saw it predicting another class",
                 "zscore": "minus the mean over the standard deviation of its out-of-sample margins"}


def label_error_finding(f: Mapping[str, Any], r: LabelErrorsResult) -> Finding:
    """One flagged training example of the label-error audit as a finding (module docstring)."""
    def name(c: Any) -> str | None:
        return r.classes[c] if isinstance(c, int) and 0 <= c < len(r.classes) else None

    given, pred = int(f["given_label"]), int(f["predicted_label"])
    votes = [int(j) for j in f.get("evidence", ())]
    vote_labels = [int(c) for c in f.get("evidence_labels", ())]
    agree = sum(c == pred for c in vote_labels) if pred >= 0 else 0
    likely = bool(f.get("likely"))
    shown = repr(name(pred)) if pred >= 0 else "another class"
    prob = _float(f.get("predicted_probability"))
    evidence = (f"{_float(f['frac_wrong']):.0%} of the {int(f['n_models'])} models that never saw it predict another "
                f"class than {name(given)!r}"
                + (f", most often {shown} (p = {prob:.2f})" if pred >= 0 and math.isfinite(prob) else "")
                + f" (mean margin {_float(f['mean_margin']):.2f})"
                + (f"; {agree} of the {len(votes)} training examples voting against its label are {shown}"
                   if votes and pred >= 0 else ""))
    rule = (f"high: its label is contradicted as strongly as at most {r.likely_test_share:.0%} of the test labels "
            "are; medium: flagged (mean out-of-sample margin below 0)")
    return Finding(index=int(f["index"]), split="train", issue=LABEL_ERROR_ISSUE,
                   severity="high" if likely else "medium", rule=rule, score=_float(f["score"]),
                   score_meaning=SCORE_MEANING.get(r.rule, r.rule), step="label-errors",
                   headline=f"train {int(f['index'])} is labelled {name(given)!r}; the models that never saw it "
                            f"predict {shown}",
                   evidence=evidence,
                   action=(f"check the image: relabel it {shown} if that is what it shows, remove it if it is "
                           "ambiguous" if pred >= 0 else "check the image: relabel or remove it"),
                   given_label=given, given_name=name(given), predicted_label=pred if pred >= 0 else None,
                   predicted_name=name(pred), related=votes,
                   details={"rank": f.get("rank"), "mean_margin": finite(_float(f["mean_margin"])),
                            "share_of_models_wrong": finite(_float(f["frac_wrong"])), "n_models": int(f["n_models"]),
                            "test_share": finite(_float(f.get("test_share"))), "predicted_probability": finite(prob),
                            "voting_against_labels": [name(c) for c in vote_labels],
                            "likely": likely})


LABEL_ERRORS = LabelErrorsStep()
