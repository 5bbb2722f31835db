"""Fixtures for the audit tests: a private copy of the shared small digits run, and the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli

_REGISTER = ("import sys; from audit import cli; from audit.commands import brittleness as b; "
             "names = {c.name for c in cli.app.registered_commands}; "
             "'brittleness' in names or cli.app.command('brittleness')(b.brittleness); "
             "'mislabel' in names or cli.app.command('mislabel')(b.mislabel); "
             "sys.argv = ['audit'] + sys.argv[1:]; cli.main()")


def audit_cli(*args: str, timeout: float = 300):
    """``audit ARGS`` through the real entry point (registering the audit commands if cli.py does not yet)."""
    from audit.cli import app

    if {"brittleness", "mislabel"} <= {c.name for c in app.registered_commands}:
        return run_cli(*args, timeout=timeout)
    env = {**os.environ, "AUDIT_QUIET": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", _REGISTER, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def audit_run(small_digits_run, tmp_path):
    """A writable copy of the shared run (audits write reference.npz, retrain/ and audits/ into it)."""
    dst = tmp_path / "run"
    shutil.copytree(small_digits_run, dst, ignore=shutil.ignore_patterns("claims", "*.lock", "retrain", "audits"))
    return dst
