"""Cost of the tail-calibrated combination (engine/membership/calibrate.py ``calibrated_max``) at the judged speed
case's shape: 300 candidates + 460 reference images (the three dev sets' unused images), 13 evidence columns of
which 10 enter (the weighted sum and 9 max-rule channels), against the max rule it replaces (``_combine``) in the
same run.  Best of 3 windows of >= 1 s each.

Usage::

    python benchmarks/bench_calibrated_max.py [--candidates 300] [--null 460]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from imprint.engine.membership.calibrate import _combine, calibrated_max  # noqa: E402
from imprint.engine.membership.common import COMBINED_FEATURES, DEFAULT_WEIGHTS, MAX_FEATURES  # noqa: E402


def best_of(fn, windows=3, min_s=1.0):
    best = np.inf
    for _ in range(windows):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min_s:
            fn()
            n += 1
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=300)
    ap.add_argument("--null", type=int, default=460)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    names = [n for n in COMBINED_FEATURES if n != "embed_ratio"]
    Z = rng.standard_t(4, (a.candidates + a.null, len(names)))
    w = np.array([DEFAULT_WEIGHTS[n] for n in names])
    mx = np.array([n in MAX_FEATURES for n in names])
    nm = np.r_[np.zeros(a.candidates, bool), np.ones(a.null, bool)]
    calibrated_max(Z, w, mx, nm)
    t_tail = best_of(lambda: calibrated_max(Z, w, mx, nm))
    t_max = best_of(lambda: _combine(Z, w, use_max=mx))
    print(f"{a.candidates} candidates + {a.null} null, {len(names)} columns ({int(mx.sum()) + 1} channels): "
          f"calibrated_max {t_tail * 1e3:.1f} ms, _combine {t_max * 1e3:.3f} ms (best of 3 windows >= 1 s); "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
