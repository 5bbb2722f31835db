#!/usr/bin/env bash
# Install Debian's `chromium` (and a font for its text) for the report's headless browser test
# (tests/reports/test_browser.py: opens RUN/report.html, takes a screenshot, fails on console errors).
# Idempotent: does nothing when a Chromium is already on PATH. apt-get, run as root (CI and the
# project's machines are); elsewhere install chromium yourself. CI runs this and sets
# AUDIT_REQUIRE_BROWSER=1 so that the test fails instead of skipping when the browser is missing.
set -euo pipefail

for b in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$b" >/dev/null 2>&1; then
    echo "setup-browser: $("$b" --version 2>/dev/null | head -n1) is already installed ($(command -v "$b"))"
    exit 0
  fi
done
command -v apt-get >/dev/null || { echo "setup-browser: needs apt-get to install chromium" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "setup-browser: run as root, or first: apt-get install -y chromium" >&2; exit 1; }
apt-get -o DPkg::Lock::Timeout=600 update -q
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends chromium fonts-dejavu-core
command -v chromium >/dev/null || { echo "setup-browser: chromium is not on PATH after the install" >&2; exit 1; }
echo "setup-browser: $(chromium --version 2>/dev/null | head -n1)"
