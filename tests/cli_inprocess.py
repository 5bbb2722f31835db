"""Run the `audit` console entry point inside the test process (no interpreter start-up per call).

``audit.cli.main`` is what the console script runs (through ``audit.entry``): it maps AuditError to one ``error:``
line and exit 2, and anything unexpected to one "internal error (a bug)" line and exit 1
with the traceback saved to a file (set AUDIT_DEBUG=1 to have it raised here instead).
Subprocess runs (``tests.conftest.run_cli``) remain the end-to-end check; this is for
tables of cases.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def call_main(*args: str, cwd: Path | None = None) -> Result:
    """``audit ARGS`` in-process; returns exit code and captured output like subprocess.run."""
    from audit.cli import main

    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd, old_quiet = sys.argv, os.getcwd(), os.environ.get("AUDIT_QUIET")
    sys.argv = ["audit", *map(str, args)]
    os.environ["AUDIT_QUIET"] = "1"
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
        if old_quiet is None:
            os.environ.pop("AUDIT_QUIET", None)
        else:
            os.environ["AUDIT_QUIET"] = old_quiet
    return Result(code, out.getvalue(), err.getvalue())
