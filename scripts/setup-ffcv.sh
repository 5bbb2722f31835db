#!/usr/bin/env bash
# Install the optional FFCV extra into .venv: the system libraries ffcv 1.0.2 compiles
# against (pkg-config, libturbojpeg, OpenCV: apt-get, as root), then `pip install .[ffcv]`
# (ffcv + Pillow, which ffcv needs but does not declare).
# Idempotent (apt and pip skip what is there); any failure stops the script (set -e).
# Debian/Ubuntu with apt-get, run as root (CI and the project's machines are); elsewhere
# install the three packages yourself first. Needs .venv (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "setup-ffcv: no .venv here; run scripts/setup.sh first" >&2; exit 1; }

if "$PY" -c "import ffcv, PIL" 2>/dev/null; then
  echo "setup-ffcv: ffcv $("$PY" -m pip show ffcv 2>/dev/null | sed -n 's/^Version: //p') is already installed"
  exit 0
fi

PKGS=(pkg-config libturbojpeg0-dev libopencv-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || { echo "setup-ffcv: needs apt-get to install ${missing[*]}" >&2; exit 1; }
  [ "$(id -u)" -eq 0 ] || { echo "setup-ffcv: run as root, or first: apt-get install -y ${missing[*]}" >&2; exit 1; }
  apt-get -o DPkg::Lock::Timeout=600 update -q
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
fi
pkg-config --exists opencv4 || { echo "setup-ffcv: pkg-config cannot find opencv4 after the install" >&2; exit 1; }
pkg-config --exists libturbojpeg || { echo "setup-ffcv: pkg-config cannot find libturbojpeg after the install" >&2; exit 1; }

"$PY" -m pip install -q --disable-pip-version-check -e ".[ffcv]"
"$PY" -c "import ffcv, torch; print('setup-ffcv: ffcv imports beside torch', torch.__version__)"
