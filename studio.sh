#!/usr/bin/env bash
# Set up (first time; later runs only check) and start the web studio on its embedded defaults:
# SQLite registry and data folder in $AZR_HOME (default ~/azr-home), http://127.0.0.1:8000,
# opened in the web browser. Arguments go to `azr serve` (e.g. --port 8001).
set -euo pipefail
cd "$(dirname "$0")"
"${PYTHON:-python3}" scripts/setup.py
exec .venv/bin/azr serve --open "$@"
