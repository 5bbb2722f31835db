"""The report in a real browser: headless Chromium loads it offline, no console message, a screenshot.

Skipped when no Chromium is installed, unless AUDIT_REQUIRE_BROWSER=1 (CI sets it after
scripts/setup-browser.sh), where a missing browser fails the test instead.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from audit.reports import browser

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium():
    exe = browser.find_browser()
    if exe is None:
        if os.environ.get("AUDIT_REQUIRE_BROWSER") == "1":
            pytest.fail("AUDIT_REQUIRE_BROWSER=1 but no Chromium is installed; run scripts/setup-browser.sh")
        pytest.skip("no Chromium (scripts/setup-browser.sh installs it)")
    return exe


def test_console_lines_are_parsed():
    log = ('[1:1:1123/104209.050749:WARNING:ui/base/idle/idle_linux.cc:111] None of the known services\n'
           '[1:1:1123/104209.821574:INFO:CONSOLE:2] "Uncaught ReferenceError: f is not defined", '
           'source: file:///tmp/r.html (2)\n'
           '[1:1:1123/104209.821574:INFO:CONSOLE(7)] "x", source: file:///tmp/r.html (7)\n')
    assert browser.console_messages(log) == ["Uncaught ReferenceError: f is not defined (file:///tmp/r.html (2))",
                                             "x (file:///tmp/r.html (7))"]


def test_report_loads_cleanly_and_looks_like_a_page(chromium, audited_run, tmp_path):
    from PIL import Image

    from audit.reports.render import render_report

    page = render_report(audited_run)
    shot = tmp_path / "report.png"
    run = browser.open_page(page, screenshot=shot, width=1280, height=2000, browser=chromium)
    assert run.console == [], run.console
    assert 'data-report-script="ok"' in run.dom  # the sorting script ran
    assert 'data-broken-images="0"' in run.dom  # every inlined image decoded (checked on load)
    assert run.dom.count('data-sortable="ready"') >= 5
    # findings first: the first section the browser lays out is "What we found", and every image says its labels
    first = run.dom.find("<section")
    assert run.dom.startswith('<section id="findings"', first), run.dom[first:first + 200]
    n_thumbs = run.dom.count('<figure class="thumb')
    assert n_thumbs > 20 and run.dom.count('class="lbl"') == n_thumbs
    assert run.dom.count('class="pred') == n_thumbs
    # the datamodel-embedding section is laid out: its spectrum figure, component strips and cluster grids
    start = run.dom.find('<section id="embed"')
    assert start > 0, "no embed section"
    embed = run.dom[start:run.dom.find("</section>", start)]
    assert embed.count('<figure class="plot"') == 1 and "components for 90%" in embed
    assert embed.count('class="component"') >= 1 and embed.count('class="cluster"') >= 2
    assert embed.count('<figure class="thumb') > 20 and embed.count('class="lbl"') == embed.count('<figure class="thumb')
    with Image.open(shot) as im:
        a = np.asarray(im.convert("L"), dtype=np.float64)
    assert a.shape == (2000, 1280)
    assert (a < 128).mean() > 0.01 and a.std() > 20  # text and figures, not a blank page


def test_a_broken_page_is_caught(chromium, tmp_path):
    """The check can fail: a script error and an image that does not decode are console messages."""
    from audit.reports.render import environment

    js = environment().loader.get_source(environment(), "sort.js")[0]
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><img alt='broken' src='data:image/png;base64,AAAA'>"
                   f"<script>{js}</script><script>notAFunction();</script></body></html>", encoding="utf-8")
    run = browser.open_page(bad, browser=chromium)
    text = " ".join(run.console)
    assert "notAFunction" in text and "did not load: broken" in text
    assert 'data-broken-images="1"' in run.dom


def test_missing_page_or_browser_is_an_audit_error(tmp_path, monkeypatch):
    from audit.errors import AuditError

    with pytest.raises(AuditError, match="does not exist"):
        browser.open_page(tmp_path / "nope.html")
    (tmp_path / "p.html").write_text("<p>x</p>", encoding="utf-8")
    monkeypatch.setenv("AUDIT_BROWSER", str(tmp_path / "no-such-browser"))
    assert browser.find_browser() is None
    with pytest.raises(AuditError, match="setup-browser.sh"):
        browser.open_page(tmp_path / "p.html")
