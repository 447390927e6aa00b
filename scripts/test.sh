#!/usr/bin/env bash
# Run the whole test suite (sets up .venv first when it is missing).
# Tests run on min(CPU cores, 4) pytest-xdist workers (IMPRINT_TEST_WORKERS=N overrides; 0 or 1 = one process),
# after scripts/warm_numba.py has filled the Numba caches.
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
# Compile the Numba kernels into their on-disk caches once, in two processes at once, so that the test processes
# (xdist workers, Ray workers, CLI subprocesses) load them instead of each compiling them (IMPRINT_WARM_NUMBA=0: skip).
if [ "${IMPRINT_WARM_NUMBA:-1}" != 0 ]; then
  .venv/bin/python scripts/warm_numba.py
fi
exec .venv/bin/python -m pytest -q --durations=30 "${PARALLEL[@]}" "$@"
