"""Cost of the decision-side null construction (near-duplicate removal, nuisance check, real-to-real null).

Times, best of N with >= 1 s windows, on the dev corpus: ``near_duplicates(reference, candidates)``,
``nuisance_statistics`` + ``exchangeability_check``, ``real_pair_null(real, M)``; reference in the same run:
one dense numpy float32 matmul of the same two z-scored sets (the exact-search floor).

Usage::

    python benchmarks/bench_membership_null.py [--corpus /work/shared/corpus/dev] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from membership_loo import load  # noqa: E402

from imprint.engine.membership import (exchangeability_check, near_duplicates, nuisance_statistics,  # noqa: E402
                                       real_pair_null, zscore_images)


def best(fn, repeat):
    """Best per-call time over ``repeat`` windows of >= 1 s each."""
    out = []
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= 1.0:
                break
        out.append(dt / n)
    return min(out)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="/work/shared/corpus/dev")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    root = os.path.join(a.corpus, "membership")
    real = np.concatenate([load(f"{root}/gen_b/real/used"), load(f"{root}/gen_b/real/unused")])   # 600
    ref = np.concatenate([load(f"{root}/{g}/real/unused") for g in ("gen_a", "gen_e")])            # 160
    ref = np.concatenate([ref, ref[:, :, ::-1], ref[:, ::-1, :]])                                  # 480 distinct
    zr = zscore_images(real).reshape(len(real), -1)
    zf = zscore_images(ref).reshape(len(ref), -1)
    t_ref = best(lambda: zf @ zr.T, a.repeat)
    t_dup = best(lambda: near_duplicates(ref, real), a.repeat)
    t_exch = best(lambda: exchangeability_check(nuisance_statistics(ref), nuisance_statistics(real)), a.repeat)
    zr2 = zr
    t_ref2 = best(lambda: zr2 @ zr2.T, a.repeat)
    t_pair = best(lambda: real_pair_null(real, 1000), a.repeat)
    print(f"near_duplicates {len(ref)} x {len(real)}: {t_dup:.3f}s  (numpy matmul {t_ref:.3f}s, ratio {t_dup / t_ref:.1f})")
    print(f"nuisance + KS {len(ref)} vs {len(real)}: {t_exch:.3f}s")
    print(f"real_pair_null R={len(real)}, M=1000: {t_pair:.3f}s  (numpy matmul {len(real)}^2: {t_ref2:.3f}s, "
          f"ratio {t_pair / t_ref2:.1f})")


if __name__ == "__main__":
    main()
