"""Shared fixtures: quiet commands and small, fast datasets and runs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("AUDIT_QUIET", "1")
ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"

# small, fast settings for the batched CPU trainer
FAST_MLP = {"hidden": 32, "epochs": 4, "batch_size": 64, "lr": 0.1}


@pytest.fixture(scope="session")
def digits():
    from audit.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def small_digits_run(tmp_path_factory, digits):
    """A finished 400-model digits run with fitted datamodels (shared, read-only)."""
    from audit import pipeline

    run_dir = tmp_path_factory.mktemp("runs") / "digits"
    pipeline.train("digits", run_dir, n_models=400, block_size=200, trainer_options=FAST_MLP, dataset=digits)
    pipeline.fit(run_dir, n_lambdas=8)
    return run_dir


def audit_command() -> list[str]:
    """The installed console script (what a user runs), or ``python -m audit`` where none is installed."""
    import sys

    script = Path(sys.executable).parent / "audit"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "audit"]


def python_output(code: str, timeout: float = 300) -> str:
    """Stripped stdout of ``code`` run by a fresh interpreter from the repository root (nothing imported yet);
    fails the test, with its stderr, on a non-zero exit."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None):
    """Run the installed CLI in a subprocess; returns CompletedProcess with text output."""
    import subprocess

    env = {**os.environ, "AUDIT_QUIET": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([*audit_command(), *map(str, args)], cwd=cwd or ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(proc) -> None:
    """Exit 2, a single 'error:' line on stderr, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for a module's Ray tests, started as CI can (offline, no dashboard)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny networks: one torch thread is faster, and much faster on a shared, busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
