#!/usr/bin/env bash
# Installs everything FLARE Workbench needs on a fresh Debian machine with Python 3.11:
# Debian packages (Chromium for browser tests, Fashion-MNIST for the demo) and the pinned pip packages.
# Safe to re-run: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=()
[ -x /usr/bin/chromium ] || apt_pkgs+=(chromium)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte ] || apt_pkgs+=(dataset-fashion-mnist)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "setup: apt-get install ${apt_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check -r requirements.txt
"$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
mkdir -p "${NUMBA_CACHE_DIR:-$HOME/.cache/flare-workbench/numba}"
echo "setup: ok"
