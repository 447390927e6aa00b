"""Tile peaks for the partial-copy channel (:mod:`imprint.engine.membership.ptiles`).

For every pair ``p`` (query image ``qi[p]``, base image ``bi[p]``) and every tile ``k`` of the query (the first
``half`` tiles from the query itself, the rest from its mirror), the peak Pearson correlation of the tile with the
base's same-size window over a square of shifts ``[-win, win]^2`` around the window origin ``(cy[p, k], cx[p, k])``
(clipped to the base).  A tile whose standard deviation, or every window's, is below ``min_std`` is not counted
(NaN).  Per pair in parallel (Numba, ``nogil``); float32 inputs, float64 sums.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True, parallel=True)
def ptile_pair_values(bq, bq_m, bb, qi, bi, ty, tx, cy, cx, th, tw, win, half, min_std):
    P = qi.shape[0]
    K = ty.shape[0]
    H = bb.shape[1]
    W = bb.shape[2]
    out = np.full((P, K), np.nan)
    for p in prange(P):
        b = bb[bi[p]]
        for k in range(K):
            q = bq[qi[p]] if k < half else bq_m[qi[p]]
            y0 = ty[k]
            x0 = tx[k]
            best = -2.0
            for dy in range(-win, win + 1):
                yy = cy[p, k] + dy
                i0 = max(0, -yy)
                i1 = min(th, H - yy)
                for dx in range(-win, win + 1):
                    xx = cx[p, k] + dx
                    j0 = max(0, -xx)
                    j1 = min(tw, W - xx)
                    n = (i1 - i0) * (j1 - j0)
                    if i1 <= i0 or j1 <= j0 or 2 * n < th * tw:      # at least half the tile on the base
                        continue
                    sq = 0.0
                    sqq = 0.0
                    sb = 0.0
                    sbb = 0.0
                    sqb = 0.0
                    for i in range(i0, i1):
                        for j in range(j0, j1):
                            v = q[y0 + i, x0 + j]
                            u = b[yy + i, xx + j]
                            sq += v
                            sqq += v * v
                            sb += u
                            sbb += u * u
                            sqb += u * v
                    mq = sq / n
                    mb = sb / n
                    vq = sqq / n - mq * mq
                    vb = sbb / n - mb * mb
                    if vq < min_std * min_std or vb < min_std * min_std:
                        continue
                    r = (sqb / n - mq * mb) / np.sqrt(vq * vb)
                    if r > best:
                        best = r
            if best > -2.0:
                out[p, k] = best
    return out
