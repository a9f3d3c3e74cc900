#!/usr/bin/env bash
# Set up everything the tests need (venv, packages, Debian's Chromium) and run the whole suite,
# then once more in portable mode.
# Arguments go to pytest (e.g. -k names, -x).
set -euo pipefail
cd "$(dirname "$0")"
"${PYTHON:-python3}" scripts/setup.py --extras test
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/python -m pytest -q "$@"
# Again as off Linux (what Windows and macOS run): osdeps.py's other branches, reasoning refused.
AZR_PORTABLE=1 exec .venv/bin/python -m pytest -q "$@"
