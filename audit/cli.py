"""The `audit` command line: registers subcommands, maps AuditError to one line and exit 2."""

from __future__ import annotations

import sys

import typer

from audit.commands import brittleness as brittleness_cmd
from audit.commands import check as check_cmd
from audit.commands import data as data_cmd
from audit.commands import evaluate as evaluate_cmd
from audit.commands import fit as fit_cmd
from audit.commands import leakage as leakage_cmd
from audit.commands import report as report_cmd
from audit.commands import run as run_cmd
from audit.commands import step as step_cmd
from audit.commands import train as train_cmd
from audit.errors import AuditError
from audit.steps import REGISTRY

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Audit image datasets through datamodels.")
app.command("train")(train_cmd.train)
app.command("fit")(fit_cmd.fit)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("run")(run_cmd.run)
app.command("brittleness")(brittleness_cmd.brittleness)
app.command("mislabel")(brittleness_cmd.mislabel)
app.add_typer(data_cmd.app, name="data")
app.command("check")(check_cmd.check)
app.command("leakage")(leakage_cmd.leakage)
app.command("report")(report_cmd.report)
for _step in REGISTRY:  # a registered step without a hand-written command gets the generic one
    if _step.name not in {c.name for c in app.registered_commands}:
        app.command(_step.name)(step_cmd.command_for(_step))


def main() -> None:
    """Console-script entry point."""
    try:
        app(standalone_mode=False)
    except AuditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished models are saved; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
