"""Fixtures for the users'-own-images loaders (folder:, csv:, hf:): an isolated decode cache and
a writable copy of fixtures/own (helpers: tests/data/own.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.data.own import OWN


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """$AUDIT_DATA in a temporary folder, so decoded-array caches never touch ~/.cache."""
    data = tmp_path / "audit-data"
    monkeypatch.setenv("AUDIT_DATA", str(data))
    return data / "decoded"


@pytest.fixture
def own_copy(tmp_path) -> Path:
    """A writable copy of fixtures/own (cases damage it)."""
    dst = tmp_path / "own"
    shutil.copytree(OWN, dst)
    return dst
