"""Modules imported on their first use rather than with the command line.

Importing torch takes about a second and scikit-learn / scipy.stats another; `audit --help`, a usage
error or `audit check` should not wait for them. Modules take ``torch`` from here and keep it out of
anything evaluated at import time: annotations stay strings (``from __future__ import annotations``),
torch-typed aliases sit under ``TYPE_CHECKING`` and decorators use :func:`no_grad` below instead of
``@torch.no_grad()``. scikit-learn and scipy.stats are imported inside the functions that call them.

Written by hand rather than taken from ``importlib.util.LazyLoader`` or ``lazy_loader``, which put a
proxy into ``sys.modules`` at once: scipy's and scikit-learn's array-API checks look for torch there and
imported it on their first call, threads reading the proxy together on Python 3.11 could see a
half-initialised module, and an import interrupted by Ctrl-C left one behind. Here nothing is in
``sys.modules`` until the first attribute read runs a plain import (under the import lock; a failed or
interrupted import is undone as usual).
"""

from __future__ import annotations

import functools
import importlib
import types
from typing import TYPE_CHECKING, Any, Callable, TypeVar


class LazyModule(types.ModuleType):
    """Stands in for the module named ``__name__``; the first attribute read imports it and copies its namespace
    here, so later reads are plain lookups."""

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)  # a name the module gains later comes through here again
        return getattr(module, attr)


if TYPE_CHECKING:  # type checkers and editors see the real modules
    import scipy.sparse as sparse
    import torch
else:
    torch = LazyModule("torch")
    sparse = LazyModule("scipy.sparse")

F = TypeVar("F", bound=Callable)


def no_grad(fn: F) -> F:
    """``@torch.no_grad()`` that imports torch when ``fn`` is called, not when it is defined."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
