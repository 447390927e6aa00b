#!/usr/bin/env bash
# Run the whole test suite (sets up .venv first when it is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/imprint ]; then
  bash scripts/setup.sh
fi
exec .venv/bin/python -m pytest -q --durations=30 "$@"
