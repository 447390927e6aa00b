"""CPU cost per pair of the non-rigid registered anatomy NCC (``kernels.deform.flow_warp`` and the masked NCC, with
``engine.membership.deform``'s settings) on real low-pass grids, one Numba thread (issue 13, branch elas12).

Pairs: the 32 x 32 anatomy grids of dev real images against other dev real images, each moved by a rigid
shift so the mask has a frame (what :func:`.anatomy.registered_ncc` gets).  Best of ``--repeat`` timings of
``--pairs`` pairs (process CPU; each timing window >= 1 s at the default size).

Usage::

    python benchmarks/bench_deform.py [--pairs 8000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n-images", type=int, default=400)
    a = ap.parse_args(argv)
    import numba

    import membership_zoo as z
    from imprint.engine.membership import anatomy as A
    from imprint.engine.membership import deform as D

    numba.set_num_threads(1)
    real, _ = z.load_real_and_fillers(z.DEV, "none", 128)
    low = A._lowpass_rows(real[: a.n_images]).astype(np.float32)
    rng = np.random.default_rng(0)
    i = rng.integers(len(low), size=a.pairs)
    j = rng.integers(len(low), size=a.pairs)
    reg = np.roll(low[i], 1, axis=2)
    m = np.ones(reg.shape, bool)
    m[:, :, :1] = False
    b = low[j]
    D.flow_registered_ncc(reg[:8], b[:8], m[:8])                 # compile / load the cache
    best = np.inf
    for _ in range(a.repeat):
        t = time.process_time()
        D.flow_registered_ncc(reg, b, m)
        best = min(best, time.process_time() - t)
    t = time.process_time()
    for _ in range(5):
        A._masked_ncc(reg, b, m)
    rigid = (time.process_time() - t) / 5
    print(f"flow_registered_ncc ({D.flow_tag()}): {a.pairs} pairs of {low.shape[1]} x {low.shape[2]} grids, "
          f"best of {a.repeat}: {best:.2f} CPU-s = {best / a.pairs * 1e3:.3f} ms per pair (one Numba thread); the rigid "
          f"masked NCC on the same pairs {rigid / a.pairs * 1e3:.3f} ms per pair; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
