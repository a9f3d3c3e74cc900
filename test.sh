#!/usr/bin/env bash
# Set up everything the tests need (venv, packages, Debian's Chromium) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")"
EXTRAS=test bash scripts/setup.sh
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
exec .venv/bin/python -m pytest -q "$@"
