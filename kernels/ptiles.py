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


@njit(cache=True, nogil=True, parallel=True, fastmath={"reassoc", "contract"})
def ptile_pair_values_fast(bq, bq_m, bb, qi, bi, ty, tx, cy, cx, th, tw, win, half, min_std):
    """:func:`ptile_pair_values`, the same peaks to float tolerance, ~10x cheaper: each tile's and each base window's
    sums and sums of squares come from integral images (of the tile, and of the base around the search square with
    zeros outside the base), so each shift costs one product sum over the tile (the base's zeros leave the sum over
    the tile's inside part), vectorised."""
    P = qi.shape[0]
    K = ty.shape[0]
    H = bb.shape[1]
    W = bb.shape[2]
    rh = th + 2 * win
    rw = tw + 2 * win
    out = np.full((P, K), np.nan)
    for p in prange(P):
        b = bb[bi[p]]
        qt = np.empty((th, tw))
        iq = np.zeros((th + 1, tw + 1))
        iqq = np.zeros((th + 1, tw + 1))
        bl = np.empty((rh, rw))
        ib = np.zeros((rh + 1, rw + 1))
        ibb = np.zeros((rh + 1, rw + 1))
        for k in range(K):
            q = bq[qi[p]] if k < half else bq_m[qi[p]]
            y0 = ty[k]
            x0 = tx[k]
            for i in range(th):
                for j in range(tw):
                    qt[i, j] = q[y0 + i, x0 + j]
            for i in range(th):
                s = 0.0
                s2 = 0.0
                for j in range(tw):
                    v = qt[i, j]
                    s += v
                    s2 += v * v
                    iq[i + 1, j + 1] = iq[i, j + 1] + s
                    iqq[i + 1, j + 1] = iqq[i, j + 1] + s2
            by = cy[p, k] - win
            bx = cx[p, k] - win
            for i in range(rh):
                yy = by + i
                for j in range(rw):
                    xx = bx + j
                    if 0 <= yy < H and 0 <= xx < W:
                        bl[i, j] = b[yy, xx]
                    else:
                        bl[i, j] = 0.0
            for i in range(rh):
                s = 0.0
                s2 = 0.0
                for j in range(rw):
                    v = bl[i, j]
                    s += v
                    s2 += v * v
                    ib[i + 1, j + 1] = ib[i, j + 1] + s
                    ibb[i + 1, j + 1] = ibb[i, j + 1] + s2
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
                    sq = iq[i1, j1] - iq[i0, j1] - iq[i1, j0] + iq[i0, j0]
                    sqq = iqq[i1, j1] - iqq[i0, j1] - iqq[i1, j0] + iqq[i0, j0]
                    a0 = dy + win
                    c0 = dx + win
                    sb = ib[a0 + i1, c0 + j1] - ib[a0 + i0, c0 + j1] - ib[a0 + i1, c0 + j0] + ib[a0 + i0, c0 + j0]
                    sbb = (ibb[a0 + i1, c0 + j1] - ibb[a0 + i0, c0 + j1] - ibb[a0 + i1, c0 + j0]
                           + ibb[a0 + i0, c0 + j0])
                    mq = sq / n
                    mb = sb / n
                    vq = sqq / n - mq * mq
                    vb = sbb / n - mb * mb
                    if vq < min_std * min_std or vb < min_std * min_std:
                        continue
                    sqb = 0.0
                    for i in range(th):                            # zeros outside the base: the inside part's sum
                        for j in range(tw):
                            sqb += qt[i, j] * bl[a0 + i, c0 + j]
                    r = (sqb / n - mq * mb) / np.sqrt(vq * vb)
                    if r > best:
                        best = r
            if best > -2.0:
                out[p, k] = best
    return out


@njit(cache=True, nogil=True, parallel=True)
def window_argmax(r, nw):
    """``r`` float32 [M * nw, Q] (rows: M images x nw window positions): each image's best row per column and its
    position in the window (the first best, as ``numpy.argmax``): (float32 [M, Q], int64 [M, Q])."""
    Q = r.shape[1]
    M = r.shape[0] // nw
    best = np.empty((M, Q), np.float32)
    arg = np.zeros((M, Q), np.int64)
    for m in prange(M):
        for q in range(Q):
            best[m, q] = r[m * nw, q]
        for w in range(1, nw):
            row = m * nw + w
            for q in range(Q):
                v = r[row, q]
                if v > best[m, q]:
                    best[m, q] = v
                    arg[m, q] = w
    return best, arg


@njit(cache=True, nogil=True, parallel=True)
def unit_patches(grids, h, w, min_std):
    """Every ``h x w`` patch of every grid (``grids`` float32 [M, gh, gw]), centred and scaled to unit norm, flat
    (row-major position ``y * (gw - w + 1) + x``, pixels row-major): float32 [M, positions, h * w]; a patch whose
    standard deviation is below ``min_std`` is all zeros (it never matches).  Sums in float64."""
    M, gh, gw = grids.shape
    py = gh - h + 1
    px = gw - w + 1
    d = h * w
    out = np.zeros((M, py * px, d), np.float32)
    for m in prange(M):
        g = grids[m]
        for y in range(py):
            for x in range(px):
                s = 0.0
                s2 = 0.0
                for i in range(h):
                    for j in range(w):
                        v = np.float64(g[y + i, x + j])
                        s += v
                        s2 += v * v
                mu = s / d
                var = s2 / d - mu * mu
                if var < min_std * min_std:
                    continue
                ss = 0.0
                for i in range(h):
                    for j in range(w):
                        c = np.float64(g[y + i, x + j]) - mu
                        ss += c * c
                inv = 1.0 / max(np.sqrt(ss), 1e-9)
                o = out[m, y * px + x]
                for i in range(h):
                    for j in range(w):
                        o[i * w + j] = (np.float64(g[y + i, x + j]) - mu) * inv
    return out
