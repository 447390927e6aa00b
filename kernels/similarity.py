"""Pairwise full-reference similarity kernels: SSIM, MSE and PSNR.

SSIM follows ``skimage.metrics.structural_similarity(a, b, data_range=R,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` exactly in
definition:

* an 11-tap Gaussian window (sigma 1.5, truncate 3.5, radius 5, weights
  ``exp(-x^2 / (2 sigma^2))`` normalised to sum 1, as ``scipy.ndimage``);
* population (co)variances, ``K1 = 0.01``, ``K2 = 0.03``;
* the SSIM map is cropped by ``pad = 5`` pixels on every side before the mean.

Because of the crop, every retained output pixel's 11x11 window lies entirely
inside the image, so skimage's ``mode='reflect'`` padding never influences the
result; the kernels therefore evaluate the filters only on the "valid" region
``[(H-10), (W-10)]`` and need no edge handling at all.

Shortlist structure
-------------------
``ssim_pairs`` scores many ``(a, b)`` pairs in which the same image appears in
several pairs.  For every image used by some pair it precomputes, once, in
float64 and stored as float32:

* ``mu'``: the Gaussian-filtered image *minus its (float32-rounded) mean m*,
* ``var``: the filtered local variance ``G*(x-m)^2 - mu'^2`` (never negative
  beyond rounding, no cancellation because it is computed in float64).

Per pair only the cross term ``G*((x-m_x)(y-m_y))`` is filtered (separable,
symmetric taps, float32, one fused loop per output row) and combined with the
stats.  Centering by the image mean keeps the float32 cross term small and the
covariance ``G*(x'y') - mu'_x mu'_y`` well conditioned; the result agrees with
the float64 skimage computation to ~1e-6 (tests require 1e-4).

When all needed per-image stats do not fit ``max_cache_bytes``, the pairs are
tiled over blocks of A-images and B-images and stats are recomputed per tile.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ._validate import as_images, as_pairs, check_data_range, common_dtype, same_hw

__all__ = ["ssim", "ssim_pairs", "mse_pairs", "psnr_pairs", "gaussian_window", "SSIM_WIN"]

#: SSIM window size (11 taps: sigma 1.5, truncate 3.5 as skimage).
SSIM_WIN = 11
_PAD = (SSIM_WIN - 1) // 2
_K1 = 0.01
_K2 = 0.03


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> np.ndarray:
    """1-D Gaussian taps exactly as ``scipy.ndimage._gaussian_kernel1d`` (float64)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return phi / phi.sum()


# ----------------------------------------------------------------------------- SSIM stats
@njit(parallel=True, cache=True)
def _ssim_stats(X, idx, w, mu_out, var_out, m_out):
    """Per-image filtered mean (centred) and variance on the valid region.

    X : [N,H,W] uint8/float32; idx : int64[K] images to process;
    w : float64[11]; mu_out, var_out : float32[K,H-10,W-10]; m_out : float64[K].
    """
    K = idx.shape[0]
    H = X.shape[1]
    W = X.shape[2]
    Hi = H - 10
    Wi = W - 10
    for k in prange(K):
        img = X[idx[k]]
        s = 0.0
        for r in range(H):
            for c in range(W):
                s += np.float64(img[r, c])
        # centre on a float32-representable value so the pair kernel (which
        # centres in float32) is exactly consistent with these stats
        m = np.float64(np.float32(s / (H * W)))
        xc = np.empty((H, W), np.float64)
        for r in range(H):
            for c in range(W):
                xc[r, c] = np.float64(img[r, c]) - m
        t1 = np.empty(W, np.float64)
        t2 = np.empty(W, np.float64)
        for i in range(Hi):
            for j in range(W):
                a1 = 0.0
                a2 = 0.0
                for q in range(11):
                    v = xc[i + q, j]
                    a1 += w[q] * v
                    a2 += w[q] * (v * v)
                t1[j] = a1
                t2[j] = a2
            for j in range(Wi):
                b1 = 0.0
                b2 = 0.0
                for q in range(11):
                    b1 += w[q] * t1[j + q]
                    b2 += w[q] * t2[j + q]
                mu_out[k, i, j] = np.float32(b1)
                var_out[k, i, j] = np.float32(b2 - b1 * b1)
        m_out[k] = m


@njit(parallel=True, fastmath=True, cache=True)
def _ssim_pair_kernel(A, B, ga, gb, sa, sb, mua, vara, ma, mub, varb, mb, w, c1, c2, nchunk, out):
    """SSIM for pairs p: images A[ga[p]], B[gb[p]] with stats slots sa[p], sb[p].

    Only the cross term is filtered here (float32, symmetric taps).  out: float64[P].
    """
    P = ga.shape[0]
    H = A.shape[1]
    W = A.shape[2]
    Hi = H - 10
    Wi = W - 10
    w0 = np.float32(w[0])
    w1 = np.float32(w[1])
    w2 = np.float32(w[2])
    w3 = np.float32(w[3])
    w4 = np.float32(w[4])
    w5 = np.float32(w[5])
    C1 = np.float32(c1)
    C2 = np.float32(c2)
    two = np.float32(2.0)
    for ch in prange(nchunk):
        lo = ch * P // nchunk
        hi = (ch + 1) * P // nchunk
        prod = np.empty((H, W), np.float32)
        t = np.empty(W, np.float32)
        for p in range(lo, hi):
            x = A[ga[p]]
            y = B[gb[p]]
            ka = sa[p]
            kb = sb[p]
            mxa = np.float32(ma[ka])
            myb = np.float32(mb[kb])
            for r in range(H):
                for j in range(W):
                    prod[r, j] = (np.float32(x[r, j]) - mxa) * (np.float32(y[r, j]) - myb)
            acc = 0.0
            for i in range(Hi):
                for j in range(W):
                    t[j] = (
                        w5 * prod[i + 5, j]
                        + w4 * (prod[i + 4, j] + prod[i + 6, j])
                        + w3 * (prod[i + 3, j] + prod[i + 7, j])
                        + w2 * (prod[i + 2, j] + prod[i + 8, j])
                        + w1 * (prod[i + 1, j] + prod[i + 9, j])
                        + w0 * (prod[i, j] + prod[i + 10, j])
                    )
                racc = np.float32(0.0)
                for j in range(Wi):
                    cxy = (
                        w5 * t[j + 5]
                        + w4 * (t[j + 4] + t[j + 6])
                        + w3 * (t[j + 3] + t[j + 7])
                        + w2 * (t[j + 2] + t[j + 8])
                        + w1 * (t[j + 1] + t[j + 9])
                        + w0 * (t[j] + t[j + 10])
                    )
                    mx = mua[ka, i, j]
                    my = mub[kb, i, j]
                    ux = mx + mxa
                    uy = my + myb
                    cov = cxy - mx * my
                    num = (two * ux * uy + C1) * (two * cov + C2)
                    den = (ux * ux + uy * uy + C1) * (vara[ka, i, j] + varb[kb, i, j] + C2)
                    racc += num / den
                acc += np.float64(racc)
            out[p] = acc / (Hi * Wi)


def _stats_bytes(h: int, w: int) -> int:
    return 2 * 4 * (h - 10) * (w - 10) + 8


def _compute_stats(X: np.ndarray, idx: np.ndarray, w: np.ndarray):
    k = idx.shape[0]
    h, wd = X.shape[1], X.shape[2]
    mu = np.empty((k, h - 10, wd - 10), np.float32)
    var = np.empty((k, h - 10, wd - 10), np.float32)
    m = np.empty(k, np.float64)
    if k:
        _ssim_stats(X, idx, w, mu, var, m)
    return mu, var, m


def _ssim_pairs_f64(A, B, pairs, data_range, max_cache_bytes):
    """Validated core: returns float64[P]."""
    n_pairs = pairs.shape[0]
    out = np.empty(n_pairs, np.float64)
    if n_pairs == 0:
        return out
    w = gaussian_window()
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    h, wd = A.shape[1], A.shape[2]
    per = _stats_bytes(h, wd)
    ua = np.unique(pairs[:, 0])
    ub = np.unique(pairs[:, 1])
    budget = max(int(max_cache_bytes), 4 * per)
    if (ua.size + ub.size) * per <= budget:
        blocks_a, blocks_b = [ua], [ub]
    else:
        per_side = max(1, budget // (2 * per))
        blocks_a = [ua[i : i + per_side] for i in range(0, ua.size, per_side)]
        blocks_b = [ub[i : i + per_side] for i in range(0, ub.size, per_side)]
    # block id of every pair's a and b (blocks are contiguous ranges of sorted uniques)
    ba = np.searchsorted(np.array([blk[0] for blk in blocks_a]), pairs[:, 0], side="right") - 1
    bb = np.searchsorted(np.array([blk[0] for blk in blocks_b]), pairs[:, 1], side="right") - 1
    order = np.lexsort((pairs[:, 1], pairs[:, 0], bb, ba))
    keys = ba[order] * len(blocks_b) + bb[order]
    bounds = np.flatnonzero(np.diff(keys)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [order.size]))
    cur_a = -1
    for s, e in zip(starts, ends):
        sel = order[s:e]
        ia, ib = ba[sel[0]], bb[sel[0]]
        if ia != cur_a:
            ida = blocks_a[ia]
            mua, vara, ma = _compute_stats(A, ida, w)
            cur_a = ia
        idb = blocks_b[ib]
        mub, varb, mb = _compute_stats(B, idb, w)
        ga = np.ascontiguousarray(pairs[sel, 0])
        gb = np.ascontiguousarray(pairs[sel, 1])
        sa = np.searchsorted(ida, ga).astype(np.int64)
        sb = np.searchsorted(idb, gb).astype(np.int64)
        res = np.empty(sel.size, np.float64)
        nchunk = int(min(sel.size, numba.get_num_threads() * 8))
        _ssim_pair_kernel(A, B, ga, gb, sa, sb, mua, vara, ma, mub, varb, mb, w, c1, c2, nchunk, res)
        out[sel] = res
    return out


def _prep_stacks(A, B):
    A = as_images(A, "A", 3, (SSIM_WIN, SSIM_WIN))
    B = as_images(B, "B", 3, (SSIM_WIN, SSIM_WIN))
    same_hw(A, B, "A", "B")
    return common_dtype(A, B)


def ssim_pairs(A, B, pairs, data_range=255.0, *, max_cache_bytes=512 * 2**20) -> np.ndarray:
    """Mean SSIM for each ``(A[i], B[j])`` pair of a shortlist.

    Parameters
    ----------
    A : ndarray, uint8 or float32 (float64 is cast to float32), shape [N, H, W]
    B : ndarray, uint8 or float32 (float64 is cast to float32), shape [M, H, W]
        ``H, W >= 11``.
    pairs : ndarray, integer, shape [P, 2]
        ``(index into A, index into B)``; images may repeat across pairs.
    data_range : float
        Dynamic range of the pixel values (255 for 8-bit images).
    max_cache_bytes : int
        Memory budget for the per-image precomputed stats (8 bytes per valid
        pixel per image); larger shortlists are tiled.

    Returns
    -------
    ndarray, float32, shape [P]
        ``structural_similarity(A[i], B[j], data_range=data_range,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``
        within 1e-4 (typically ~1e-6).

    Raises
    ------
    ValueError
        Wrong ranks/dtypes, mismatched image shapes, images smaller than
        11x11, NaN/inf values, bad pair indices or non-positive data_range.
    """
    A, B = _prep_stacks(A, B)
    pairs = as_pairs(pairs, A.shape[0], B.shape[0])
    r = check_data_range(data_range)
    return _ssim_pairs_f64(A, B, pairs, r, max_cache_bytes).astype(np.float32)


def ssim(a, b, data_range=255.0) -> float:
    """Mean SSIM of two 2-D images (skimage-compatible, see module docstring).

    Parameters
    ----------
    a, b : ndarray, uint8/float32/float64, shape [H, W] with ``H, W >= 11``
    data_range : float

    Returns
    -------
    float
        Equal to ``skimage.metrics.structural_similarity(a, b,
        data_range=data_range, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False)`` within 1e-4.
    """
    a = as_images(a, "a", 2, (SSIM_WIN, SSIM_WIN))
    b = as_images(b, "b", 2, (SSIM_WIN, SSIM_WIN))
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    r = check_data_range(data_range)
    A, B = common_dtype(a[None], b[None])
    return float(_ssim_pairs_f64(A, B, np.zeros((1, 2), np.int64), r, 2**62)[0])


# ----------------------------------------------------------------------------- MSE / PSNR
@njit(parallel=True, cache=True)
def _mse_kernel_u8(A, B, ia, ib, out):
    P = ia.shape[0]
    H = A.shape[1]
    W = A.shape[2]
    for p in prange(P):
        x = A[ia[p]]
        y = B[ib[p]]
        tot = 0
        for r in range(H):
            racc = np.int32(0)  # <= W * 255^2 < 2^31 for W < 33025
            for c in range(W):
                d = np.int32(x[r, c]) - np.int32(y[r, c])
                racc += d * d
            tot += np.int64(racc)
        out[p] = tot / (H * W)


@njit(parallel=True, cache=True)
def _mse_kernel_f(A, B, ia, ib, out):
    P = ia.shape[0]
    H = A.shape[1]
    W = A.shape[2]
    for p in prange(P):
        x = A[ia[p]]
        y = B[ib[p]]
        tot = 0.0
        for r in range(H):
            racc = 0.0
            for c in range(W):
                d = np.float64(x[r, c]) - np.float64(y[r, c])
                racc += d * d
            tot += racc
        out[p] = tot / (H * W)


def _mse_f64(A, B, pairs) -> np.ndarray:
    out = np.empty(pairs.shape[0], np.float64)
    if pairs.shape[0] == 0:
        return out
    ia = np.ascontiguousarray(pairs[:, 0])
    ib = np.ascontiguousarray(pairs[:, 1])
    if A.dtype == np.uint8 and A.shape[2] < 33025:
        _mse_kernel_u8(A, B, ia, ib, out)
    else:
        _mse_kernel_f(A, B, ia, ib, out)
    return out


def mse_pairs(A, B, pairs) -> np.ndarray:
    """Mean squared error for each ``(A[i], B[j])`` pair.

    Parameters
    ----------
    A : ndarray, uint8/float32/float64, shape [N, H, W]
    B : ndarray, uint8/float32/float64, shape [M, H, W]
    pairs : ndarray, integer, shape [P, 2]

    Returns
    -------
    ndarray, float32, shape [P]
        ``skimage.metrics.mean_squared_error(A[i], B[j])`` (exact integer
        accumulation for uint8; float64 accumulation otherwise).
    """
    A = as_images(A, "A", 3)
    B = as_images(B, "B", 3)
    same_hw(A, B, "A", "B")
    if A.shape[1] * A.shape[2] == 0:
        raise ValueError("A and B: images must not be empty")
    A, B = common_dtype(A, B)
    pairs = as_pairs(pairs, A.shape[0], B.shape[0])
    return _mse_f64(A, B, pairs).astype(np.float32)


def psnr_pairs(A, B, pairs, data_range=255.0) -> np.ndarray:
    """Peak signal-to-noise ratio (dB) for each ``(A[i], B[j])`` pair.

    ``10 * log10(data_range**2 / mse)``; identical images give ``+inf`` (as
    skimage's ``peak_signal_noise_ratio``).  Shapes and dtypes as
    :func:`mse_pairs`; returns float32 [P].
    """
    r = check_data_range(data_range)
    A = as_images(A, "A", 3)
    B = as_images(B, "B", 3)
    same_hw(A, B, "A", "B")
    if A.shape[1] * A.shape[2] == 0:
        raise ValueError("A and B: images must not be empty")
    A, B = common_dtype(A, B)
    pairs = as_pairs(pairs, A.shape[0], B.shape[0])
    mse = _mse_f64(A, B, pairs)
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10((r * r) / mse)
    return out.astype(np.float32)
