"""torch, imported on its first use rather than with the command line.

Importing torch takes about a second; `audit --help`, a usage error or `audit check` should not wait
for it. Modules take ``torch`` from here (a lazy_loader proxy that becomes the real module on the first
attribute read) and keep torch out of anything evaluated at import time: annotations stay strings
(``from __future__ import annotations``), torch-typed aliases sit under ``TYPE_CHECKING`` and
decorators use :func:`no_grad` below instead of ``@torch.no_grad()``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable, TypeVar

import lazy_loader as lazy

if TYPE_CHECKING:  # type checkers and editors see the real module
    import torch
else:
    torch = lazy.load("torch")

F = TypeVar("F", bound=Callable)


def no_grad(fn: F) -> F:
    """``@torch.no_grad()`` that imports torch when ``fn`` is called, not when it is defined."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
