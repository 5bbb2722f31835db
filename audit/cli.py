"""The `audit` command line: registers subcommands and maps every failure to one line and an exit code."""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import typer

from audit.commands import brittleness as brittleness_cmd
from audit.commands import check as check_cmd
from audit.commands import data as data_cmd
from audit.commands import evaluate as evaluate_cmd
from audit.commands import export as export_cmd
from audit.commands import findings as findings_cmd
from audit.commands import fit as fit_cmd
from audit.commands import import_release as import_cmd
from audit.commands import leakage as leakage_cmd
from audit.commands import report as report_cmd
from audit.commands import run as run_cmd
from audit.commands import scores as scores_cmd
from audit.commands import step as step_cmd
from audit.commands import train as train_cmd
from audit import interrupt
from audit.errors import AuditError, environment_error
from audit.steps import REGISTRY

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Audit image datasets through datamodels.")
app.command("train")(train_cmd.train)
app.command("fit")(fit_cmd.fit)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("import")(import_cmd.import_)
app.command("run")(run_cmd.run)
app.command("brittleness")(brittleness_cmd.brittleness)
app.command("mislabel")(brittleness_cmd.mislabel)
app.add_typer(data_cmd.app, name="data")
app.command("check")(check_cmd.check)
app.command("leakage")(leakage_cmd.leakage)
app.command("report")(report_cmd.report)
app.command("findings")(findings_cmd.findings)
app.command("export")(export_cmd.export)
app.command("import-scores")(scores_cmd.import_scores)
for _step in REGISTRY:  # a registered step without a hand-written command gets the generic one
    if _step.name not in {c.name for c in app.registered_commands}:
        app.command(_step.name)(step_cmd.command_for(_step))




def main() -> None:
    """Console-script entry point: the exit codes the README promises.

    0 success (``audit check``: 1 when a threshold fails); 2 bad input, usage errors and a
    user-fixable environment (full disk, no permission), as one ``error:`` line; 130 on
    Ctrl-C; 1 with one line and a saved traceback for an internal error (a bug).
    """
    interrupt.install()
    try:
        _run()
    finally:
        interrupt.uninstall()  # an in-process caller (tests, scripts) gets its own handler back


def _run() -> None:
    try:
        code = app(standalone_mode=False)
        interrupt.check()  # a Ctrl-C swallowed by a finaliser still ends as an interrupt
    except AuditError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _interrupted()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _interrupted()
    except typer.TyperException as exc:  # typer's usage errors (typer >= 0.29 ships its own click classes)
        _usage_error(exc)
    except OSError as exc:
        known = environment_error(exc)
        if known is None:
            _internal_error(exc)
        _fail(str(known))
    except Exception as exc:  # noqa: BLE001 - anything else is a bug: one line, traceback to a file
        _internal_error(exc)
    else:
        if isinstance(code, int) and code == 130:  # typer turns Ctrl-C inside a command into Exit(130)
            _interrupted()
        if isinstance(code, int) and code:
            sys.exit(code)


def _fail(message: str) -> NoReturn:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


def _interrupted() -> NoReturn:
    print(interrupt.INTERRUPTED, file=sys.stderr)
    sys.exit(130)


def _usage_error(exc: typer.TyperException) -> NoReturn:
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:  # `audit` / `audit data` alone
        print(ctx.get_help())
        _fail(f"no command given; see the list above or '{ctx.command_path} --help'")
    where = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
    _fail(f"{exc.format_message().rstrip('.')}{where}")


def _internal_error(exc: BaseException) -> NoReturn:
    """One line naming the bug and the file holding its traceback; exit 1."""
    if os.environ.get("AUDIT_DEBUG"):
        raise exc
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    saved = save_traceback(text)
    where = f"traceback saved to {saved}" if saved else "the traceback could not be saved"
    summary = " ".join(f"{type(exc).__name__}: {exc}".split())
    print(f"error: internal error (a bug): {summary}; {where}", file=sys.stderr)
    sys.exit(1)


def save_traceback(text: str) -> Path | None:
    """Write ``text`` to $AUDIT_TRACEBACK_DIR, else ~/.cache/datamodel-audit/tracebacks, else the temp dir."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "datamodel-audit" / "tracebacks"
    folders = [Path(os.environ["AUDIT_TRACEBACK_DIR"])] if os.environ.get("AUDIT_TRACEBACK_DIR") else []
    stamp = f"{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    for folder in [*folders, cache, Path(tempfile.gettempdir())]:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"audit-traceback-{stamp}.txt"
            path.write_text(f"audit {' '.join(sys.argv[1:])}\n\n{text}", encoding="utf-8")
            return path
        except OSError:
            continue
    return None


if __name__ == "__main__":
    main()
