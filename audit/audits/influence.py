"""Influential training examples: which training examples drive many test predictions.

For every test target, its datamodel's ``k`` largest positive weights name the training
examples whose presence raises its margin most. A training example that is among the top
``k`` of many test targets drives many predictions: a duplicate-heavy cluster, a prototype,
or an example worth checking (its label, its source). The audit counts, for each training
example, the test targets it is a top-``k`` example of, and reports the most influential
ones with their share of the test set. It needs only the fitted datamodels (no retraining)
and reads their rows in chunks, so it works on CIFAR-sized weight matrices.

This module is also the smallest complete example of a step (README, "Adding an audit"):
settings, files, typed result, summary, one check, and one line in ``audit.steps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from audit import pipeline
from audit.contract import Block, Finding, Line, Metric, Result, Step, Table, read_result, require, setting
from audit.data.dataset import Dataset
from audit.errors import AuditError
from audit.jsonio import write_csv, write_json
from audit.lazy import torch
from audit.progress import SILENT, Progress

CHUNK = 1024  # datamodel rows read at a time
INFLUENCE_ISSUE = "influential training example"
MEDIUM_TIMES, LOW_TIMES = 10, 5  # findings: top-k of this many times the test predictions a uniform spread gives


@dataclass(frozen=True)
class InfluenceConfig:
    """Settings of the influence audit."""

    top_k: int = setting(10, "--top-k", "a training example counts for a test target when it is among the "
                                        "target's top-k positive datamodel weights")
    n_show: int = setting(20, "--n-show", "most influential training examples listed", command_only=True)


class InfluentialExample(Result):
    train_index: int
    label: int
    label_name: str
    n_targets: int  # test targets whose top-k it is in
    share: float  # n_targets / number of test targets


class InfluenceResult(Result):
    """audits/influence.json."""

    n_test: int
    n_train: int
    top_k: int
    max_share: float
    n_train_in_any_top_k: int
    top: list[InfluentialExample]


def top_k_counts(weights: Any, rows: np.ndarray, n_train: int, k: int, progress: Progress = SILENT) -> np.ndarray:
    """For each training example, in how many of ``rows``' top-``k`` positive weights it is: int64 [n_train]."""
    counts = np.zeros(n_train, dtype=np.int64)
    with progress.task("influence: top-k per test target", total=len(rows), unit="targets") as bar:
        for start in range(0, len(rows), CHUNK):
            w = np.asarray(weights[rows[start:start + CHUNK]], dtype=np.float32)
            kk = min(k, n_train)
            top = torch.topk(torch.as_tensor(w).nan_to_num(nan=-np.inf), kk, dim=1)  # argpartition slows 50-fold on sparse rows
            idx, positive = top.indices.numpy(), top.values.numpy() > 0
            np.add.at(counts, idx[positive], 1)
            bar.advance(len(w))
    return counts


def influence_share(run_dir: Path, path: Path, p: Mapping[str, Any]) -> tuple[float | None, dict]:
    """The largest share of test targets driven by one training example (audits/influence.json)."""
    what = f"audit influence {run_dir}"
    data = read_result(path, what)
    share = require(data, ("max_share",), path, what)
    top = require(data, ("top",), path, what)
    if not isinstance(share, (int, float)) or isinstance(share, bool):
        raise AuditError(f"{path} has a non-numeric max_share; run `{what}` again")
    first = top[0]["train_index"] if isinstance(top, list) and top and isinstance(top[0], dict) else None
    return float(share), {"train_index": first, "top_k": data.get("top_k")}


class InfluenceStep(Step[InfluenceConfig, InfluenceResult]):
    """Training examples that are top-k datamodel examples of many test predictions."""

    name, title = "influence", "Influential training examples"
    config_type, result_type = InfluenceConfig, InfluenceResult
    files = {"result": "audits/influence.json", "table": "audits/influence.csv"}
    needs = (pipeline.FIT,)
    issues = (INFLUENCE_ISSUE,)
    metrics = (Metric("max_influence_share", "influential training example", "max", "fraction", influence_share,
                      {}, lambda p: "largest share of test predictions one training example drives (top-k weights)",
                      "audit influence RUN"),)

    def compute(self, run_dir: Path, config: InfluenceConfig, *, dataset: Dataset | None = None,
                progress: Progress = SILENT) -> InfluenceResult:
        if config.top_k < 1 or config.n_show < 1:
            raise AuditError(f"--top-k {config.top_k} and --n-show {config.n_show} must be at least 1")
        store, dm, ds = pipeline.open_fitted(run_dir, dataset)
        n_train, n_test = store.config.n_train, store.config.n_test
        counts = top_k_counts(dm.weights, n_train + np.arange(n_test), n_train, config.top_k, progress)
        order = np.argsort(-counts, kind="stable")
        share = counts / max(n_test, 1)
        top = [InfluentialExample(train_index=int(j), label=int(ds.y_train[j]), label_name=ds.classes[int(ds.y_train[j])],
                                  n_targets=int(counts[j]), share=float(share[j]))
               for j in order[:config.n_show] if counts[j] > 0]
        result = InfluenceResult(n_test=n_test, n_train=n_train, top_k=config.top_k,
                                 max_share=float(share.max()) if n_train else 0.0,
                                 n_train_in_any_top_k=int((counts > 0).sum()), top=top)
        write_csv(self.path(run_dir, "table"),
                  ({"train_index": int(j), "label": int(ds.y_train[j]), "label_name": ds.classes[int(ds.y_train[j])],
                    "n_targets": int(counts[j]), "share": float(share[j])} for j in order if counts[j] > 0),
                  ["train_index", "label", "label_name", "n_targets", "share"])
        write_json(self.path(run_dir), result.to_json())
        return result

    def summary(self, r: InfluenceResult) -> list[Block]:
        rows = tuple((str(e.train_index), e.label_name, str(e.n_targets), f"{e.share:.3f}") for e in r.top[:10])
        return [Table(f"training examples among the top {r.top_k} datamodel weights of the most test predictions",
                      ("train index", "label", "test predictions", "share"), rows, right_aligned=True),
                Line(f"{r.n_train_in_any_top_k} of {r.n_train} training examples are a top-{r.top_k} example of at "
                     f"least one of the {r.n_test} test predictions; the most influential drives "
                     f"{r.max_share:.1%} of them")]

    def findings(self, run_dir: Path | str) -> list[Finding]:
        """Listed training examples that are a top-k example of at least 5 times as many test predictions
        as if every training example were equally likely to be (``k / n_train`` of them): medium from 10
        times. Influence is not an error; the finding says which examples to check first."""
        r = self.load(run_dir)
        if r is None or r.n_train < 1 or r.n_test < 1:
            return []
        uniform = min(1.0, r.top_k / r.n_train)  # share of test predictions one example is a top-k example of
        rule = (f"medium: a top-{r.top_k} example of at least {MEDIUM_TIMES}x the {uniform:.2%} of test predictions "
                f"expected if all {r.n_train} training examples counted equally; low: at least {LOW_TIMES}x")
        out = []
        for e in r.top:
            times = e.share / uniform
            if times < LOW_TIMES:
                continue
            out.append(Finding(
                index=e.train_index, split="train", issue=INFLUENCE_ISSUE,
                severity="medium" if times >= MEDIUM_TIMES else "low", rule=rule, score=e.share,
                score_meaning=f"share of the test predictions it is a top-{r.top_k} datamodel example of",
                step=self.name, given_label=e.label, given_name=e.label_name,
                headline=f"train {e.train_index} ({e.label_name!r}) is a top-{r.top_k} example of {e.share:.1%} of the "
                         "test predictions",
                evidence=(f"among the top {r.top_k} datamodel weights of {e.n_targets} of the {r.n_test} test "
                          f"predictions ({e.share:.1%}, {times:.0f}x a uniform share)"),
                action="check its label and source: many test predictions lean on it (a prototype, a cluster of "
                       "near-duplicates, or an error that spreads)",
                details={"n_test_predictions": e.n_targets, "share": e.share, "times_uniform": times,
                         "top_k": r.top_k}))
        return out


INFLUENCE = InfluenceStep()
