#!/usr/bin/env bash
# Creates .venv with everything incad needs (and the Debian library open3d needs).
# Idempotent: a second run only checks a stamp of pyproject.toml and returns.
# Usage: bash scripts/setup.sh [extra]   (extra: test, cuda, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"

python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      python_bin="$(command -v "$candidate")"; break
    fi
  done
fi
[ -n "$python_bin" ] || { echo "setup: Python >= 3.11 not found; install it or set PYTHON=/path/to/python3.11" >&2; exit 1; }

# open3d's wheels link libusb-1.0; install the Debian package when it is missing.
if ! "$python_bin" -c "import ctypes.util, sys; sys.exit(ctypes.util.find_library('usb-1.0') is None)"; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo_cmd="sudo"
    echo "setup: installing libusb-1.0-0 (needed by open3d)"
    $sudo_cmd apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 || { $sudo_cmd apt-get update -q >/dev/null && $sudo_cmd apt-get install -y -q libusb-1.0-0 >/dev/null; }
  else
    echo "setup: warning: libusb-1.0 is missing and apt-get is not available; open3d-based preprocessing will not import" >&2
  fi
fi

[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
stamp=".venv/.incad-installed-${extra:-base}"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
spec="."; [ -n "$extra" ] && spec=".[$extra]"
# torch's x86_64 wheel alone fills about 5.5 GB of .venv: say so before pip fails half-way.
free_kib="$(df -Pk . | awk 'NR == 2 {print $4}')"
if [ -n "$free_kib" ] && [ "$free_kib" -lt $((8 * 1024 * 1024)) ]; then
  echo "setup: only $((free_kib / 1024)) MiB free on the disk of $(pwd); installing needs about 8 GiB. Free some space (old virtual environments, /tmp) and run again." >&2
  exit 1
fi
echo "setup: installing incad$([ -n "$extra" ] && echo "[$extra]") into .venv (first time: a few minutes)"
set +o pipefail
.venv/bin/python -m pip install -q --no-cache-dir --disable-pip-version-check -e "$spec" 2>&1 | grep -v "^WARNING: Location"
pip_status="${PIPESTATUS[0]}"
set -o pipefail
if [ "$pip_status" -ne 0 ]; then
  echo "setup: pip could not install incad$([ -n "$extra" ] && echo "[$extra]") (exit $pip_status, message above); nothing was recorded, so the next run tries again" >&2
  exit 1
fi
.venv/bin/python -c "import incad, torch, avalanche, mlflow" >/dev/null
echo "$want" > "$stamp"
