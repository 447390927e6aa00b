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
    n = th * tw
    for p in prange(P):
        b = bb[bi[p]]
        for k in range(K):
            q = bq[qi[p]] if k < half else bq_m[qi[p]]
            y0 = ty[k]
            x0 = tx[k]
            sq = 0.0
            sqq = 0.0
            for i in range(th):
                for j in range(tw):
                    v = q[y0 + i, x0 + j]
                    sq += v
                    sqq += v * v
            mq = sq / n
            vq = sqq / n - mq * mq
            if vq < min_std * min_std:
                continue
            sdq = np.sqrt(vq)
            best = -2.0
            for dy in range(-win, win + 1):
                yy = cy[p, k] + dy
                if yy < 0 or yy + th > H:
                    continue
                for dx in range(-win, win + 1):
                    xx = cx[p, k] + dx
                    if xx < 0 or xx + tw > W:
                        continue
                    sb = 0.0
                    sbb = 0.0
                    sqb = 0.0
                    for i in range(th):
                        for j in range(tw):
                            u = b[yy + i, xx + j]
                            sb += u
                            sbb += u * u
                            sqb += u * q[y0 + i, x0 + j]
                    mb = sb / n
                    vb = sbb / n - mb * mb
                    if vb < min_std * min_std:
                        continue
                    r = (sqb / n - mq * mb) / (sdq * np.sqrt(vb))
                    if r > best:
                        best = r
            if best > -2.0:
                out[p, k] = best
    return out
