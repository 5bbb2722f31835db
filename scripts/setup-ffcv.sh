#!/usr/bin/env bash
# Install the optional FFCV extra into .venv: the system libraries ffcv 1.0.2 compiles
# against (pkg-config, libturbojpeg, OpenCV), then `pip install .[ffcv]`.
# Idempotent (apt and pip skip what is there); any failure stops the script (set -e).
# Debian/Ubuntu with apt-get; run as root or with sudo available. Needs .venv (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "setup-ffcv: no .venv here; run scripts/setup.sh first" >&2; exit 1; }

if "$PY" -c "import ffcv" 2>/dev/null; then
  echo "setup-ffcv: ffcv $("$PY" -c 'import ffcv; print(getattr(ffcv, "__version__", "?"))') is already installed"
  exit 0
fi

PKGS=(pkg-config libturbojpeg0-dev libopencv-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || { echo "setup-ffcv: needs apt-get to install ${missing[*]}" >&2; exit 1; }
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
pkg-config --exists opencv4 || { echo "setup-ffcv: pkg-config cannot find opencv4 after the install" >&2; exit 1; }
pkg-config --exists libturbojpeg || { echo "setup-ffcv: pkg-config cannot find libturbojpeg after the install" >&2; exit 1; }

"$PY" -m pip install -q --disable-pip-version-check -e ".[ffcv]"
"$PY" -c "import ffcv, torch; print('setup-ffcv: ffcv', getattr(ffcv, '__version__', '?'), 'imports with torch', torch.__version__)"
