"""The console script's entry point: a Ctrl-C while the command is still starting up ends like any other.

Importing the command line (typer, rich, pydantic, every step; torch loads on first use) takes a moment; a SIGINT in
that time would otherwise end in a KeyboardInterrupt traceback from the import machinery, before
:func:`audit.cli.main` installs its handler. Nothing has been computed yet, so the promise is the
same: exit 130 with one line.
"""

from __future__ import annotations

import signal
import sys

from audit.interrupt import INTERRUPTED

_interrupted = False


def _on_sigint(signum, frame) -> None:
    """Remember the Ctrl-C as well as raising it: an import that swallows the KeyboardInterrupt (a library's
    ``except:`` around an optional import) must not turn it into a command that runs on."""
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


_previous = signal.signal(signal.SIGINT, _on_sigint)
try:
    from audit.cli import main
except KeyboardInterrupt:
    _interrupted = True
finally:
    signal.signal(signal.SIGINT, _previous)
if _interrupted:
    print(INTERRUPTED, file=sys.stderr)
    sys.exit(130)

__all__ = ["main"]
