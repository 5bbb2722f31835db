"""Label-flip support (paper App. F.4): the support search with relabelling instead of removal.

The top-k examples of a ranking keep their place in the training set but take the
target's most likely *wrong* class: the incorrect class with the highest mean logit on the
target over full-data reference models (``audit.reference``). The datamodels rank by their
nearest embeddings here, not by their largest weights as in the paper and in the removal audit
(``audit.audits.support.datamodel_ranking_for`` says why; ``--datamodel-ranking weights`` for
the paper's).
"""

from __future__ import annotations

from pathlib import Path

from audit.audits.support import run_brittleness, wrong_classes  # noqa: F401  (wrong_classes re-exported)
from audit.progress import SILENT, Progress


def run_mislabel(run_dir: Path | str, *, progress: Progress = SILENT, **options) -> dict:
    """``run_brittleness(mode='relabel')``: saves RUN/audits/mislabel.{json,csv}, returns the summary."""
    return run_brittleness(run_dir, mode="relabel", progress=progress, **options)
