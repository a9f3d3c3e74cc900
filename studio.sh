#!/usr/bin/env bash
# Set up (first time) and start the web studio on its embedded defaults:
# SQLite registry and data folder in $AZR_HOME (default ~/azr-home), http://127.0.0.1:8000
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
exec .venv/bin/azr serve "$@"
