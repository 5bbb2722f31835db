"""Memory-mapped files read a block at a time without keeping their pages in the process.

A page of a memory-mapped file that a step has read stays mapped into the process (and counts in its
resident set) until the mapping closes, so a pass over a 12 GB release would make the process look
12 GB large even though it holds a block at a time. :func:`drop_pages` tells the kernel
(``madvise(MADV_DONTNEED)``) that the process is done with the pages of read-only mappings: they leave
the process and stay in the page cache, where the next read finds them.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from typing import Any

import numpy as np

from audit.lazy import torch

_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
try:
    _madvise = ctypes.CDLL(None, use_errno=True).madvise if sys.platform != "win32" else None
except (OSError, AttributeError):  # no C library to ask: pages stay until the mapping closes
    _madvise = None


def _numpy_mapping(a: np.ndarray) -> mmap.mmap | None:
    """The mmap behind a read-only ('r') or shared-writable ('r+', 'w+') numpy memory map, else None: a
    copy-on-write map ('c') would lose its changes."""
    m = getattr(a, "_mmap", None)
    if isinstance(m, mmap.mmap) and getattr(a, "mode", None) in ("r", "r+", "w+"):
        return m
    return None


def _drop_range(address: int, nbytes: int) -> None:
    start = -(-address // _PAGE) * _PAGE
    stop = (address + nbytes) // _PAGE * _PAGE
    if _madvise is not None and _MADV_DONTNEED is not None and stop > start:
        _madvise(ctypes.c_void_p(start), ctypes.c_size_t(stop - start), ctypes.c_int(_MADV_DONTNEED))


def drop_pages(*sources: Any) -> None:
    """Release the resident pages of each memory-mapped source: a numpy memory map, a tensor of a
    memory-mapped ``torch.load`` (marked by :func:`mark_mapped`), or an object holding such ``parts``
    (the release's joined margins and weights). Anything else is left alone; failures are ignored
    (the pages then stay until the mapping closes, as they would without this call)."""
    for source in sources:
        parts = getattr(source, "parts", None)
        if isinstance(parts, (list, tuple)):
            drop_pages(*parts)
            continue
        try:
            if isinstance(source, np.ndarray):
                m = _numpy_mapping(source)
                if m is not None:
                    m.madvise(_MADV_DONTNEED)
            elif isinstance(source, torch.Tensor) and getattr(source, "_audit_mapped", False):
                storage = source.untyped_storage()
                _drop_range(storage.data_ptr(), storage.nbytes())
        except (OSError, ValueError, AttributeError, TypeError, RuntimeError):
            pass


def mark_mapped(tensor: torch.Tensor) -> torch.Tensor:
    """Mark a tensor of ``torch.load(mmap=True)`` (a private, never-written file mapping) as one whose pages
    :func:`drop_pages` may release."""
    tensor._audit_mapped = True  # type: ignore[attr-defined]
    return tensor
