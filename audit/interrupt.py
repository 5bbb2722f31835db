"""Ctrl-C that cannot be lost.

Python raises KeyboardInterrupt wherever the main thread is when SIGINT arrives; when that
is inside a finaliser (a ``__del__`` run by the garbage collector, e.g. a file lock's), the
exception is printed and ignored, and the command would go on as if nothing happened. The
command line installs :func:`install`: the handler remembers the request before raising,
long loops call :func:`check` between units of work (a block of models), and the entry
point treats a remembered request as an interrupt even when the exception was swallowed.
"""

from __future__ import annotations

import signal

INTERRUPTED = "interrupted; run the same command to resume (finished work is saved)"  # the one line on Ctrl-C
_requested = False


def _handler(signum, frame) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


_previous = None


def install() -> None:
    """Route SIGINT through the remembering handler (main thread only, as signal requires)."""
    global _requested, _previous
    _requested = False
    try:
        _previous = signal.signal(signal.SIGINT, _handler)
    except ValueError:  # not the main thread (an embedding program): keep its handling
        _previous = None


def uninstall() -> None:
    """Put back the handler that was there before :func:`install` and forget any request."""
    global _requested, _previous
    _requested = False
    if _previous is not None:
        signal.signal(signal.SIGINT, _previous)
        _previous = None


def requested() -> bool:
    """Whether Ctrl-C was pressed since :func:`install`."""
    return _requested


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed (and perhaps swallowed) since :func:`install`."""
    if _requested:
        raise KeyboardInterrupt
