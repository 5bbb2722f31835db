"""Heuristic data support of every test prediction, from the datamodels alone (no retraining).

A test target's heuristic support is the smallest k whose k largest datamodel weights add up to
its predicted full-data margin (bias + sum of weights): the number of training examples whose
removal the datamodel predicts flips the prediction (``audit.audits.support.heuristic_support``,
the estimate the brittleness audit certifies by retraining). 0 where the predicted margin is
already ≤ 0; not found where all positive weights together do not reach it. It needs only the
weights, so it runs on imported runs (the published datamodels) and at CIFAR size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit import pipeline
from audit.audits.support import NOT_FOUND, heuristic_support, support_cdf
from audit.contract import Block, Line, Result, Step, Table, setting
from audit.data.dataset import Dataset
from audit.errors import AuditError
from audit.jsonio import write_csv, write_json
from audit.progress import SILENT, Progress

CDF_KS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass(frozen=True)
class HeuristicConfig:
    """Settings of the heuristic support audit."""

    n_show: int = setting(20, "--n-show", "most brittle test predictions listed", command_only=True)


class BrittlePrediction(Result):
    test_index: int
    label: int
    label_name: str
    heuristic_k: int


class HeuristicResult(Result):
    """audits/support_heuristic.json."""

    n_test: int
    n_positive: int  # test targets with a predicted full-data margin > 0
    n_found: int  # of those, a support found among the positive weights
    median_k: float | None  # over the found ones
    cdf: list[dict]  # fraction of the test targets with a support of at most k (not found: never)
    smallest: list[BrittlePrediction]


class HeuristicStep(Step[HeuristicConfig, HeuristicResult]):
    """How many training examples the datamodels say each test prediction rests on."""

    name, title = "support-heuristic", "Heuristic data support (datamodels only)"
    config_type, result_type = HeuristicConfig, HeuristicResult
    files = {"result": "audits/support_heuristic.json", "table": "audits/support_heuristic.csv"}
    needs = (pipeline.FIT,)

    def compute(self, run_dir: Path, config: HeuristicConfig, *, dataset: Dataset | None = None,
                progress: Progress = SILENT) -> HeuristicResult:
        if config.n_show < 1:
            raise AuditError(f"--n-show {config.n_show} must be at least 1")
        store, dm, ds = pipeline.open_fitted(run_dir, dataset)
        n_train, n_test = store.config.n_train, store.config.n_test
        k = heuristic_support(dm.weights[n_train:], dm.bias[n_train:])  # reads the weights in chunks
        found = k > 0
        sizes = np.where(k == NOT_FOUND, np.inf, k).astype(np.float64)
        order = np.flatnonzero(found)[np.argsort(k[found], kind="stable")]
        smallest = [BrittlePrediction(test_index=int(t), label=int(ds.y_test[t]), label_name=ds.classes[int(ds.y_test[t])],
                                      heuristic_k=int(k[t])) for t in order[:config.n_show]]
        result = HeuristicResult(n_test=n_test, n_positive=int((k != 0).sum()), n_found=int(found.sum()),
                                 median_k=float(np.median(k[found])) if found.any() else None,
                                 cdf=support_cdf(sizes, CDF_KS), smallest=smallest)
        write_csv(self.path(run_dir, "table"),
                  ({"test_index": t, "label": int(ds.y_test[t]), "label_name": ds.classes[int(ds.y_test[t])],
                    "heuristic_k": "" if k[t] == NOT_FOUND else int(k[t])} for t in range(n_test)),
                  ["test_index", "label", "label_name", "heuristic_k"])
        write_json(self.path(run_dir), result.to_json())
        return result

    def summary(self, r: HeuristicResult) -> list[Block]:
        rows = tuple((str(p.test_index), p.label_name, str(p.heuristic_k)) for p in r.smallest[:10])
        median = "-" if r.median_k is None else f"{r.median_k:g}"
        return [Table("test predictions resting on the fewest training examples (datamodel heuristic)",
                      ("test index", "label", "heuristic support k"), rows, right_aligned=True),
                Line(f"{r.n_found} of the {r.n_positive} test predictions with a positive predicted margin have a "
                     f"heuristic support (median {median}); the others are not flipped by removing all positively "
                     f"weighted examples; certify with `audit brittleness` (retrains)")]


HEURISTIC = HeuristicStep()
