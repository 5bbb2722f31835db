"""audit/lazy.py: torch imported on its first attribute read, not before, and safely from several threads."""

from __future__ import annotations

import sys

import pytest

from audit.lazy import LazyModule, no_grad
from tests.conftest import python_output


def test_torch_is_imported_by_the_first_attribute_read_only():
    code = ("import sys\nfrom audit.lazy import torch\nbefore = 'torch' in sys.modules\n"
            "x = torch.ones(3)\nimport torch as real\n"
            "print(before, 'torch' in sys.modules, torch.Tensor is real.Tensor, float(x.sum()))")
    assert python_output(code) == "False True True 3.0"


def test_libraries_that_look_for_torch_do_not_import_it():
    """scipy's and scikit-learn's array-API checks read sys.modules['torch']: nothing is there until audit
    code uses torch (a proxy placed there at once made every scipy.stats call import torch)."""
    code = ("import sys, audit.cli, scipy.stats, sklearn.datasets\n"
            "scipy.stats.spearmanr([1, 2, 3], [1, 3, 2])\nprint('torch' in sys.modules)")
    assert python_output(code) == "False"


def test_threads_reading_torch_first_at_once_all_get_it():
    code = ("import threading\nfrom audit.lazy import torch\nout, go = [], threading.Event()\n"
            "def use():\n    go.wait()\n    try:\n        out.append(float(torch.zeros(2).sum()))\n"
            "    except Exception as exc:\n        out.append(repr(exc))\n"
            "threads = [threading.Thread(target=use) for _ in range(8)]\n"
            "[t.start() for t in threads]\ngo.set()\n[t.join() for t in threads]\nprint(sorted(map(str, out)))")
    assert python_output(code) == str(["0.0"] * 8)


def test_a_missing_module_fails_on_first_use_as_an_import_does():
    missing = LazyModule("audit_no_such_module_here")
    with pytest.raises(ModuleNotFoundError):
        missing.anything
    assert "audit_no_such_module_here" not in sys.modules


def test_no_grad_runs_the_function_without_recording_gradients():
    import torch

    w = torch.ones(2, requires_grad=True)

    @no_grad
    def double(x):
        return x * 2

    assert not double(w).requires_grad and double.__name__ == "double"
    assert (w * 2).requires_grad
