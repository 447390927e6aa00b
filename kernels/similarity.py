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

Shortlist structure and numerics
--------------------------------
``ssim_pairs`` scores many ``(a, b)`` pairs in which the same image appears in
several pairs (a kNN shortlist: each real image has ~10 generated partners).

* Pairs are sorted and grouped by their A image (SSIM is symmetric, so the
  side with more distinct images plays A).  For each group the A image's stats
  are computed once into thread-local buffers that stay cache resident while
  its partners are scored; the B images' stats are computed once (in
  parallel) into a shared array and streamed per pair.
* Per image, with ``m = round(mean)`` (an integer, so ``x - m`` is exact):
  ``mu' = G*(x-m)`` stored as int32 fixed point (step ``2**-k``, error
  ``<= max|x-m| * 2**-31``) and ``var = G*(x-m)^2 - mu'^2`` computed in
  float64 from the stored mean, stored as float32 in units of the step squared
  (so its range follows the data's scale: no float32 under/overflow).  8 bytes per valid pixel:
  streaming the B stats is the memory-bound part of the pair kernel.
* Per pair only the cross term ``G*((x-m_x)(y-m_y))`` is filtered: the
  centred products are exact (integers for uint8), the separable symmetric
  11-tap passes run in float64 (vertical pass from a 12-row ring buffer, two
  output rows per step; horizontal pass fused with the SSIM formula), and
  ``cov = G*(x'y') - mu'_x mu'_y`` is formed in float64, so there is no
  cancellation problem even for flat bright regions.  Kernels use
  ``error_model="numpy"`` (a Python-style zero-division check would stop the
  division loop from vectorising).

Accuracy: uint8 inputs agree with skimage's float64 computation to ~5e-9
(identical images give 1 up to the float32 rounding of the variances, < 1e-7);
float32 inputs agree with skimage run on the same values in float64 to ~1e-9
(skimage's own float32 path differs from that by up to ~2e-6).

When the B stats do not fit ``max_cache_bytes``, the distinct B images are
processed in blocks and the A stats are recomputed per block.

One pair kernel (:func:`_pair`, driven by :func:`_pairs_grouped`) serves
``ssim_pairs``, ``ssim_mse_pairs`` and ``ssim``: it also sums the squared
differences of the pair while it forms the centred products, so
:func:`ssim_mse_pairs` gives SSIM and MSE in one pass over the pixels
(``imprint pairs``).  (Forming the grouped image's formula terms once per
group in float64 was tried: no gain with 2 threads, so not kept.)
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ._validate import as_images, as_pairs, check_data_range, common_dtype, same_hw
from .constants import FIXED_POINT_MAX, MAX_STEP_EXPONENT, SSIM_K1, SSIM_K2, SSIM_WIN, gaussian_window

__all__ = ["ssim", "ssim_pairs", "ssim_mse_pairs", "mse_pairs", "psnr_pairs", "gaussian_window", "SSIM_WIN"]

# SSIM_WIN (11 taps: sigma 1.5, truncate 3.5 as skimage), K1, K2 and gaussian_window come from kernels.constants,
# the one definition shared with the CUDA kernels (kernels.cuda_similarity).
_PAD = (SSIM_WIN - 1) // 2
_K1 = SSIM_K1
_K2 = SSIM_K2


# ----------------------------------------------------------------------------- SSIM kernels
@njit(fastmath=True, cache=True)
def _centre(img):
    """Centring constant and fixed-point step of one image.

    Returns ``(m, q)``: ``m = round(mean(img))`` (an integer keeps ``x - m``
    exact for uint8 and, in float64, for float32 inputs, so the centred
    products entering the filters carry no rounding), and ``q = 2**-k``, the
    step of the int32 fixed-point storage of the centred filtered mean: the
    largest power of two with ``max|x - m| / q <= 2**31 - 2`` (filtered means
    are bounded by the extreme values), i.e. a quantisation error
    ``<= max|x - m| * 2**-31``.
    """
    s = 0.0
    lo = np.inf
    hi = -np.inf
    for r in range(img.shape[0]):
        row = img[r]
        rs = 0.0
        for c in range(img.shape[1]):
            rs += np.float64(row[c])
        # separate min / max loops vectorise (uint8: ~8x faster than fused)
        rlo = row[0]
        for c in range(img.shape[1]):
            rlo = min(rlo, row[c])
        rhi = row[0]
        for c in range(img.shape[1]):
            rhi = max(rhi, row[c])
        s += rs
        lo = min(lo, np.float64(rlo))
        hi = max(hi, np.float64(rhi))
    m = np.float64(np.round(s / (img.shape[0] * img.shape[1])))
    big = max(hi - m, m - lo)
    if big <= 0.0:
        return m, 1.0
    k = min(np.floor(np.log2(FIXED_POINT_MAX / big)), MAX_STEP_EXPONENT)  # keep 1/q finite
    return m, 2.0 ** (-k)


@njit(fastmath=True, error_model="numpy", cache=True)
def _stats_into(img, m, step, w, mu, var, ring1, ring2, t1, t2):
    """Filtered centred mean and variance of one image on the valid region.

    img : [H, W] uint8/float32; m, step : centring constant and fixed-point step
    (:func:`_centre`);
    mu : int32 [H-10, W-10] <- ``floor(G*(x-m) / step + 1/2)`` (fixed point: stats are
    streamed once per pair, so they are kept small: 8 bytes per pixel);
    var : float32 [H-10, W-10] <- ``(G*(x-m)^2 - (step mu)^2) / step^2`` computed in float64
    with the *stored* mean, so that ``ssim(x, x) == 1`` up to float32 rounding;
    ring1, ring2 : float64 [11, W], t1, t2 : float64 [W] scratch.
    Vertical pass over an 11-row ring buffer, then the horizontal pass, per
    output row (everything L1/L2 resident).
    """
    iq = 1.0 / step
    iq2 = iq * iq
    H = img.shape[0]
    W = img.shape[1]
    Hi = H - 10
    Wi = W - 10
    w0 = w[0]
    w1 = w[1]
    w2 = w[2]
    w3 = w[3]
    w4 = w[4]
    w5 = w[5]
    for r in range(10):
        xr = img[r]
        g1 = ring1[r]
        g2 = ring2[r]
        for j in range(W):
            v = np.float64(xr[j]) - m
            g1[j] = v
            g2[j] = v * v
    a0 = t1[0:Wi]
    a1 = t1[1 : Wi + 1]
    a2 = t1[2 : Wi + 2]
    a3 = t1[3 : Wi + 3]
    a4 = t1[4 : Wi + 4]
    a5 = t1[5 : Wi + 5]
    a6 = t1[6 : Wi + 6]
    a7 = t1[7 : Wi + 7]
    a8 = t1[8 : Wi + 8]
    a9 = t1[9 : Wi + 9]
    a10 = t1[10 : Wi + 10]
    b0 = t2[0:Wi]
    b1 = t2[1 : Wi + 1]
    b2 = t2[2 : Wi + 2]
    b3 = t2[3 : Wi + 3]
    b4 = t2[4 : Wi + 4]
    b5 = t2[5 : Wi + 5]
    b6 = t2[6 : Wi + 6]
    b7 = t2[7 : Wi + 7]
    b8 = t2[8 : Wi + 8]
    b9 = t2[9 : Wi + 9]
    b10 = t2[10 : Wi + 10]
    for i in range(Hi):
        rn = i + 10
        q = rn % 11
        xr = img[rn]
        g1 = ring1[q]
        g2 = ring2[q]
        for j in range(W):
            v = np.float64(xr[j]) - m
            g1[j] = v
            g2[j] = v * v
        p0 = ring1[i % 11]
        p1 = ring1[(i + 1) % 11]
        p2 = ring1[(i + 2) % 11]
        p3 = ring1[(i + 3) % 11]
        p4 = ring1[(i + 4) % 11]
        p5 = ring1[(i + 5) % 11]
        p6 = ring1[(i + 6) % 11]
        p7 = ring1[(i + 7) % 11]
        p8 = ring1[(i + 8) % 11]
        p9 = ring1[(i + 9) % 11]
        p10 = ring1[q]
        for j in range(W):
            t1[j] = (
                w5 * p5[j]
                + w4 * (p4[j] + p6[j])
                + w3 * (p3[j] + p7[j])
                + w2 * (p2[j] + p8[j])
                + w1 * (p1[j] + p9[j])
                + w0 * (p0[j] + p10[j])
            )
        p0 = ring2[i % 11]
        p1 = ring2[(i + 1) % 11]
        p2 = ring2[(i + 2) % 11]
        p3 = ring2[(i + 3) % 11]
        p4 = ring2[(i + 4) % 11]
        p5 = ring2[(i + 5) % 11]
        p6 = ring2[(i + 6) % 11]
        p7 = ring2[(i + 7) % 11]
        p8 = ring2[(i + 8) % 11]
        p9 = ring2[(i + 9) % 11]
        p10 = ring2[q]
        for j in range(W):
            t2[j] = (
                w5 * p5[j]
                + w4 * (p4[j] + p6[j])
                + w3 * (p3[j] + p7[j])
                + w2 * (p2[j] + p8[j])
                + w1 * (p1[j] + p9[j])
                + w0 * (p0[j] + p10[j])
            )
        mo = mu[i]
        vo = var[i]
        for j in range(Wi):
            u = (
                w5 * a5[j]
                + w4 * (a4[j] + a6[j])
                + w3 * (a3[j] + a7[j])
                + w2 * (a2[j] + a8[j])
                + w1 * (a1[j] + a9[j])
                + w0 * (a0[j] + a10[j])
            )
            s2 = (
                w5 * b5[j]
                + w4 * (b4[j] + b6[j])
                + w3 * (b3[j] + b7[j])
                + w2 * (b2[j] + b8[j])
                + w1 * (b1[j] + b9[j])
                + w0 * (b0[j] + b10[j])
            )
            uq = np.floor(u * iq + 0.5)
            mo[j] = np.int32(uq)
            uq = uq * step
            vo[j] = np.float32((s2 - uq * uq) * iq2)


@njit(fastmath=True, error_model="numpy", cache=True)
def _pair(x, y, ma, mb, qa, qb, mua, vara, mub, varb, w, c1, c2, ring, ta, tb):
    """Mean SSIM and the sum of squared differences ``sum((x - y)**2)`` of one pair, in one pass over the pixels.

    Only the cross term ``G*((x-ma)(y-mb))`` is filtered: the centred products are exact (integers for uint8)
    and both separable symmetric 11-tap passes run in float64 (vertical pass two output rows per step from a
    12-row ring of centred products, 12 row loads for 2 rows instead of 22; horizontal pass fused with the SSIM
    formula); ``cov = G*(x'y') - mu'_x mu'_y`` in float64, so there is no cancellation problem even in flat
    bright regions.  One function with explicit 2-D indexing: no array views are made per row (a view per row
    and per tap cost about as much as the arithmetic).  The squared differences are summed in the product pass
    (float64: exact for uint8, integers below 2**53).
    ring : float64 [12, W]; ta, tb : float64 [W] scratch.  Returns ``(mean SSIM, SSE)``, float64.
    """
    H = x.shape[0]
    W = x.shape[1]
    Hi = H - 10
    Wi = W - 10
    w0 = w[0]
    w1 = w[1]
    w2 = w[2]
    w3 = w[3]
    w4 = w[4]
    w5 = w[5]
    qa2 = qa * qa
    qb2 = qb * qb
    sse = 0.0
    acc = 0.0
    nxt = 0  # next image row to enter the ring
    i = 0
    while i < Hi:
        two = i + 1 < Hi
        last = i + 11 if two else i + 10  # rows needed: up to i + 10 (+1 for the second output row)
        while nxt <= last:
            q = nxt % 12
            rs = 0.0
            for j in range(W):
                xv = np.float64(x[nxt, j])
                yv = np.float64(y[nxt, j])
                ring[q, j] = (xv - ma) * (yv - mb)
                d = xv - yv
                rs += d * d
            sse += rs
            nxt += 1
        r0 = i % 12
        r1 = (i + 1) % 12
        r2 = (i + 2) % 12
        r3 = (i + 3) % 12
        r4 = (i + 4) % 12
        r5 = (i + 5) % 12
        r6 = (i + 6) % 12
        r7 = (i + 7) % 12
        r8 = (i + 8) % 12
        r9 = (i + 9) % 12
        r10 = (i + 10) % 12
        r11 = (i + 11) % 12
        if two:
            for j in range(W):
                q1 = ring[r1, j]
                q2 = ring[r2, j]
                q3 = ring[r3, j]
                q4 = ring[r4, j]
                q5 = ring[r5, j]
                q6 = ring[r6, j]
                q7 = ring[r7, j]
                q8 = ring[r8, j]
                q9 = ring[r9, j]
                q10 = ring[r10, j]
                ta[j] = (
                    w5 * q5 + w4 * (q4 + q6) + w3 * (q3 + q7) + w2 * (q2 + q8) + w1 * (q1 + q9)
                    + w0 * (ring[r0, j] + q10)
                )
                tb[j] = (
                    w5 * q6 + w4 * (q5 + q7) + w3 * (q4 + q8) + w2 * (q3 + q9) + w1 * (q2 + q10)
                    + w0 * (q1 + ring[r11, j])
                )
        else:
            for j in range(W):
                ta[j] = (
                    w5 * ring[r5, j] + w4 * (ring[r4, j] + ring[r6, j]) + w3 * (ring[r3, j] + ring[r7, j])
                    + w2 * (ring[r2, j] + ring[r8, j]) + w1 * (ring[r1, j] + ring[r9, j])
                    + w0 * (ring[r0, j] + ring[r10, j])
                )
        for o in range(2 if two else 1):
            t = ta if o == 0 else tb
            r = i + o
            racc = 0.0
            for j in range(Wi):
                cxy = (
                    w5 * t[j + 5]
                    + w4 * (t[j + 4] + t[j + 6])
                    + w3 * (t[j + 3] + t[j + 7])
                    + w2 * (t[j + 2] + t[j + 8])
                    + w1 * (t[j + 1] + t[j + 9])
                    + w0 * (t[j] + t[j + 10])
                )
                mx = np.float64(mua[r, j]) * qa
                my = np.float64(mub[r, j]) * qb
                ux = mx + ma
                uy = my + mb
                cov = cxy - mx * my
                num = (2.0 * ux * uy + c1) * (2.0 * cov + c2)
                den = (ux * ux + uy * uy + c1) * (np.float64(vara[r, j]) * qa2 + np.float64(varb[r, j]) * qb2 + c2)
                racc += num / den
            acc += racc
        i += 2
    return acc / (Hi * Wi), sse


@njit(parallel=True, cache=True, nogil=True)
def _stats_batch(X, idx, w, mu, var, m, q, nch):
    """Stats of images ``X[idx[k]]`` into ``mu[k]``, ``var[k]``, ``m[k]``, ``q[k]`` (``nch`` parallel chunks)."""
    K = idx.shape[0]
    W = X.shape[2]
    for ch in prange(nch):
        ring1 = np.empty((11, W), np.float64)
        ring2 = np.empty((11, W), np.float64)
        t1 = np.empty(W, np.float64)
        t2 = np.empty(W, np.float64)
        for k in range(ch * K // nch, (ch + 1) * K // nch):
            img = X[idx[k]]
            mk, qk = _centre(img)
            m[k] = mk
            q[k] = qk
            _stats_into(img, mk, qk, w, mu[k], var[k], ring1, ring2, t1, t2)


@njit(parallel=True, cache=True, nogil=True)
def _pairs_grouped(A, B, pa, pb, sb, gstart, cbound, mub, varb, mb, qb, w, c1, c2, out, sse):
    """SSIM and SSE of pairs sorted by A image (:func:`_pair`).

    Pairs ``gstart[g]:gstart[g+1]`` share the A image ``A[pa[gstart[g]]]``, whose stats are computed once into
    chunk-local buffers (cache resident); B stats come precomputed (slot ``sb[p]``).  Chunks of groups
    ``cbound[c]:cbound[c+1]`` run in parallel.
    out : float64[P] <- mean SSIM; sse : float64[P] <- ``sum((A - B)**2)`` (sorted order).
    """
    H = A.shape[1]
    W = A.shape[2]
    nch = cbound.shape[0] - 1
    for ch in prange(nch):
        mua = np.empty((H - 10, W - 10), np.int32)
        vara = np.empty((H - 10, W - 10), np.float32)
        ring1 = np.empty((11, W), np.float64)
        ring2 = np.empty((11, W), np.float64)
        t1 = np.empty(W, np.float64)
        t2 = np.empty(W, np.float64)
        ring = np.empty((12, W), np.float64)
        ta = np.empty(W, np.float64)
        tb = np.empty(W, np.float64)
        for g in range(cbound[ch], cbound[ch + 1]):
            s = gstart[g]
            e = gstart[g + 1]
            x = A[pa[s]]
            ma, qa = _centre(x)
            _stats_into(x, ma, qa, w, mua, vara, ring1, ring2, t1, t2)
            for p in range(s, e):
                k = sb[p]
                v, d = _pair(x, B[pb[p]], ma, mb[k], qa, qb[k], mua, vara, mub[k], varb[k], w, c1, c2, ring, ta, tb)
                out[p] = v
                sse[p] = d


def _stats_bytes(h: int, w: int) -> int:
    """Bytes of stored stats per image (int32 fixed-point mean, float32 variance)."""
    return 8 * (h - 10) * (w - 10) + 16


def _ssim_pairs_f64(A, B, pairs, data_range, max_cache_bytes, with_sse=False):
    """Validated core: returns float64[P] (SSIM), or ``(SSIM, SSE)`` float64[P] each with ``with_sse``.

    One kernel (:func:`_pairs_grouped`) gives both in one pass; the SSE costs a subtraction and a multiply-add
    per pixel, so ``ssim_pairs`` uses the same kernel and drops it."""
    n_pairs = pairs.shape[0]
    out = np.empty(n_pairs, np.float64)
    sse_out = np.empty(n_pairs, np.float64)
    if n_pairs == 0:
        return (out, sse_out) if with_sse else out
    w = gaussian_window()
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    h, wd = A.shape[1], A.shape[2]
    ia, ib = pairs[:, 0], pairs[:, 1]
    # SSIM is symmetric: group by the side with more distinct images, store the other's stats
    if np.unique(ia).size < np.unique(ib).size:
        A, B, ia, ib = B, A, ib, ia
    ub = np.unique(ib)
    per = _stats_bytes(h, wd)
    per_block = max(1, int(max_cache_bytes) // per)
    nthreads = numba.get_num_threads()
    for lo in range(0, ub.size, per_block):
        blk = ub[lo : lo + per_block]
        if blk.size == ub.size:
            sel = np.arange(n_pairs)
        else:
            sel = np.flatnonzero((ib >= blk[0]) & (ib <= blk[-1]))
        order = sel[np.lexsort((ib[sel], ia[sel]))]
        pa = np.ascontiguousarray(ia[order])
        pb = np.ascontiguousarray(ib[order])
        sb = np.searchsorted(blk, pb).astype(np.int64)
        k = blk.size
        mub = np.empty((k, h - 10, wd - 10), np.int32)
        varb = np.empty((k, h - 10, wd - 10), np.float32)
        mb = np.empty(k, np.float64)
        qb = np.empty(k, np.float64)
        _stats_batch(B, blk, w, mub, varb, mb, qb, int(min(k, 4 * nthreads)))
        gstart = np.concatenate(([0], np.flatnonzero(np.diff(pa)) + 1, [pa.size])).astype(np.int64)
        n_groups = gstart.size - 1
        # chunks of whole groups with about equal pair counts
        nch = int(min(n_groups, 8 * nthreads))
        targets = (np.arange(1, nch) * pa.size) // nch
        cbound = np.concatenate(([0], np.searchsorted(gstart[1:-1], targets, side="right"), [n_groups]))
        cbound = np.unique(cbound).astype(np.int64)
        res = np.empty(pa.size, np.float64)
        sse = np.empty(pa.size, np.float64)
        _pairs_grouped(A, B, pa, pb, sb, gstart, cbound, mub, varb, mb, qb, w, c1, c2, res, sse)
        sse_out[order] = sse
        out[order] = res
    return (out, sse_out) if with_sse else out


def _prep_stacks(A, B):
    A = as_images(A, "A", 3, (SSIM_WIN, SSIM_WIN))
    B = as_images(B, "B", 3, (SSIM_WIN, SSIM_WIN))
    same_hw(A, B, "A", "B")
    return common_dtype(A, B)


def ssim_pairs(A, B, pairs, data_range=255.0, *, max_cache_bytes=2**30) -> np.ndarray:
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
        Memory budget for the precomputed stats of the B side (8 bytes per
        valid pixel per image, about 0.5 MB for 256x256); larger shortlists
        are processed in blocks of B images.

    Returns
    -------
    ndarray, float32, shape [P]
        ``structural_similarity(A[i], B[j], data_range=data_range,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``
        within 1e-4 (measured <= 5e-9 before the float32 conversion, see
        the module docstring).

    Raises
    ------
    ValueError
        Wrong ranks/dtypes, mismatched image shapes, images smaller than
        11x11, NaN/inf values, bad pair indices or non-positive data_range.
    """
    A, B = _prep_stacks(A, B)
    pairs = as_pairs(pairs, A.shape[0], B.shape[0])
    r = check_data_range(data_range)
    return _ssim_pairs_f64(A, B, pairs, r, max_cache_bytes, with_sse=True)[0].astype(np.float32)


def ssim_mse_pairs(A, B, pairs, data_range=255.0, *, max_cache_bytes=2**30) -> tuple[np.ndarray, np.ndarray]:
    """SSIM and MSE of each ``(A[i], B[j])`` pair in one pass over the pixels.

    Parameters
    ----------
    A, B, pairs, data_range, max_cache_bytes
        As :func:`ssim_pairs` (float64 stacks are cast to float32, and a uint8 stack paired with a float32 one
        is converted to float32, as there).

    Returns
    -------
    ssim : ndarray, float32, shape [P]
        Equal to ``ssim_pairs(A, B, pairs, data_range)``.
    mse : ndarray, float32, shape [P]
        Equal to ``mse_pairs(A, B, pairs)`` for uint8 stacks (exact: the squared differences are integers summed
        in float64 below 2**53) and for float32 stacks up to the order of the float64 summation.
    """
    A, B = _prep_stacks(A, B)
    pairs = as_pairs(pairs, A.shape[0], B.shape[0])
    r = check_data_range(data_range)
    s, sse = _ssim_pairs_f64(A, B, pairs, r, max_cache_bytes, with_sse=True)
    return s.astype(np.float32), (sse / (A.shape[1] * A.shape[2])).astype(np.float32)


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
    return float(_ssim_pairs_f64(A, B, np.zeros((1, 2), np.int64), r, 2**62, with_sse=True)[0][0])


# ----------------------------------------------------------------------------- MSE / PSNR
@njit(parallel=True, cache=True, nogil=True)
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


@njit(parallel=True, cache=True, nogil=True)
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
