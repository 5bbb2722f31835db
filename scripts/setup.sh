#!/usr/bin/env bash
# Set up a virtualenv in .venv with everything datamodel-audit and its tests need.
# CPU machines get the CPU build of torch; EXTRAS adds optional extras (e.g. EXTRAS=ffcv,gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" "torch==2.13.0"
fi
extras="ray,dev${EXTRAS:+,$EXTRAS}"
"${PIP[@]}" -e ".[${extras}]"
echo "set up .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
