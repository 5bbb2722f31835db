"""Open a rendered report in headless Chromium: a screenshot, the DOM after load, the console.

The browser runs as a subprocess (Debian's ``chromium``; scripts/setup-browser.sh installs
it) with ``--enable-logging=stderr``, which writes every console message of the page to
stderr; ``open_page`` reads them back. The report's own script adds to them: it reports
images that did not decode (audit/reports/templates/sort.js). Host names resolve to
nothing, so a page that needed the network would show broken images instead of loading.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from audit.errors import AuditError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Chromium's log line of a console message: [pid:tid:time:INFO:CONSOLE:12] "text", source: URL (12)
_CONSOLE = re.compile(r":CONSOLE[^\]]*\]\s*\"(?P<text>.*)\", source: (?P<source>.*)$")
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
          "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--disable-extensions", "--mute-audio",
          "--enable-logging=stderr", "--v=0", "--host-resolver-rules=MAP * ~NOTFOUND")


@dataclass
class PageRun:
    """What one headless visit of a page gave: console messages, the DOM after load, the screenshot."""

    console: list[str] = field(default_factory=list)
    dom: str = ""
    screenshot: Path | None = None
    browser: str = ""


def find_browser() -> str | None:
    """Path of a Chromium-family browser on PATH (``AUDIT_BROWSER`` overrides), or None."""
    override = os.environ.get("AUDIT_BROWSER")
    if override:
        return shutil.which(override) or (override if Path(override).is_file() else None)
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def console_messages(log: str) -> list[str]:
    """The console messages in Chromium's stderr log, each as ``text (source)``."""
    out = []
    for line in log.splitlines():
        m = _CONSOLE.search(line)
        if m:
            out.append(f"{m.group('text')} ({m.group('source').strip()})")
    return out


def open_page(page: Path | str, *, screenshot: Path | str | None = None, width: int = 1280, height: int = 2400,
              timeout: float = 120.0, browser: str | None = None) -> PageRun:
    """Load ``page`` (a local HTML file) in headless Chromium; return its console messages and DOM.

    ``screenshot``: where to save a PNG of the first ``width`` × ``height`` CSS pixels.
    Raises AuditError when no browser is found, the page does not exist, or the browser
    fails or takes longer than ``timeout`` seconds.
    """
    page = Path(page).resolve()
    if not page.is_file():
        raise AuditError(f"{page} does not exist; render it first with `audit report RUN`")
    exe = browser or find_browser()
    if exe is None:
        raise AuditError("no Chromium found (looked for " + ", ".join(BROWSERS) + "); install it with "
                         "`bash scripts/setup-browser.sh` (Debian: apt-get install chromium)")
    args = [exe, *_FLAGS, f"--window-size={int(width)},{int(height)}", "--dump-dom"]
    shot = Path(screenshot).resolve() if screenshot is not None else None
    if shot is not None:
        shot.parent.mkdir(parents=True, exist_ok=True)
        shot.unlink(missing_ok=True)
        args.append(f"--screenshot={shot}")
    with tempfile.TemporaryDirectory(prefix="audit-chromium-") as profile:
        args += [f"--user-data-dir={profile}", page.as_uri()]
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise AuditError(f"{exe} did not finish loading {page} within {timeout:g} s") from None
    if proc.returncode != 0 or (shot is not None and not shot.is_file()):
        tail = " | ".join(line for line in proc.stderr.strip().splitlines()[-3:])
        raise AuditError(f"{exe} failed on {page} (exit {proc.returncode}): {tail}")
    return PageRun(console=console_messages(proc.stderr), dom=proc.stdout, screenshot=shot, browser=exe)


__all__ = ["PageRun", "find_browser", "console_messages", "open_page"]
