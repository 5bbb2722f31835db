"""Fixtures for the audit tests: a private copy of the shared small digits run."""

from __future__ import annotations

import json
import shutil

import pytest

# retraining in the audit tests: the plumbing (plans, resume, certification) does not depend on
# how good the retrained models are, so they train for one epoch (a block costs ~1 s, not ~5 s)
RETRAIN_MLP = {"hidden": 16, "epochs": 1, "batch_size": 128}


@pytest.fixture
def audit_run(small_digits_run, tmp_path):
    """A writable copy of the shared run (audits write reference.npz, retrain/ and audits/ into it)
    whose run.json asks for the cheap ``RETRAIN_MLP`` trainer."""
    dst = tmp_path / "run"
    shutil.copytree(small_digits_run, dst, ignore=shutil.ignore_patterns("claims", "*.lock", "retrain", "audits"))
    cfg = json.loads((dst / "run.json").read_text())
    cfg["trainer"] = {**cfg["trainer"], **RETRAIN_MLP}
    (dst / "run.json").write_text(json.dumps(cfg))
    return dst
