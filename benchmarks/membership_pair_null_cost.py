"""Cost of the unsupervised mode's registered real-to-real null (issue 13, branch uns5), against the evidence.

For each dev generator's real folder (its used + unused images) and its generated images: the wall time of
``compute_evidence`` (what every audit pays), of ``real_pair_null`` without registration (the null before
branch uns5) and with it (``register=True``), each with a fresh memo (no registration shared with the evidence),
best of ``--repeat``.  Printed: seconds and the ratios null / evidence, measured in the same run.

Usage::

    python benchmarks/membership_pair_null_cost.py [--gens gen_e,gen_a] [--repeat 2] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from membership_loo import load  # noqa: E402

import numpy as np  # noqa: E402

from imprint.engine.membership import compute_evidence, real_pair_null  # noqa: E402


def best(fn, repeat):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="/work/shared/corpus/dev")
    ap.add_argument("--gens", default="gen_e,gen_a")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args(argv)
    print(f"# load average {os.getloadavg()[0]:.1f}; best of {a.repeat}")
    print("| real folder | reals | generated | evidence s | pair null s (before) | registered pair null s | "
          "registered null / evidence | registered / before null |")
    print("|---|---|---|---|---|---|---|---|")
    for g in a.gens.split(","):
        root = os.path.join(a.corpus, "membership", g)
        real = np.concatenate([load(f"{root}/real/used"), load(f"{root}/real/unused")])
        gen = load(f"{root}/generated")
        real_pair_null(real[:12], len(gen), cache={}, register=True)       # compile the kernels first
        te = best(lambda: compute_evidence(gen, real, backbone=None, _cache={}), 1)
        t0 = best(lambda: real_pair_null(real, len(gen), cache={}), a.repeat)
        t1 = best(lambda: real_pair_null(real, len(gen), cache={}, register=True), a.repeat)
        print(f"| {g} | {len(real)} | {len(gen)} | {te:.1f} | {t0:.1f} | {t1:.1f} | {t1 / te:.2f} | {t1 / t0:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
