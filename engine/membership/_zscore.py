"""Compiled per-image z-scoring of uint8 images (:func:`engine.membership.evidence.zscore_images`' fast path)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, nogil=True)
def zscore_u8_into(x, out):  # pragma: no cover - numba
    """``out[i] = (float32(x[i]) - mu_i) / sd_i`` with float32 ``mu_i``, ``sd_i`` (sd <= 1e-6 -> 1) from exact
    integer sums; ``x`` uint8 [N, D], ``out`` float32 [N, D]."""
    n, d = x.shape
    for i in prange(n):
        s = np.int64(0)
        ss = np.int64(0)
        for t in range(d):
            v = np.int64(x[i, t])
            s += v
            ss += v * v
        mu64 = np.float64(s) / d
        var = np.float64(d * ss - s * s) / (np.float64(d) * np.float64(d))
        sd = np.float32(np.sqrt(var))
        mu = np.float32(mu64)
        if not sd > np.float32(1e-6):
            sd = np.float32(1.0)
        for t in range(d):
            out[i, t] = (np.float32(x[i, t]) - mu) / sd
