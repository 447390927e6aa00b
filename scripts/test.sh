#!/usr/bin/env bash
# Run the whole test suite (sets up .venv first when it is missing).
# Tests run on min(CPU cores, 4) pytest-xdist workers (IMPRINT_TEST_WORKERS=N overrides; 0 or 1 = one process).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/imprint ]; then
  bash scripts/setup.sh
fi
if ! .venv/bin/python -c "import xdist" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "pytest-xdist>=3.5" >/dev/null 2>&1 || true  # an older .venv
fi
WORKERS="${IMPRINT_TEST_WORKERS:-}"
if [ -z "$WORKERS" ]; then
  CORES="$(nproc 2>/dev/null || echo 1)"
  WORKERS=$(( CORES < 4 ? CORES : 4 ))
fi
PARALLEL=()
if [ "$WORKERS" -gt 1 ] && .venv/bin/python -c "import xdist" >/dev/null 2>&1; then
  PARALLEL=(-n "$WORKERS" --dist loadfile)
fi
exec .venv/bin/python -m pytest -q --durations=30 "${PARALLEL[@]}" "$@"
