"""The HTML report of a run: ``render_report(run_dir)`` -> RUN/report.html."""

from audit.reports.render import render_report

__all__ = ["render_report"]
