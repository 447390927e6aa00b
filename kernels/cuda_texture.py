"""CUDA LBP histograms (Numba CUDA), bit-for-bit the CPU kernel of :mod:`kernels.texture`.

One thread per pixel computes the raw P-bit code exactly as ``texture._raw_codes_row``: samples on the pixel
grid are read directly, the others are interpolated bilinearly with skimage's expression order
(``top = (1-dc) tl + dc tr``, ``bottom``, ``(1-dr) top + dr bottom``) from the same per-row / per-column
tables, with zero padding outside the image.  On real hardware the products and sums go through libdevice's
``__nv_dmul_rn`` / ``__nv_dadd_rn``, which the compiler never contracts into FMAs, so threshold ties resolve
exactly as on the CPU (an FMA would round differently and flip codes of flat regions).  Codes are mapped
through the method's lookup table and counted in a per-block shared histogram, then added to the image's
global counts; the host normalises ``count * (1/(H*W))`` in float64 as the CPU kernel.

Supported: ``P <= 16`` with at most :data:`MAX_GPU_BINS` bins (``uniform`` any P <= 16, ``nri_uniform``,
``default``/``ror`` up to P = 11); other settings raise ``ValueError`` (use the CPU kernel).

Public API
----------
lbp_histograms_cuda(images, P=8, R=1.0, method="uniform") -> float32[N, bins]
"""

from __future__ import annotations

import functools

import numpy as np

from ._validate import as_images
from .cuda_similarity import _check_tile, cuda_available, simulator
from .texture import LBP_METHODS, _check_params, _lut, _tables, lbp_n_bins

__all__ = ["lbp_histograms_cuda", "MAX_GPU_BINS"]

#: shared-memory histogram size limit (int32 counters)
MAX_GPU_BINS = 2048
_T = 16
#: numba.cuda, imported on first use (after NUMBA_ENABLE_CUDASIM is set); a module global for the simulator
cuda = None


@functools.lru_cache(maxsize=None)
def _kernel(T: int):
    global cuda
    from numba import cuda

    if simulator():
        def mul(a, b):
            return a * b

        def add(a, b):
            return a + b
        _mul = cuda.jit(device=True)(mul)
        _add = cuda.jit(device=True)(add)
    else:  # pragma: no cover - real GPU only
        from numba.cuda import libdevice

        @cuda.jit(device=True)
        def _mul(a, b):
            return libdevice.dmul_rn(a, b)

        @cuda.jit(device=True)
        def _add(a, b):
            return libdevice.dadd_rn(a, b)

    NB = MAX_GPU_BINS
    NT = T * T

    @cuda.jit(device=True)
    def _pix(X, n, r, c, H, W):
        if r < 0 or c < 0 or r >= H or c >= W:
            return 0.0
        return float(X[n, r, c])

    @cuda.jit
    def hist_kernel(X, P, kind, drow0, drow1, dcol0, dcol1, rfr, frT, omfrT, lut, n_bins, counts):
        """Grid (ceil(W/T), ceil(H/T), N), block (T, T): codes of the block's pixels into ``counts[n]``."""
        n = cuda.blockIdx.z
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * T + tx
        H = X.shape[1]
        W = X.shape[2]
        hist = cuda.shared.array(NB, np.int32)
        for b in range(tid, n_bins, NT):
            hist[b] = 0
        cuda.syncthreads()
        r = cuda.blockIdx.y * T + ty
        c = cuda.blockIdx.x * T + tx
        if r < H and c < W:
            centre = float(X[n, r, c])
            code = 0
            for i in range(P):
                if kind[i] == 0:
                    val = _pix(X, n, r + drow0[i], c + dcol0[i], H, W)
                else:
                    tl = _pix(X, n, r + drow0[i], c + dcol0[i], H, W)
                    tr = _pix(X, n, r + drow0[i], c + dcol1[i], H, W)
                    bl = _pix(X, n, r + drow1[i], c + dcol0[i], H, W)
                    br = _pix(X, n, r + drow1[i], c + dcol1[i], H, W)
                    fr = frT[i, c]
                    omfr = omfrT[i, c]
                    dr = rfr[r, i]
                    omdr = 1 - dr
                    top = _add(_mul(omfr, tl), _mul(fr, tr))
                    bottom = _add(_mul(omfr, bl), _mul(fr, br))
                    val = _add(_mul(omdr, top), _mul(dr, bottom))
                if val - centre >= 0:
                    code |= 1 << i
            cuda.atomic.add(hist, lut[code], 1)
        cuda.syncthreads()
        for b in range(tid, n_bins, NT):
            v = hist[b]
            if v:
                cuda.atomic.add(counts, (n, b), v)

    return hist_kernel


def lbp_histograms_cuda(images, P: int = 8, R: float = 1.0, method: str = "uniform", *,
                        tile: int = _T, batch_images: int = 8192) -> np.ndarray:
    """Normalised LBP code histograms on the GPU (equal to :func:`kernels.texture.lbp_histograms`).

    Parameters
    ----------
    images : ndarray, uint8/float32/float64, shape [N, H, W]
    P, R, method
        As :func:`kernels.texture.lbp`; ``P <= 16`` and at most :data:`MAX_GPU_BINS` bins.
    tile : int
        Block edge (tile**2 threads, power of two <= 32).
    batch_images : int
        Images per launch (bounds device memory).

    Returns
    -------
    ndarray, float32, shape [N, bins]
        Row n is ``bincount(lbp(images[n]), minlength=bins) / (H*W)``.
    """
    P, R, method = _check_params(P, R, method)
    imgs = as_images(images, "images", 3)
    n_bins = lbp_n_bins(P, method)
    if P > 16 or n_bins > MAX_GPU_BINS:
        raise ValueError(f"lbp_histograms_cuda: P={P}, method={method!r} has {n_bins} bins; the GPU kernel "
                         f"supports P <= 16 and <= {MAX_GPU_BINS} bins (use kernels.lbp_histograms)")
    N, H, W = imgs.shape
    if H * W == 0:
        raise ValueError("images: images must not be empty")
    t = _check_tile(tile)
    out = np.zeros((N, n_bins), np.float32)
    if N == 0:
        return out
    if not cuda_available():
        raise RuntimeError("no CUDA device is available to Numba (driver, numba-cuda or GPU missing)")
    from numba import cuda as _cuda

    m, kind, drow0, drow1, dcol0, dcol1, rfr, frT, omfrT, _fast8 = _tables(H, W, P, R)
    lut = _lut(P, method)
    args = [_cuda.to_device(np.ascontiguousarray(a)) for a in
            (kind, drow0, drow1, dcol0 - m, dcol1 - m, rfr, frT, omfrT, lut)]
    kern = _kernel(t)
    inv = 1.0 / (H * W)
    grid_xy = (-(-W // t), -(-H // t))
    for lo in range(0, N, max(1, int(batch_images))):
        hi = min(N, lo + int(batch_images))
        dX = _cuda.to_device(imgs[lo:hi])
        counts = _cuda.to_device(np.zeros((hi - lo, n_bins), np.int32))
        for z0 in range(0, hi - lo, 65535):
            z1 = min(hi - lo, z0 + 65535)
            kern[(grid_xy[0], grid_xy[1], z1 - z0), (t, t)](dX[z0:z1], P, *args[:8], args[8], n_bins,
                                                            counts[z0:z1])
        out[lo:hi] = (counts.copy_to_host().astype(np.float64) * inv).astype(np.float32)
    return out
