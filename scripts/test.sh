#!/usr/bin/env bash
# Test suite: sets up .venv, then runs pytest (a few minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
python -m pytest "$@"
