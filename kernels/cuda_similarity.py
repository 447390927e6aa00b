"""CUDA pair kernels (Numba CUDA): SSIM with MSE fused in the same pass.

Same definition as the CPU kernels of :mod:`kernels.similarity` (skimage's Gaussian SSIM: 11-tap window,
sigma 1.5, population statistics, K1 = 0.01, K2 = 0.03, the map cropped by 5 pixels; MSE over all pixels), so
results agree with :func:`kernels.similarity.ssim_pairs` / ``mse_pairs`` within 1e-5: the ``tiled`` kernel to
~1e-12 (the CPU's float64 arithmetic throughout), the ``rows`` kernel to <= ~6e-7 (float64 cross term and
covariance as on the CPU, two bounded ratios in float32; see :func:`_row_kernels`).

Layout
------
* **Resident side** (``B``, the generated set): uploaded once by :class:`CudaPairScorer`; its per-image
  statistics are computed once on the device with the CPU kernel's definition: integer centring constant
  ``m = round(mean)``, ``mu' = G*(x-m)`` stored as int32 fixed point (step ``q = 2**-k``) and
  ``var = G*(x-m)^2 - (q mu')^2`` stored as float32 in units of ``q^2`` -- 8 bytes per valid pixel.
* **Streamed side** (``A``, the real images): distinct A images are sent in batches through two pinned host
  buffers and two CUDA streams (double buffering: the copy of batch i+1 overlaps the kernels of batch i);
  their centres (uint8: on the device) and statistics are computed on the device per batch.
* **Pair kernel, ``variant="rows"``** (the default): one block per (pair, column strip); each thread walks
  one column down both images with the last 11 centred products in registers, one barrier per output row,
  one block reduction per pair (see :func:`_row_kernels`).
* **Pair kernel, ``variant="tiled"``** (the first design, kept for comparison): pairs are grouped by their A
  image.  One block per (A image, output tile of T x T pixels): A's centred tile plus its 10-pixel halo is
  loaded once into shared memory and stays there while the block walks over all partners of that A image.
  Per partner only the cross term ``G*((x-m_x)(y-m_y))`` is filtered (separable, float64, vertical then
  horizontal pass in shared memory), combined with the stored statistics into the SSIM map, and
  block-reduced; the squared differences of the pixels the tile owns are summed in the same pass (MSE).
  Tile sums are added atomically per pair (float64).

The simulator (``NUMBA_ENABLE_CUDASIM=1``, set before :mod:`numba.cuda` is first imported) runs the same
kernels in Python: that is how the tests prove them on machines without a GPU.

Public API
----------
cuda_available() -> bool
CudaPairScorer(B, data_range=255.0, tile=16, variant="rows").score(A, pairs) -> (ssim float32[P], mse float32[P])
CudaPairScorer(...).kernel_rate(A, pairs) -> pairs/s of the pair kernel alone (benchmarks)
ssim_mse_pairs_cuda(A, B, pairs, data_range=255.0) -> (ssim float32[P], mse float32[P])
ssim_pairs_cuda / mse_pairs_cuda (A, B, pairs, ...) -> float32[P]
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ._validate import as_images, as_pairs, check_data_range, common_dtype, same_hw
from .constants import (FIXED_POINT_MAX, MAX_STEP_EXPONENT, SSIM_HALO, SSIM_RADIUS, SSIM_WIN, gaussian_window,
                        ssim_c1_c2)
from .similarity import _centre

# The separable filters below are unrolled for the 11-tap window (weights w0..w5, offsets 0..10): they read
# the window size from kernels.constants, and refuse to run if it ever changes without them.
if SSIM_RADIUS != 5:  # pragma: no cover - guards a future edit of kernels.constants
    raise ImportError(f"kernels.cuda_similarity is unrolled for an 11-tap SSIM window, constants say {SSIM_WIN}")

__all__ = ["cuda_available", "simulator", "CudaPairScorer", "ssim_mse_pairs_cuda", "ssim_pairs_cuda",
           "mse_pairs_cuda", "DEFAULT_TILE", "VARIANTS", "DEFAULT_VARIANT"]

#: output tile edge of the pair kernel on real hardware (T x T threads per block; a power of two)
DEFAULT_TILE = 16
#: pair-kernel variants: ``"rows"`` (one block per pair walking the rows, the default) and ``"tiled"`` (the first
#: design: one block per (A image, output tile) walking its partners; kept so one device run times both)
VARIANTS = ("rows", "tiled")
DEFAULT_VARIANT = "rows"
#: largest threads per block of the ``rows`` kernel when chosen automatically
_MAX_ROW_BLOCK = 256
#: largest grid z dimension (groups per launch)
_MAX_GRID_Z = 65535
#: numba.cuda, imported on first use (it must be imported after NUMBA_ENABLE_CUDASIM is set)
cuda = None


def simulator() -> bool:
    """True when Numba's CUDA simulator is enabled (``NUMBA_ENABLE_CUDASIM=1``)."""
    from numba.core import config

    return bool(getattr(config, "ENABLE_CUDASIM", False))


def cuda_available() -> bool:
    """True when Numba CUDA can run kernels here (a real GPU with a driver, or the simulator)."""
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # missing driver / libraries
        return False


def centres(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image centring constant and fixed-point step: the CPU kernel's own ``kernels.similarity._centre``.

    Parameters
    ----------
    X : ndarray uint8/float32 [N, H, W]

    Returns
    -------
    m, q : float64 [N]
        ``m = round(mean)`` (half to even) and ``q = 2**-k``, the largest power of two step with
        ``max|x - m| / q <= constants.FIXED_POINT_MAX`` (``q = 1`` for a constant image).
    """
    n = X.shape[0]
    m = np.empty(n, np.float64)
    q = np.empty(n, np.float64)
    for i in range(n):
        m[i], q[i] = _centre(X[i])
    return m, q


@functools.lru_cache(maxsize=None)
def _kernels(T: int):
    """Compile (lazily) the stats and pair kernels for an output tile of ``T x T`` threads."""
    global cuda  # a module global: the simulator swaps it while a kernel runs
    from numba import cuda

    float64 = np.float64
    int32 = np.int32
    S = T + SSIM_HALO  # tile plus halo
    NT = T * T

    @cuda.jit(device=True)
    def _vpass(src, ty, cc, w0, w1, w2, w3, w4, w5):
        return (w5 * src[ty + 5, cc] + w4 * (src[ty + 4, cc] + src[ty + 6, cc])
                + w3 * (src[ty + 3, cc] + src[ty + 7, cc]) + w2 * (src[ty + 2, cc] + src[ty + 8, cc])
                + w1 * (src[ty + 1, cc] + src[ty + 9, cc]) + w0 * (src[ty, cc] + src[ty + 10, cc]))

    @cuda.jit(device=True)
    def _hpass(src, ty, tx, w0, w1, w2, w3, w4, w5):
        return (w5 * src[ty, tx + 5] + w4 * (src[ty, tx + 4] + src[ty, tx + 6])
                + w3 * (src[ty, tx + 3] + src[ty, tx + 7]) + w2 * (src[ty, tx + 2] + src[ty, tx + 8])
                + w1 * (src[ty, tx + 1] + src[ty, tx + 9]) + w0 * (src[ty, tx] + src[ty, tx + 10]))

    @cuda.jit(device=True)
    def _taps(w):
        """The six distinct weights of the symmetric 11-tap window (w0 outermost, w5 the centre)."""
        return w[0], w[1], w[2], w[3], w[4], w[5]

    @cuda.jit(device=True)
    def _halo_pixel(X, n, k, r0, c0, mn):
        """The k-th pixel (row-major) of the S x S tile-plus-halo whose corner is (r0, c0) in image ``X[n]``.

        Returns ``(rr, cc, v, inside)``: its place in the tile, its value centred by ``mn`` (0.0 outside the
        image) and whether it lies inside the image.
        """
        rr = k // S
        cc = k - rr * S
        r = r0 + rr
        c = c0 + cc
        if r < X.shape[1] and c < X.shape[2]:
            return rr, cc, float(X[n, r, c]) - mn, True
        return rr, cc, 0.0, False

    @cuda.jit
    def stats_kernel(X, first, m, q, w, mu, var):
        """Stats of images ``X[first + z]`` (z = blockIdx.z) into ``mu[first + z]``, ``var[first + z]``.

        Grid (ceil(Wi/T), ceil(Hi/T), n); block (T, T).  Same order of operations as the CPU's
        ``_stats_into``: vertical then horizontal symmetric 11-tap passes in float64.
        """
        n = first + cuda.blockIdx.z
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * T + tx
        H = X.shape[1]
        W = X.shape[2]
        r0 = cuda.blockIdx.y * T
        c0 = cuda.blockIdx.x * T
        s1 = cuda.shared.array((S, S), float64)
        s2 = cuda.shared.array((S, S), float64)
        v1 = cuda.shared.array((T, S), float64)
        v2 = cuda.shared.array((T, S), float64)
        mn = m[n]
        for k in range(tid, S * S, NT):
            rr, cc, v, _ = _halo_pixel(X, n, k, r0, c0, mn)
            s1[rr, cc] = v
            s2[rr, cc] = v * v
        cuda.syncthreads()
        w0, w1, w2, w3, w4, w5 = _taps(w)
        for cc in range(tx, S, T):
            v1[ty, cc] = _vpass(s1, ty, cc, w0, w1, w2, w3, w4, w5)
            v2[ty, cc] = _vpass(s2, ty, cc, w0, w1, w2, w3, w4, w5)
        cuda.syncthreads()
        r = r0 + ty
        c = c0 + tx
        if r < H - SSIM_HALO and c < W - SSIM_HALO:
            u = _hpass(v1, ty, tx, w0, w1, w2, w3, w4, w5)
            sq = _hpass(v2, ty, tx, w0, w1, w2, w3, w4, w5)
            qn = q[n]
            iq = 1.0 / qn
            uq = math.floor(u * iq + 0.5)
            mu[n, r, c] = int32(uq)
            uq = uq * qn
            var[n, r, c] = (sq - uq * uq) * (iq * iq)

    @cuda.jit
    def pair_kernel(A, B, ma, qa, mua, vara, mb, qb, mub, varb, gfirst, gstart, pa, pb, w, c1, c2,
                    ssum, sse):
        """Grouped SSIM + squared-error sums.

        Group ``g = gfirst + blockIdx.z`` holds pairs ``gstart[g]:gstart[g+1]`` (sorted), all with the A
        image ``pa[gstart[g]]`` (a slot of the streamed batch); ``pb[p]`` is the resident B image.  Adds the
        tile's SSIM-map sum to ``ssum[p]`` and its owned pixels' squared differences to ``sse[p]``.
        """
        g = gfirst + cuda.blockIdx.z
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * T + tx
        H = A.shape[1]
        W = A.shape[2]
        Hi = H - SSIM_HALO
        Wi = W - SSIM_HALO
        by = cuda.blockIdx.y
        bx = cuda.blockIdx.x
        last_y = by == cuda.gridDim.y - 1
        last_x = bx == cuda.gridDim.x - 1
        r0 = by * T
        c0 = bx * T
        sa = cuda.shared.array((S, S), float64)
        sp = cuda.shared.array((S, S), float64)
        sv = cuda.shared.array((T, S), float64)
        red = cuda.shared.array(NT, float64)
        red2 = cuda.shared.array(NT, float64)
        s = gstart[g]
        e = gstart[g + 1]
        ia = pa[s]
        mav = ma[ia]
        for k in range(tid, S * S, NT):
            rr, cc, v, _ = _halo_pixel(A, ia, k, r0, c0, mav)
            sa[rr, cc] = v
        w0, w1, w2, w3, w4, w5 = _taps(w)
        r = r0 + ty
        c = c0 + tx
        inside = r < Hi and c < Wi
        mx = 0.0
        vx = 0.0
        qav = qa[ia]
        if inside:
            mx = float(mua[ia, r, c]) * qav
            vx = float(vara[ia, r, c]) * (qav * qav)
        ux = mx + mav
        cuda.syncthreads()
        for p in range(s, e):
            j = pb[p]
            mbv = mb[j]
            se = 0.0
            for k in range(tid, S * S, NT):
                rr, cc, yv, inside_img = _halo_pixel(B, j, k, r0, c0, mbv)
                v = 0.0
                if inside_img:
                    xv = sa[rr, cc]
                    v = xv * yv
                    if (rr < T or last_y) and (cc < T or last_x):
                        d = (xv + mav) - (yv + mbv)
                        se += d * d
                sp[rr, cc] = v
            cuda.syncthreads()
            for cc in range(tx, S, T):
                sv[ty, cc] = _vpass(sp, ty, cc, w0, w1, w2, w3, w4, w5)
            cuda.syncthreads()
            val = 0.0
            if inside:
                cxy = _hpass(sv, ty, tx, w0, w1, w2, w3, w4, w5)
                qbv = qb[j]
                my = float(mub[j, r, c]) * qbv
                uy = my + mbv
                cov = cxy - mx * my
                num = (2.0 * ux * uy + c1) * (2.0 * cov + c2)
                den = (ux * ux + uy * uy + c1) * (vx + float(varb[j, r, c]) * (qbv * qbv) + c2)
                val = num / den
            red[tid] = val
            red2[tid] = se
            cuda.syncthreads()
            half = NT // 2
            while half > 0:
                if tid < half:
                    red[tid] += red[tid + half]
                    red2[tid] += red2[tid + half]
                cuda.syncthreads()
                half //= 2
            if tid == 0:
                cuda.atomic.add(ssum, p, red[0])
                cuda.atomic.add(sse, p, red2[0])
            cuda.syncthreads()

    return stats_kernel, pair_kernel


@functools.lru_cache(maxsize=None)
def _row_kernels(NT: int):
    """Compile (lazily) the ``rows`` design for blocks of ``NT`` threads: the uint8 centring kernel and the
    pair kernel.

    Pair kernel: one block per (pair, column strip).  Thread ``t`` owns input column ``c = strip * (NT - 10) + t``
    and walks down the rows of both images: it keeps the last 11 centred products ``(x - m_x)(y - m_y)`` of its
    column in registers (a ring, float64), forms the vertical 11-tap sum of the cross term, writes it to a
    double-buffered shared row (one barrier per output row), and the first ``NT - 10`` threads take the horizontal
    11-tap sum from that row and combine it with the stored per-image statistics into the SSIM of their output
    pixel.  The squared differences of the pixels the thread owns are summed in the same walk (MSE).  Loads are
    row-contiguous across the warp (coalesced); each block has its own pair, so there are as many independent
    blocks as pairs; one block reduction per (pair, strip) at the end, no atomics.

    Precision: the cross term is filtered in float64 exactly as on the CPU (the centred products are exact); the
    covariance ``cov = G*(x'y') - mu'_x mu'_y`` is formed in float64 (the only cancellation); only the two
    bounded ratios ``(2 ux uy + C1) / (ux^2 + uy^2 + C1)`` and ``(2 cov + C2) / (vx + vy + C2)`` (each in
    [-1, 1]) are evaluated in float32, from float64 operands rounded once: each carries an absolute error of at
    most ~6 float32 ulps (2**-24 relative), so an SSIM pixel, and hence the mean, differs from the CPU kernel's
    by <= ~1e-6 (<= 10 * 2**-24 = 6e-7 by the count of roundings), below the 1e-5 contract.
    """
    global cuda
    from numba import cuda

    float64 = np.float64
    float32 = np.float32
    int32 = np.int32
    uint64 = np.uint64
    CW = NT - SSIM_HALO  # output columns per strip
    # unsigned constants for the pair kernel's offsets (uint64 mixed with a plain int literal would become float64)
    U0, U1, U2, U3, U4, U5, U6, U7, U8, U9, U10 = (np.uint64(k) for k in range(SSIM_WIN))
    NTU = np.uint64(NT)
    NT2 = 2 * NT
    P2 = 1 << (NT - 1).bit_length()  # power of two >= NT (the reduction tree)
    g = gaussian_window()
    W0, W1, W2, W3, W4, W5 = (float(g[k]) for k in range(SSIM_RADIUS + 1))  # compile-time constants
    FPMAX = float(FIXED_POINT_MAX)
    MAXEXP = float(MAX_STEP_EXPONENT)
    INF = math.inf

    @cuda.jit(device=True)
    def _tree(red, red2, red3, t, op):
        """In-place block reduction of ``red`` (sum), ``red2``/``red3`` (sum, or min and max when ``op`` is
        1) over ``NT`` threads; the result lands in index 0."""
        half = P2 // 2
        while half > 0:
            if t < half and t + half < NT:
                red[t] += red[t + half]
                if op == 0:
                    red2[t] += red2[t + half]
                else:  # (no min/max builtins: Numba's CUDA target does not type them for two scalars)
                    if red2[t + half] < red2[t]:
                        red2[t] = red2[t + half]
                    if red3[t + half] > red3[t]:
                        red3[t] = red3[t + half]
            cuda.syncthreads()
            half //= 2

    @cuda.jit
    def centre_kernel(X, m, q):
        """``m[n], q[n]`` of image ``X[n]`` (n = blockIdx.x), the CPU's ``_centre`` for uint8 images.

        The pixel sum is exact in float64 (integers), so ``m = round(sum / (H W))`` (half to even) is the CPU's
        value bit for bit, and ``q = 2**-k`` with ``k = floor(log2(FIXED_POINT_MAX / big))``: for uint8 ``big``
        is an integer in 1..255 and the logarithm is >= 1e-9 away from an integer, so the floor agrees too.
        """
        n = cuda.blockIdx.x
        t = cuda.threadIdx.x
        H = X.shape[1]
        W = X.shape[2]
        rs = cuda.shared.array(NT, float64)
        rlo = cuda.shared.array(NT, float64)
        rhi = cuda.shared.array(NT, float64)
        s = 0.0
        lo = INF
        hi = -INF
        for r in range(H):
            for c in range(t, W, NT):
                v = float64(X[n, r, c])
                s += v
                if v < lo:
                    lo = v
                if v > hi:
                    hi = v
        rs[t] = s
        rlo[t] = lo
        rhi[t] = hi
        cuda.syncthreads()
        _tree(rs, rlo, rhi, t, 1)
        if t == 0:
            tm = rs[0] / (H * W)
            mm = float64(math.floor(tm))  # math.floor gives an integer type in nopython code: keep floats
            d = tm - mm
            if d > 0.5 or (d == 0.5 and math.fmod(mm, 2.0) != 0.0):  # numpy's round: half to even
                mm += 1.0
            big = rhi[0] - mm
            if mm - rlo[0] > big:
                big = mm - rlo[0]
            qq = 1.0
            if big > 0.0:
                kf = float64(math.floor(math.log2(FPMAX / big)))
                kk = int(kf if kf < MAXEXP else MAXEXP)
                if kk >= 0:
                    for _ in range(kk):
                        qq *= 0.5
                else:
                    for _ in range(-kk):
                        qq *= 2.0
            m[n] = mm
            q[n] = qq

    @cuda.jit(device=True)
    def _cx(xa, o, mn):
        """Centred flat pixel ``o`` of one image and its square."""
        v = float64(xa[o]) - mn
        return v, v * v

    @cuda.jit
    def stats_kernel(X, W, m, q, mu, var):
        """Statistics of image ``X[n]`` (n = blockIdx.x; flattened [n, H*W], ``W`` the width) over column strip
        ``blockIdx.y`` into ``mu[n]``, ``var[n]`` (flattened [n, (H-10)*(W-10)]): the CPU's ``_stats_into``
        (same centring, same symmetric 11-tap passes in float64, vertical then horizontal, same fixed-point
        rounding), walked down the rows like the pair kernel (two register rings, one barrier per output row,
        unsigned offsets)."""
        n = cuda.blockIdx.x
        s = cuda.blockIdx.y
        t = cuda.threadIdx.x
        H = X.shape[1] // W
        Hi = H - SSIM_HALO
        Wi = W - SSIM_HALO
        c = s * CW + t
        cl = c if c < W else W - 1
        outc = t < CW and c < Wi
        s1 = cuda.shared.array(NT2, float64)
        s2 = cuda.shared.array(NT2, float64)
        xa = X[n]
        mun = mu[n]
        varn = var[n]
        mn = m[n]
        qn = q[n]
        iq = 1.0 / qn
        iq2 = iq * iq
        Wu = uint64(W)
        Wiu = uint64(Wi)
        o = uint64(cl)
        so = uint64(c if outc else 0)
        tu = uint64(t)
        a0, b0 = _cx(xa, o, mn)
        o += Wu
        a1, b1 = _cx(xa, o, mn)
        o += Wu
        a2, b2 = _cx(xa, o, mn)
        o += Wu
        a3, b3 = _cx(xa, o, mn)
        o += Wu
        a4, b4 = _cx(xa, o, mn)
        o += Wu
        a5, b5 = _cx(xa, o, mn)
        o += Wu
        a6, b6 = _cx(xa, o, mn)
        o += Wu
        a7, b7 = _cx(xa, o, mn)
        o += Wu
        a8, b8 = _cx(xa, o, mn)
        o += Wu
        a9, b9 = _cx(xa, o, mn)
        o += Wu
        for i in range(Hi):
            a10, b10 = _cx(xa, o, mn)
            o += Wu
            sb = tu + (NTU if i & 1 else U0)  # the row buffers alternate: one barrier per row
            s1[sb] = (W5 * a5 + W4 * (a4 + a6) + W3 * (a3 + a7) + W2 * (a2 + a8) + W1 * (a1 + a9)
                      + W0 * (a0 + a10))
            s2[sb] = (W5 * b5 + W4 * (b4 + b6) + W3 * (b3 + b7) + W2 * (b2 + b8) + W1 * (b1 + b9)
                      + W0 * (b0 + b10))
            cuda.syncthreads()
            if outc:
                u = (W5 * s1[sb + U5] + W4 * (s1[sb + U4] + s1[sb + U6]) + W3 * (s1[sb + U3] + s1[sb + U7])
                     + W2 * (s1[sb + U2] + s1[sb + U8]) + W1 * (s1[sb + U1] + s1[sb + U9])
                     + W0 * (s1[sb] + s1[sb + U10]))
                sq = (W5 * s2[sb + U5] + W4 * (s2[sb + U4] + s2[sb + U6]) + W3 * (s2[sb + U3] + s2[sb + U7])
                      + W2 * (s2[sb + U2] + s2[sb + U8]) + W1 * (s2[sb + U1] + s2[sb + U9])
                      + W0 * (s2[sb] + s2[sb + U10]))
                uq = math.floor(u * iq + 0.5)
                mun[so] = int32(uq)
                uq = uq * qn
                varn[so] = (sq - uq * uq) * iq2
            so += Wiu
            a0 = a1
            a1 = a2
            a2 = a3
            a3 = a4
            a4 = a5
            a5 = a6
            a6 = a7
            a7 = a8
            a8 = a9
            a9 = a10
            b0 = b1
            b1 = b2
            b2 = b3
            b3 = b4
            b4 = b5
            b5 = b6
            b6 = b7
            b7 = b8
            b8 = b9
            b9 = b10

    @cuda.jit(device=True)
    def _prod(xa, yb, o, mav, mbv):
        """Centred product and squared difference of flat pixel ``o`` of the pair: (x - m_x)(y - m_y), (x - y)^2."""
        xr = float64(xa[o])
        yr = float64(yb[o])
        d = xr - yr
        return (xr - mav) * (yr - mbv), d * d

    @cuda.jit
    def pair_kernel(A, B, W, ma, qa, mua, vara, mb, qb, mub, varb, pa, pb, c2, c1f, ssum, sse):
        """SSIM-map sum and squared-error sum of pair ``p = blockIdx.x`` over column strip ``blockIdx.y``.

        Images come flattened: ``A`` [n, H*W], ``mua``/``vara`` [n, (H-10)*(W-10)] (likewise B), ``W`` the
        width.  ``pa[p]``: slot of the A image in the streamed batch; ``pb[p]``: the resident B image.  Writes
        ``ssum[p, strip]`` and ``sse[p, strip]`` (the host adds the strips).  Offsets are unsigned (uint64):
        Numba then emits no negative-index fix-up, and each row costs one add per pointer.
        """
        p = cuda.blockIdx.x
        s = cuda.blockIdx.y
        ns = cuda.gridDim.y
        t = cuda.threadIdx.x
        H = A.shape[1] // W
        Hi = H - SSIM_HALO
        Wi = W - SSIM_HALO
        c = s * CW + t
        cl = c if c < W else W - 1  # threads past the image edge load a valid pixel; nobody reads what they write
        ownf = 0.0
        if c < W and (t < CW or s == ns - 1):  # the input columns whose squared differences this thread sums
            ownf = 1.0
        outc = t < CW and c < Wi
        sv = cuda.shared.array(NT2, float64)  # two rows (a shape must be a compile-time constant)
        red = cuda.shared.array(NT, float64)
        red2 = cuda.shared.array(NT, float64)
        ia = pa[p]
        j = pb[p]
        xa = A[ia]
        yb = B[j]
        mxa = mua[ia]
        vxa = vara[ia]
        myb = mub[j]
        vyb = varb[j]
        mav = ma[ia]
        mbv = mb[j]
        qav = qa[ia]
        qbv = qb[j]
        qa2 = qav * qav
        qb2 = qbv * qbv
        Wu = uint64(W)
        Wiu = uint64(Wi)
        o = uint64(cl)  # flat offset of this thread's pixel in the row being added
        so = uint64(c if outc else 0)  # flat offset of its output pixel in the statistics
        tu = uint64(t)
        se = 0.0
        acc = 0.0
        mx = 0.0
        my = 0.0
        vv = 0.0
        p0, e = _prod(xa, yb, o, mav, mbv)
        se += e
        o += Wu
        p1, e = _prod(xa, yb, o, mav, mbv)
        se += e
        o += Wu
        p2, e = _prod(xa, yb, o, mav, mbv)
        se += e
        o += Wu
        p3, e = _prod(xa, yb, o, mav, mbv)
        se += e
        o += Wu
        p4, e = _prod(xa, yb, o, mav, mbv)
        se += e
        o += Wu
        p5, e = _prod(xa, yb, o, mav, mbv)
        se += e
        o += Wu
        p6, e = _prod(xa, yb, o, mav, mbv)
        se += e
        o += Wu
        p7, e = _prod(xa, yb, o, mav, mbv)
        se += e
        o += Wu
        p8, e = _prod(xa, yb, o, mav, mbv)
        se += e
        o += Wu
        p9, e = _prod(xa, yb, o, mav, mbv)
        se += e
        o += Wu
        xn = xa[o]  # row 10, raw: each iteration prefetches the next row's pixels (used one iteration later)
        yn = yb[o]
        for i in range(Hi):
            xr = float64(xn)
            yr = float64(yn)
            if i + 1 < Hi:
                o += Wu
            xn = xa[o]
            yn = yb[o]
            d = xr - yr
            se += d * d
            p10 = (xr - mav) * (yr - mbv)
            if outc:  # this pixel's statistics: issued before the barrier, used after it
                mx = float64(mxa[so]) * qav
                my = float64(myb[so]) * qbv
                vv = float64(vxa[so]) * qa2 + float64(vyb[so]) * qb2
            so += Wiu
            sb = tu + (NTU if i & 1 else U0)  # the row buffer alternates: one barrier per row is enough
            sv[sb] = (W5 * p5 + W4 * (p4 + p6) + W3 * (p3 + p7) + W2 * (p2 + p8) + W1 * (p1 + p9)
                      + W0 * (p0 + p10))
            cuda.syncthreads()
            if outc:
                cxy = (W5 * sv[sb + U5] + W4 * (sv[sb + U4] + sv[sb + U6]) + W3 * (sv[sb + U3] + sv[sb + U7])
                       + W2 * (sv[sb + U2] + sv[sb + U8]) + W1 * (sv[sb + U1] + sv[sb + U9])
                       + W0 * (sv[sb] + sv[sb + U10]))
                cov = cxy - mx * my
                ux = float32(mx + mav)
                uy = float32(my + mbv)
                uu = ux * uy
                n1 = uu + uu + c1f
                d1 = ux * ux + uy * uy + c1f
                n2 = float32(cov + cov + c2)
                d2 = float32(vv + c2)
                acc += float64((n1 / d1) * (n2 / d2))
            p0 = p1
            p1 = p2
            p2 = p3
            p3 = p4
            p4 = p5
            p5 = p6
            p6 = p7
            p7 = p8
            p8 = p9
            p9 = p10
        red[t] = acc
        red2[t] = se * ownf
        cuda.syncthreads()
        _tree(red, red2, red2, t, 0)
        if t == 0:
            ssum[p, s] = red[0]
            sse[p, s] = red2[0]

    return centre_kernel, stats_kernel, pair_kernel


#: host threads that copy a batch of A images into pinned memory (numpy releases the GIL while it copies)
_COPY_THREADS = 4
#: batches smaller than this (bytes) are copied by the calling thread
_COPY_PARALLEL_BYTES = 8 << 20


@functools.lru_cache(maxsize=1)
def _copy_pool():
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(_COPY_THREADS, thread_name_prefix="imprint-cuda-copy")


def _gather(A: np.ndarray, ids: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = A[ids]`` (ids sorted, distinct): one slice when they are consecutive (the usual case), in
    ``_COPY_THREADS`` chunks when the batch is large (a single thread copies ~10 GB/s, the pipeline needs ~3 GB/s
    per 1M pairs/s at 128^2 with 10 partners per image, and the GPU waits for it).

    Parameters
    ----------
    A : ndarray [N, H, W]
    ids : ndarray int [n]
    out : ndarray [n, H, W] (pinned host memory)
    """
    n = ids.size
    run = n > 0 and ids[-1] - ids[0] == n - 1

    def part(lo, hi):
        if run:
            out[lo:hi] = A[ids[0] + lo:ids[0] + hi]
        else:
            np.take(A, ids[lo:hi], axis=0, out=out[lo:hi])

    if out.nbytes < _COPY_PARALLEL_BYTES or n < 2 * _COPY_THREADS:
        part(0, n)
        return
    step = -(-n // _COPY_THREADS)
    for f in [_copy_pool().submit(part, lo, min(n, lo + step)) for lo in range(0, n, step)]:
        f.result()


def _row_block(W: int, block=None) -> int:
    """Threads per block of the ``rows`` kernel: a multiple of 32 covering the width (at most 256), or ``block``."""
    if block is None:
        return int(min(_MAX_ROW_BLOCK, 32 * -(-int(W) // 32)))
    b = int(block)
    if b < 16 or b > 1024:
        raise ValueError(f"block must be 16..1024 threads, got {block!r}")
    return b


def _check_tile(tile) -> int:
    t = int(tile)
    if t < 1 or t & (t - 1) or t > 32:
        raise ValueError(f"tile must be a power of two in 1..32, got {tile!r}")
    return t


class CudaPairScorer:
    """SSIM and MSE of (A, B) pairs on the GPU with the B stack resident on the device.

    Parameters
    ----------
    B : ndarray uint8/float32/float64 [M, H, W]
        The resident side (the generated set); ``H, W >= 11``.  float64 is cast to float32.
    data_range : float
        Dynamic range of the pixel values (255 for 8-bit images).
    tile : int
        Output tile edge of the statistics kernel and of the ``tiled`` pair kernel (threads per block =
        tile**2; power of two).
    batch_images : int
        Distinct A images per streamed batch.
    variant : {"rows", "tiled"}
        Pair kernel: ``"rows"`` (default; one block per pair and column strip walking the rows, see
        :func:`_row_kernels`) or ``"tiled"`` (the first design, one block per (A image, tile) walking its
        partners; kept for comparison).  Both compute the CPU kernel's definition (within 1e-5).
    block : int or None
        Threads per block of the ``rows`` kernel (None: a multiple of 32 covering the width, at most 256;
        each block covers ``block - 10`` output columns).

    Raises
    ------
    ValueError
        Bad images or parameters.
    RuntimeError
        No usable CUDA device (see :func:`cuda_available`).
    """

    def __init__(self, B, data_range: float = 255.0, *, tile: int = DEFAULT_TILE, batch_images: int = 4096,
                 variant: str = DEFAULT_VARIANT, block: int | None = None):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if not cuda_available():
            raise RuntimeError("no CUDA device is available to Numba (driver, numba-cuda or GPU missing)")
        from numba import cuda

        B = as_images(B, "B", 3, (SSIM_WIN, SSIM_WIN))
        if B.dtype == np.float64:
            B = np.ascontiguousarray(B, dtype=np.float32)
        self.tile = _check_tile(tile)
        self.batch_images = max(1, int(batch_images))
        self.data_range = check_data_range(data_range)
        self.dtype = B.dtype
        self.shape = B.shape
        M, H, W = B.shape
        self.variant = variant
        self._stats, self._pairs = _kernels(self.tile)
        self._block = _row_block(W, block)
        self._nstrips = -(-(W - SSIM_HALO) // (self._block - SSIM_HALO))
        if variant == "rows":
            self._centre, self._stats_rows, self._pairs_rows = _row_kernels(self._block)
        self._w = cuda.to_device(gaussian_window())
        mb, qb = centres(B)
        self._B = cuda.to_device(B)
        self._mb = cuda.to_device(mb)
        self._qb = cuda.to_device(qb)
        self._mub = cuda.device_array((M, H - SSIM_HALO, W - SSIM_HALO), np.int32)
        self._varb = cuda.device_array((M, H - SSIM_HALO, W - SSIM_HALO), np.float32)
        self._compute_stats(self._B, self._mb, self._qb, self._mub, self._varb, M, 0)
        cuda.synchronize()

    def _buffers(self, cap: int, dtype):
        """Two sets of pinned host / device buffers and streams for ``cap`` A images (kept and reused:
        pinned allocations are slow)."""
        from numba import cuda

        H, W = self.shape[1:]
        have = getattr(self, "_bufs", None)
        if have is None or have[0] < cap or have[1] != np.dtype(dtype):
            bufs = ([cuda.pinned_array((cap, H, W), dtype) for _ in range(2)],
                    [cuda.stream() for _ in range(2)],
                    [cuda.device_array((cap, H, W), dtype) for _ in range(2)],
                    [cuda.device_array((cap, H - SSIM_HALO, W - SSIM_HALO), np.int32) for _ in range(2)],
                    [cuda.device_array((cap, H - SSIM_HALO, W - SSIM_HALO), np.float32) for _ in range(2)])
            self._bufs = (cap, np.dtype(dtype), bufs)
        return self._bufs[2]

    def _grid_xy(self):
        H, W = self.shape[1:]
        return (-(-(W - SSIM_HALO) // self.tile), -(-(H - SSIM_HALO) // self.tile))

    def _compute_stats(self, X, m, q, mu, var, n, stream):
        if self.variant == "rows":
            H, W = self.shape[1:]
            cap = X.shape[0]
            self._stats_rows[(n, self._nstrips), self._block, stream](
                X.reshape(cap, H * W), W, m, q, mu.reshape(cap, (H - SSIM_HALO) * (W - SSIM_HALO)),
                var.reshape(cap, (H - SSIM_HALO) * (W - SSIM_HALO)))
            return
        gx, gy = self._grid_xy()
        for first in range(0, n, _MAX_GRID_Z):
            nz = min(_MAX_GRID_Z, n - first)
            self._stats[(gx, gy, nz), (self.tile, self.tile), stream](X, first, m, q, self._w, mu, var)

    def score(self, A, pairs) -> tuple[np.ndarray, np.ndarray]:
        """SSIM and MSE of ``(A[pairs[p,0]], B[pairs[p,1]])`` with this scorer's kernel variant.

        Parameters
        ----------
        A : ndarray uint8/float32/float64 [N, H, W]
            Streamed side (same H, W as B; converted like the CPU kernels: uint8 pairs stay uint8,
            anything else becomes float32).
        pairs : ndarray integer [P, 2]

        Returns
        -------
        ssim, mse : float32 [P]
        """
        A, pairs = self._check(A, pairs)
        if self.variant == "tiled":
            return self._score_tiled(A, pairs)
        return self._score_rows(A, pairs)

    def _check(self, A, pairs):
        A = as_images(A, "A", 3, (SSIM_WIN, SSIM_WIN))
        if A.shape[1:] != self.shape[1:]:
            raise ValueError(f"A and B must have the same image shape, got {A.shape[1:]} and {self.shape[1:]}")
        if A.dtype != self.dtype or A.dtype == np.float64:
            if self.dtype == np.uint8:
                raise ValueError("A must be uint8 like the resident B stack (build the scorer from float "
                                 "images to score float images)")
            A = np.ascontiguousarray(A, dtype=np.float32)
        return A, as_pairs(pairs, A.shape[0], self.shape[0])

    @staticmethod
    def _groups(pairs: np.ndarray):
        """Pairs grouped by A image without a sort when they already are (a k-NN shortlist is).

        Returns ``order`` (None: already grouped), the sorted A and B columns, the distinct A images and the
        group bounds into the sorted pairs (``bounds[g]:bounds[g+1]`` for ``uniq[g]``).
        """
        a = pairs[:, 0]
        order = None
        if a.size > 1 and bool((a[1:] < a[:-1]).any()):
            order = np.argsort(a, kind="stable")
            a = a[order]
            b = pairs[order, 1]
        else:
            b = pairs[:, 1]
        starts = np.flatnonzero(np.concatenate(([True], a[1:] != a[:-1])))
        return order, a, b, a[starts], np.append(starts, a.size)

    def _row_buffers(self, cap: int, cap_pairs: int, dtype):
        """Per-slot pinned host and device buffers of the ``rows`` path (kept and reused; grown when needed)."""
        from numba import cuda

        H, W = self.shape[1:]
        Hi, Wi = H - SSIM_HALO, W - SSIM_HALO
        ns = self._nstrips
        have = getattr(self, "_rbufs", None)
        if have is not None and have[0] >= cap and have[1] >= cap_pairs and have[2] == np.dtype(dtype):
            return have[3]
        cap = max(cap, have[0] if have else 0)
        cap_pairs = max(cap_pairs, have[1] if have else 0)
        slots = []
        for _ in range(2):
            slots.append(dict(
                stream=cuda.stream(),
                hA=cuda.pinned_array((cap, H, W), dtype), dA=cuda.device_array((cap, H, W), dtype),
                hm=cuda.pinned_array(cap, np.float64), hq=cuda.pinned_array(cap, np.float64),
                dm=cuda.device_array(cap, np.float64), dq=cuda.device_array(cap, np.float64),
                mu=cuda.device_array((cap, Hi, Wi), np.int32), var=cuda.device_array((cap, Hi, Wi), np.float32),
                hpa=cuda.pinned_array(cap_pairs, np.int32), hpb=cuda.pinned_array(cap_pairs, np.int32),
                dpa=cuda.device_array(cap_pairs, np.int32), dpb=cuda.device_array(cap_pairs, np.int32),
                dss=cuda.device_array((cap_pairs, ns), np.float64), dse=cuda.device_array((cap_pairs, ns), np.float64),
                hss=cuda.pinned_array((cap_pairs, ns), np.float64), hse=cuda.pinned_array((cap_pairs, ns), np.float64)))
        self._rbufs = (cap, cap_pairs, np.dtype(dtype), slots)
        return slots

    def _stage_rows(self, A, ids, a_sorted, b_sorted, p_lo, p_hi, sl):
        """Queue on slot ``sl``'s stream: the A images ``ids`` to the device, their centres and statistics, and
        the batch's pair lists; returns ``(number of images, number of pairs)``."""
        from numba import cuda

        st = sl["stream"]
        nimg = ids.size
        hA = sl["hA"][:nimg]
        _gather(A, ids, hA)
        sl["dA"][:nimg].copy_to_device(hA, stream=st)
        if A.dtype == np.uint8:  # centres on the device (exact: integer sums)
            self._centre[nimg, self._block, st](sl["dA"][:nimg], sl["dm"], sl["dq"])
        else:  # float images: the CPU's own function (its summation order decides the rounding of the mean)
            m, q = centres(hA)
            sl["hm"][:nimg] = m
            sl["hq"][:nimg] = q
            sl["dm"][:nimg].copy_to_device(sl["hm"][:nimg], stream=st)
            sl["dq"][:nimg].copy_to_device(sl["hq"][:nimg], stream=st)
        self._compute_stats(sl["dA"], sl["dm"], sl["dq"], sl["mu"], sl["var"], nimg, st)
        npair = p_hi - p_lo
        a = a_sorted[p_lo:p_hi]
        # slot of each pair's A image in the batch: ids is sorted and holds every a
        sl["hpa"][:npair] = np.searchsorted(ids, a) if npair else 0
        sl["hpb"][:npair] = b_sorted[p_lo:p_hi]
        sl["dpa"][:npair].copy_to_device(sl["hpa"][:npair], stream=st)
        sl["dpb"][:npair].copy_to_device(sl["hpb"][:npair], stream=st)
        return nimg, npair

    def _launch_rows(self, sl, npair):
        """Queue the pair kernel over ``npair`` staged pairs on slot ``sl``'s stream (no copy back)."""
        c1, c2 = ssim_c1_c2(self.data_range)
        M, H, W = self.shape
        cap = sl["dA"].shape[0]
        flat = (H * W, (H - SSIM_HALO) * (W - SSIM_HALO))
        self._pairs_rows[(npair, self._nstrips), self._block, sl["stream"]](
            sl["dA"].reshape(cap, flat[0]), self._B.reshape(M, flat[0]), W, sl["dm"], sl["dq"],
            sl["mu"].reshape(cap, flat[1]), sl["var"].reshape(cap, flat[1]), self._mb, self._qb,
            self._mub.reshape(M, flat[1]), self._varb.reshape(M, flat[1]), sl["dpa"], sl["dpb"], c2, np.float32(c1),
            sl["dss"], sl["dse"])

    def _score_rows(self, A, pairs):
        P = pairs.shape[0]
        ssim_out = np.empty(P, np.float64)
        mse_out = np.empty(P, np.float64)
        if P == 0:
            return ssim_out.astype(np.float32), mse_out.astype(np.float32)
        H, W = self.shape[1:]
        order, a_s, b_s, uniq, bounds = self._groups(pairs)
        nb = self.batch_images
        batches = [(lo, min(lo + nb, uniq.size)) for lo in range(0, uniq.size, nb)]
        cap_pairs = max(int(bounds[hi] - bounds[lo]) for lo, hi in batches)
        slots = self._row_buffers(min(nb, uniq.size), cap_pairs, A.dtype)
        pending: list = [None, None]
        n_ssim = (H - SSIM_HALO) * (W - SSIM_HALO)

        def collect(k):
            job = pending[k]
            if job is None:
                return
            sl = slots[k]
            sl["stream"].synchronize()
            p_lo, p_hi = job
            n = p_hi - p_lo
            idx = slice(p_lo, p_hi) if order is None else order[p_lo:p_hi]
            ssim_out[idx] = sl["hss"][:n].sum(axis=1) / n_ssim
            mse_out[idx] = sl["hse"][:n].sum(axis=1) / (H * W)
            pending[k] = None

        for i, (lo, hi) in enumerate(batches):
            k = i % 2
            collect(k)  # this slot's buffers are free again
            sl = slots[k]
            p_lo, p_hi = int(bounds[lo]), int(bounds[hi])
            _, npair = self._stage_rows(A, uniq[lo:hi], a_s, b_s, p_lo, p_hi, sl)
            self._launch_rows(sl, npair)
            sl["dss"][:npair].copy_to_host(sl["hss"][:npair], stream=sl["stream"])  # pinned: asynchronous
            sl["dse"][:npair].copy_to_host(sl["hse"][:npair], stream=sl["stream"])
            pending[k] = (p_lo, p_hi)
        collect(0)
        collect(1)
        return ssim_out.astype(np.float32), mse_out.astype(np.float32)

    def kernel_rate(self, A, pairs, min_window: float = 1.0, repeats: int = 3) -> dict:
        """Pairs/s of the pair kernel alone (device time, no host work or copies): a benchmark helper.

        The first batch of ``pairs`` (at most ``batch_images`` distinct A images) is staged once; then the
        pair kernel of this scorer's variant is launched over it repeatedly and the device synchronised, best
        of ``repeats`` windows of at least ``min_window`` s.  What :meth:`score` adds on top of this is host
        work (grouping, copies into pinned memory, centres) and transfers.

        Returns
        -------
        dict
            ``best_per_s``, ``all_per_s``, ``pairs`` (per launch).
        """
        import time

        from numba import cuda

        A, pairs = self._check(A, pairs)
        order, a_s, b_s, uniq, bounds = self._groups(pairs)
        hi = min(uniq.size, self.batch_images)
        p_hi = int(bounds[hi])
        if self.variant == "rows":
            sl = self._row_buffers(hi, p_hi, A.dtype)[0]
            _, npair = self._stage_rows(A, uniq[:hi], a_s, b_s, 0, p_hi, sl)

            def launch():
                self._launch_rows(sl, npair)
        else:
            ids = uniq[:hi]
            dA = cuda.to_device(np.ascontiguousarray(A[ids]))
            ma, qa = centres(A[ids])
            dma, dqa = cuda.to_device(ma), cuda.to_device(qa)
            H, W = self.shape[1:]
            mu = cuda.device_array((hi, H - SSIM_HALO, W - SSIM_HALO), np.int32)
            var = cuda.device_array((hi, H - SSIM_HALO, W - SSIM_HALO), np.float32)
            self._compute_stats(dA, dma, dqa, mu, var, hi, 0)
            npair = p_hi
            dpa = cuda.to_device(np.searchsorted(ids, a_s[:p_hi]).astype(np.int64))
            dpb = cuda.to_device(np.ascontiguousarray(b_s[:p_hi]))
            dgs = cuda.to_device(bounds[:hi + 1].astype(np.int64))
            dss = cuda.to_device(np.zeros(p_hi))
            dse = cuda.to_device(np.zeros(p_hi))
            gx, gy = self._grid_xy()
            c1, c2 = ssim_c1_c2(self.data_range)

            def launch():
                for gfirst in range(0, hi, _MAX_GRID_Z):
                    nz = min(_MAX_GRID_Z, hi - gfirst)
                    self._pairs[(gx, gy, nz), (self.tile, self.tile), 0](
                        dA, self._B, dma, dqa, mu, var, self._mb, self._qb, self._mub, self._varb, gfirst, dgs,
                        dpa, dpb, self._w, c1, c2, dss, dse)
        cuda.synchronize()
        launch()  # warm-up
        cuda.synchronize()
        rates = []
        for _ in range(max(1, int(repeats))):
            n = 0
            t0 = time.perf_counter()
            while True:
                launch()
                n += 1
                cuda.synchronize()
                dt = time.perf_counter() - t0
                if dt >= min_window:
                    break
            rates.append(n * npair / dt)
        return {"best_per_s": max(rates), "all_per_s": rates, "pairs": int(npair)}

    def _score_tiled(self, A, pairs) -> tuple[np.ndarray, np.ndarray]:
        """The first design's host path and kernel, unchanged (``variant="tiled"``)."""
        from numba import cuda

        P = pairs.shape[0]
        ssim_out = np.empty(P, np.float64)
        mse_out = np.empty(P, np.float64)
        if P == 0:
            return ssim_out.astype(np.float32), mse_out.astype(np.float32)
        H, W = self.shape[1:]
        c1, c2 = ssim_c1_c2(self.data_range)
        order = np.lexsort((pairs[:, 1], pairs[:, 0]))
        ia_sorted = pairs[order, 0]
        uniq, first_pos = np.unique(ia_sorted, return_index=True)
        bounds = np.append(first_pos, P)
        nb = self.batch_images
        batches = [(lo, min(lo + nb, uniq.size)) for lo in range(0, uniq.size, nb)]
        hosts, streams, devs, mus, vrs = self._buffers(min(nb, uniq.size), A.dtype)
        pending: list = [None, None]
        gx, gy = self._grid_xy()

        def collect(slot):
            job = pending[slot]
            if job is None:
                return
            streams[slot].synchronize()
            p_lo, p_hi, hs, he = job
            ssim_out[order[p_lo:p_hi]] = hs / ((H - SSIM_HALO) * (W - SSIM_HALO))
            mse_out[order[p_lo:p_hi]] = he / (H * W)
            pending[slot] = None

        for i, (lo, hi) in enumerate(batches):
            slot = i % 2
            collect(slot)  # the buffers of this slot are free again
            st = streams[slot]
            nimg = hi - lo
            ids = uniq[lo:hi]
            np.take(A, ids, axis=0, out=hosts[slot][:nimg])
            ma, qa = centres(hosts[slot][:nimg])
            dA = devs[slot]
            dA[:nimg].copy_to_device(hosts[slot][:nimg], stream=st)
            dma = cuda.to_device(ma, stream=st)
            dqa = cuda.to_device(qa, stream=st)
            self._compute_stats(dA, dma, dqa, mus[slot], vrs[slot], nimg, st)
            p_lo, p_hi = int(bounds[lo]), int(bounds[hi])
            sel = order[p_lo:p_hi]
            # slot of each pair's A image within the batch, and group starts (one group per A image)
            pa = np.searchsorted(ids, pairs[sel, 0]).astype(np.int64)
            gstart = (bounds[lo:hi + 1] - p_lo).astype(np.int64)
            pb = np.ascontiguousarray(pairs[sel, 1])
            dpa = cuda.to_device(pa, stream=st)
            dpb = cuda.to_device(pb, stream=st)
            dgs = cuda.to_device(gstart, stream=st)
            zeros = np.zeros(p_hi - p_lo, np.float64)
            dss = cuda.to_device(zeros, stream=st)
            dse = cuda.to_device(zeros, stream=st)
            for gfirst in range(0, nimg, _MAX_GRID_Z):
                nz = min(_MAX_GRID_Z, nimg - gfirst)
                self._pairs[(gx, gy, nz), (self.tile, self.tile), st](
                    dA, self._B, dma, dqa, mus[slot], vrs[slot], self._mb, self._qb, self._mub, self._varb,
                    gfirst, dgs, dpa, dpb, self._w, c1, c2, dss, dse)
            hs = dss.copy_to_host(stream=st)
            he = dse.copy_to_host(stream=st)
            pending[slot] = (p_lo, p_hi, hs, he)
        collect(0)
        collect(1)
        return ssim_out.astype(np.float32), mse_out.astype(np.float32)


def ssim_mse_pairs_cuda(A, B, pairs, data_range: float = 255.0, *, tile: int = DEFAULT_TILE,
                        batch_images: int = 4096, variant: str = DEFAULT_VARIANT,
                        block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """SSIM and MSE of each ``(A[i], B[j])`` pair in one GPU pass (B resident, A streamed).

    Parameters
    ----------
    A : ndarray uint8/float32/float64 [N, H, W]
    B : ndarray uint8/float32/float64 [M, H, W]
        ``H, W >= 11``; uint8 pairs stay uint8, other combinations are scored as float32 (as the CPU kernels).
    pairs : ndarray integer [P, 2]
        ``(index into A, index into B)``.
    data_range : float
    tile, batch_images, variant, block
        See :class:`CudaPairScorer`.

    Returns
    -------
    ssim, mse : float32 [P]
        Equal to :func:`kernels.similarity.ssim_pairs` / :func:`~kernels.similarity.mse_pairs` within 1e-5.
    """
    A = as_images(A, "A", 3, (SSIM_WIN, SSIM_WIN))
    B = as_images(B, "B", 3, (SSIM_WIN, SSIM_WIN))
    same_hw(A, B, "A", "B")
    A, B = common_dtype(A, B)
    pairs = as_pairs(pairs, A.shape[0], B.shape[0])
    scorer = CudaPairScorer(B, data_range, tile=tile, batch_images=batch_images, variant=variant, block=block)
    return scorer.score(A, pairs)


def ssim_pairs_cuda(A, B, pairs, data_range: float = 255.0, **kw) -> np.ndarray:
    """SSIM only (see :func:`ssim_mse_pairs_cuda`); float32 [P]."""
    return ssim_mse_pairs_cuda(A, B, pairs, data_range, **kw)[0]


def mse_pairs_cuda(A, B, pairs, **kw) -> np.ndarray:
    """MSE only (see :func:`ssim_mse_pairs_cuda`); float32 [P]."""
    return ssim_mse_pairs_cuda(A, B, pairs, **kw)[1]
