"""The console script's entry point: a Ctrl-C while the command is still starting up ends like any other.

Importing the command line (typer, torch, scikit-learn, every step) takes a few seconds; a SIGINT in
that time would otherwise end in a KeyboardInterrupt traceback from the import machinery, before
:func:`audit.cli.main` installs its handler. Nothing has been computed yet, so the promise is the
same: exit 130 with one line.
"""

from __future__ import annotations

import sys

from audit.interrupt import INTERRUPTED

try:
    from audit.cli import main
except KeyboardInterrupt:
    print(INTERRUPTED, file=sys.stderr)
    sys.exit(130)

__all__ = ["main"]
