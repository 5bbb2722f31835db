"""The GPU benchmarks stop at once without CUDA: one line on stderr, exit 2, nothing written."""

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
@pytest.mark.parametrize("script", ["train_gpu", "gpu_smoke"])
def test_gpu_benchmarks_without_cuda_say_so_in_one_line(tmp_path, script):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{script}: needs a CUDA GPU"), proc.stderr
    assert "Traceback" not in proc.stderr and not proc.stdout.strip() and not list(tmp_path.iterdir())
