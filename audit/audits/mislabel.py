"""Label-flip support (paper App. F.4): the support search with relabelling instead of removal.

The top-k examples of a ranking keep their place in the training set but take the
target's most likely *wrong* class: the incorrect class with the highest mean logit on the
target over full-data reference models (``audit.reference``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from audit.errors import AuditError
from audit.progress import SILENT, Progress


def wrong_classes(mean_logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per target, the class other than ``y`` with the largest mean logit: ``[n, C], [n] -> [n]``."""
    logits = np.array(mean_logits, dtype=np.float64, copy=True)
    y = np.asarray(y, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(y):
        raise AuditError(f"mean logits {logits.shape} do not match {len(y)} targets")
    if logits.shape[1] < 2:
        raise AuditError("relabelling needs at least two classes")
    logits[np.arange(len(y)), y] = -np.inf
    return logits.argmax(axis=1).astype(np.int64)


def run_mislabel(run_dir: Path | str, *, progress: Progress = SILENT, **options) -> dict:
    """``run_brittleness(mode='relabel')``: saves RUN/audits/mislabel.{json,csv}, returns the summary."""
    from audit.audits.support import run_brittleness

    return run_brittleness(run_dir, mode="relabel", progress=progress, **options)
