"""CUDA pair kernels (Numba CUDA): SSIM with MSE fused in the same pass.

Same definition and numerics as the CPU kernels of :mod:`kernels.similarity` (skimage's Gaussian SSIM:
11-tap window, sigma 1.5, population statistics, K1 = 0.01, K2 = 0.03, the map cropped by 5 pixels; MSE over
all pixels), so results agree with :func:`kernels.similarity.ssim_pairs` / ``mse_pairs`` within 1e-5
(measured ~1e-12 under the simulator: the same float64 filter order and fixed-point statistics).

Layout
------
* **Resident side** (``B``, the generated set): uploaded once by :class:`CudaPairScorer`; its per-image
  statistics are computed once on the device with the CPU kernel's definition: integer centring constant
  ``m = round(mean)``, ``mu' = G*(x-m)`` stored as int32 fixed point (step ``q = 2**-k``) and
  ``var = G*(x-m)^2 - (q mu')^2`` stored as float32 in units of ``q^2`` -- 8 bytes per valid pixel.
* **Streamed side** (``A``, the real images): distinct A images are sent in batches through two pinned host
  buffers and two CUDA streams (double buffering: the copy of batch i+1 overlaps the kernels of batch i);
  their statistics are computed on the device per batch.
* **Pair kernel**: pairs are grouped by their A image.  One block per (A image, output tile of T x T
  pixels): A's centred tile plus its 10-pixel halo is loaded once into shared memory and stays there while
  the block walks over all partners of that A image.  Per partner only the cross term ``G*((x-m_x)(y-m_y))``
  is filtered (separable, float64, vertical then horizontal pass in shared memory), combined with the
  stored statistics into the SSIM map, and block-reduced; the squared differences of the pixels the tile
  owns are summed in the same pass (MSE).  Tile sums are added atomically per pair (float64).

The simulator (``NUMBA_ENABLE_CUDASIM=1``, set before :mod:`numba.cuda` is first imported) runs the same
kernels in Python: that is how the tests prove them on machines without a GPU.

Public API
----------
cuda_available() -> bool
CudaPairScorer(B, data_range=255.0, tile=16).score(A, pairs) -> (ssim float32[P], mse float32[P])
ssim_mse_pairs_cuda(A, B, pairs, data_range=255.0) -> (ssim float32[P], mse float32[P])
ssim_pairs_cuda / mse_pairs_cuda (A, B, pairs, ...) -> float32[P]
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ._validate import as_images, as_pairs, check_data_range, common_dtype, same_hw
from .constants import SSIM_HALO, SSIM_RADIUS, SSIM_WIN, gaussian_window, ssim_c1_c2
from .similarity import _centre

# The separable filters below are unrolled for the 11-tap window (weights w0..w5, offsets 0..10): they read
# the window size from kernels.constants, and refuse to run if it ever changes without them.
if SSIM_RADIUS != 5:  # pragma: no cover - guards a future edit of kernels.constants
    raise ImportError(f"kernels.cuda_similarity is unrolled for an 11-tap SSIM window, constants say {SSIM_WIN}")

__all__ = ["cuda_available", "simulator", "CudaPairScorer", "ssim_mse_pairs_cuda", "ssim_pairs_cuda",
           "mse_pairs_cuda", "DEFAULT_TILE"]

#: output tile edge of the pair kernel on real hardware (T x T threads per block; a power of two)
DEFAULT_TILE = 16
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
        Output tile edge (threads per block = tile**2; power of two).
    batch_images : int
        Distinct A images per streamed batch.

    Raises
    ------
    ValueError
        Bad images or parameters.
    RuntimeError
        No usable CUDA device (see :func:`cuda_available`).
    """

    def __init__(self, B, data_range: float = 255.0, *, tile: int = DEFAULT_TILE, batch_images: int = 4096):
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
        self._stats, self._pairs = _kernels(self.tile)
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
        gx, gy = self._grid_xy()
        for first in range(0, n, _MAX_GRID_Z):
            nz = min(_MAX_GRID_Z, n - first)
            self._stats[(gx, gy, nz), (self.tile, self.tile), stream](X, first, m, q, self._w, mu, var)

    def score(self, A, pairs) -> tuple[np.ndarray, np.ndarray]:
        """SSIM and MSE of ``(A[pairs[p,0]], B[pairs[p,1]])``.

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
        from numba import cuda

        A = as_images(A, "A", 3, (SSIM_WIN, SSIM_WIN))
        if A.shape[1:] != self.shape[1:]:
            raise ValueError(f"A and B must have the same image shape, got {A.shape[1:]} and {self.shape[1:]}")
        if A.dtype != self.dtype or A.dtype == np.float64:
            if self.dtype == np.uint8:
                raise ValueError("A must be uint8 like the resident B stack (build the scorer from float "
                                 "images to score float images)")
            A = np.ascontiguousarray(A, dtype=np.float32)
        pairs = as_pairs(pairs, A.shape[0], self.shape[0])
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
                        batch_images: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """SSIM and MSE of each ``(A[i], B[j])`` pair in one GPU pass (B resident, A streamed).

    Parameters
    ----------
    A : ndarray uint8/float32/float64 [N, H, W]
    B : ndarray uint8/float32/float64 [M, H, W]
        ``H, W >= 11``; uint8 pairs stay uint8, other combinations are scored as float32 (as the CPU kernels).
    pairs : ndarray integer [P, 2]
        ``(index into A, index into B)``.
    data_range : float
    tile, batch_images : int
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
    scorer = CudaPairScorer(B, data_range, tile=tile, batch_images=batch_images)
    return scorer.score(A, pairs)


def ssim_pairs_cuda(A, B, pairs, data_range: float = 255.0, **kw) -> np.ndarray:
    """SSIM only (see :func:`ssim_mse_pairs_cuda`); float32 [P]."""
    return ssim_mse_pairs_cuda(A, B, pairs, data_range, **kw)[0]


def mse_pairs_cuda(A, B, pairs, **kw) -> np.ndarray:
    """MSE only (see :func:`ssim_mse_pairs_cuda`); float32 [P]."""
    return ssim_mse_pairs_cuda(A, B, pairs, **kw)[1]
