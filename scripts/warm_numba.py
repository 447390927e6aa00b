"""Compile imprint's Numba kernels into their on-disk caches (``cache=True``) before the test suite starts.

A fresh clone has no Numba cache: without this step every process that first calls a kernel while its cache
is still missing compiles it for itself (both pytest-xdist workers, the Ray workers of tests/test_distributed.py,
the CLI subprocesses of the reliability tests), about a minute of CPU each.  scripts/test.sh runs the two parts
below in two processes at once, then every test process loads the compiled kernels.  Nothing is checked here
(the tests check the kernels); a failure only prints a line, and the tests then compile as before.

Usage::

    python scripts/warm_numba.py [kernels|engine]...   (default: both, each in its own process, at once)
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's imprint


def _images(rng, n, h=32):
    yy, xx = np.mgrid[0:h, 0:h] / h - 0.5
    body = ((xx / 0.4) ** 2 + (yy / 0.33) ** 2 < 1) * 120.0
    return np.clip(body + rng.normal(0, 20, (n, h, h)), 0, 255).astype(np.uint8)


def _readonly(x):
    """A read-only copy: Numba compiles read-only arrays (Ray's object store, memory-mapped stores) apart."""
    x = x.copy()
    x.setflags(write=False)
    return x


def kernels() -> None:
    """The pair, LBP and fingerprint kernels of imprint.kernels, for uint8, float32 and float64 inputs, and read-only
    uint8 / float32 ones (what the Ray workers get)."""
    import imprint.kernels as K

    rng = np.random.default_rng(0)
    u8 = _images(rng, 4)
    pairs = np.array([[0, 1], [2, 3], [1, 1]], np.int64)
    for x in (u8, u8.astype(np.float32), u8.astype(np.float64), _readonly(u8), _readonly(u8.astype(np.float32))):
        K.ssim_pairs(x, x, pairs)
        K.mse_pairs(x, x, pairs)
        K.ssim_mse_pairs(x, x, pairs)
        K.ssim(x[0], x[1])
        for P, R, method in ((8, 1.0, "uniform"), (16, 2.0, "nri_uniform"), (8, 1.0, "default")):
            K.lbp_histograms(x, P, R, method)
            K.lbp(x[0], P, R, method)
        K.fingerprint_features(x)


def engine() -> None:
    """The search, z-score and registration kernels, through small audits (unsupervised and with a reference), and
    the exact search on read-only arrays."""
    from imprint.engine.membership import audit_membership
    from imprint.engine.search import knn

    rng = np.random.default_rng(1)
    real, ref = _images(rng, 24), _images(rng, 24)
    gen = np.concatenate([_images(rng, 20), real[:4]])
    audit_membership(gen, real, backbone=None)
    audit_membership(gen, real, reference=ref, backbone=None)
    for metric in ("l2", "cosine"):
        v = rng.normal(size=(40, 8)).astype(np.float32)
        knn(v, v[:5], 3, metric=metric, index="Flat")
        knn(_readonly(v), _readonly(v[:5]), 3, metric=metric, index="Flat")


PARTS = {"kernels": kernels, "engine": engine}

if __name__ == "__main__":
    if not sys.argv[1:]:  # every part in its own process, all at once (what setup.sh and test.sh run)
        import subprocess

        procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), name]) for name in PARTS]
        failed = [name for name, p in zip(PARTS, procs) if p.wait() != 0]
        for name in failed:
            print(f"warm_numba: {name} failed: the first job compiles it", flush=True)
        sys.exit(0)
    for name in sys.argv[1:]:
        t0 = time.perf_counter()
        try:
            PARTS[name]()
            print(f"warm_numba: {name} compiled in {time.perf_counter() - t0:.0f} s", flush=True)
        except Exception as e:  # the tests compile on first use instead
            print(f"warm_numba: {name} not warmed ({type(e).__name__}: {e})", flush=True)
