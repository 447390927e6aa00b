"""Local binary patterns, bit-for-bit compatible with scikit-image.

:func:`lbp` reproduces ``skimage.feature.local_binary_pattern`` (methods
``"default"``, ``"ror"``, ``"uniform"``, ``"nri_uniform"``; ``"var"`` is not
implemented):

* sample points ``rp = round(-R sin(2 pi i / P), 5)``, ``cp = round(R cos(2 pi i / P), 5)``;
* bilinear interpolation with constant (0) padding outside the image, with the
  same floating-point expression order as skimage's Cython
  ``bilinear_interpolation`` (``top = (1-dc) tl + dc tr`` ...), evaluated in
  float64 without FMA contraction, so threshold ties resolve identically;
* bit ``i`` is set when ``sample_i - center >= 0``;
* ``"uniform"`` counts 0/1 transitions over the *open* chain ``0..P-1`` (as
  skimage does), codes ``0..P+1``; ``"nri_uniform"`` codes ``0..P(P-1)+2``;
  ``"ror"`` takes the minimum over the P right bit-rotations.

The per-row / per-column interpolation coordinates (``floor``, ``ceil`` and the
fraction of ``r + rp[i]`` / ``c + cp[i]``) are tabulated once per image size,
so the per-pixel work is 4 loads and 6 multiply-adds per sample point.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._validate import as_images

__all__ = ["lbp", "lbp_histograms", "lbp_n_bins", "LBP_METHODS"]

#: Supported LBP methods and their internal codes.
LBP_METHODS = {"default": 0, "ror": 1, "uniform": 2, "nri_uniform": 3}


def lbp_n_bins(P: int, method: str) -> int:
    """Number of histogram bins (distinct codes) of an LBP method."""
    code = LBP_METHODS[method]
    if code in (0, 1):
        return 2**P
    if code == 2:
        return P + 2
    return P * (P - 1) + 3


def _check_params(P, R, method):
    if isinstance(P, bool) or not isinstance(P, (int, np.integer)):
        raise ValueError(f"P must be an integer, got {P!r}")
    P = int(P)
    if not 1 <= P <= 31:
        raise ValueError(f"P must be in 1..31, got {P}")
    try:
        R = float(R)
    except (TypeError, ValueError):
        raise ValueError(f"R must be a number, got {R!r}") from None
    if not np.isfinite(R) or R <= 0:
        raise ValueError(f"R must be positive and finite, got {R!r}")
    if not isinstance(method, str) or method.lower() not in LBP_METHODS:
        raise ValueError(f"method must be one of {sorted(LBP_METHODS)}, got {method!r}")
    return P, R, method.lower()


def _sample_offsets(P: int, R: float):
    ang = 2 * np.pi * np.arange(P, dtype=np.float64) / P
    rp = np.round(-R * np.sin(ang), 5)
    cp = np.round(R * np.cos(ang), 5)
    return np.ascontiguousarray(rp), np.ascontiguousarray(cp)


@njit(cache=True)
def _axis_table(n, offs):
    """floor, ceil and fraction of ``k + offs[i]`` for k in 0..n-1 (float64, as skimage)."""
    P = offs.shape[0]
    lo = np.empty((n, P), np.int64)
    hi = np.empty((n, P), np.int64)
    fr = np.empty((n, P), np.float64)
    for k in range(n):
        for i in range(P):
            v = k + offs[i]
            f = np.floor(v)
            lo[k, i] = np.int64(f)
            hi[k, i] = np.int64(np.ceil(v))
            fr[k, i] = v - f
    return lo, hi, fr


@njit(cache=True, inline="always")
def _px(img, r, c, rows, cols):
    if r < 0 or r >= rows or c < 0 or c >= cols:
        return 0.0
    return img[r, c]


@njit(cache=True)
def _lbp_into(img, P, method, rlo, rhi, rfr, clo, chi, cfr, out):
    """LBP codes of one float64 image into ``out`` (int64 [H, W])."""
    rows = img.shape[0]
    cols = img.shape[1]
    bits = np.empty(P, np.int64)
    for r in range(rows):
        for c in range(cols):
            center = img[r, c]
            for i in range(P):
                r0 = rlo[r, i]
                r1 = rhi[r, i]
                c0 = clo[c, i]
                c1 = chi[c, i]
                dr = rfr[r, i]
                dc = cfr[c, i]
                tl = _px(img, r0, c0, rows, cols)
                tr = _px(img, r0, c1, rows, cols)
                bl = _px(img, r1, c0, rows, cols)
                br = _px(img, r1, c1, rows, cols)
                top = (1 - dc) * tl + dc * tr
                bottom = (1 - dc) * bl + dc * br
                val = (1 - dr) * top + dr * bottom
                bits[i] = 1 if val - center >= 0 else 0
            code = 0
            if method == 2 or method == 3:
                changes = 0
                for i in range(P - 1):
                    if bits[i] != bits[i + 1]:
                        changes += 1
                if method == 2:
                    if changes <= 2:
                        for i in range(P):
                            code += bits[i]
                    else:
                        code = P + 1
                else:
                    if changes <= 2:
                        n_ones = 0
                        first_one = -1
                        first_zero = -1
                        for i in range(P):
                            if bits[i]:
                                n_ones += 1
                                if first_one == -1:
                                    first_one = i
                            else:
                                if first_zero == -1:
                                    first_zero = i
                        if n_ones == 0:
                            code = 0
                        elif n_ones == P:
                            code = P * (P - 1) + 1
                        else:
                            if first_one == 0:
                                rot_index = n_ones - first_zero
                            else:
                                rot_index = P - first_one
                            code = 1 + (n_ones - 1) * P + rot_index
                    else:
                        code = P * (P - 1) + 2
            else:
                for i in range(P):
                    code += bits[i] << i
                if method == 1:
                    best = code
                    v = code
                    for i in range(1, P):
                        v = (v >> 1) | ((v & 1) << (P - 1))
                        if v < best:
                            best = v
                    code = best
            out[r, c] = code


@njit(parallel=True, cache=True)
def _lbp_hist_batch(images, P, method, n_bins, rlo, rhi, rfr, clo, chi, cfr, out):
    N = images.shape[0]
    H = images.shape[1]
    W = images.shape[2]
    inv = 1.0 / (H * W)
    for n in prange(N):
        img = np.empty((H, W), np.float64)
        for r in range(H):
            for c in range(W):
                img[r, c] = np.float64(images[n, r, c])
        codes = np.empty((H, W), np.int64)
        _lbp_into(img, P, method, rlo, rhi, rfr, clo, chi, cfr, codes)
        cnt = np.zeros(n_bins, np.int64)
        for r in range(H):
            for c in range(W):
                cnt[codes[r, c]] += 1
        for b in range(n_bins):
            out[n, b] = np.float32(cnt[b] * inv)


def _tables(H, W, P, R):
    rp, cp = _sample_offsets(P, R)
    rlo, rhi, rfr = _axis_table(H, rp)
    clo, chi, cfr = _axis_table(W, cp)
    return rlo, rhi, rfr, clo, chi, cfr


def lbp(image, P=8, R=1.0, method="uniform") -> np.ndarray:
    """Local binary pattern codes of one image (== skimage ``local_binary_pattern``).

    Parameters
    ----------
    image : ndarray, uint8/float32/float64, shape [H, W]
    P : int
        Number of circular sample points (1..31).
    R : float
        Circle radius in pixels (> 0).
    method : {"default", "ror", "uniform", "nri_uniform"}

    Returns
    -------
    ndarray, float64, shape [H, W]
        LBP code per pixel, identical to
        ``skimage.feature.local_binary_pattern(image, P, R, method)``.
    """
    P, R, method = _check_params(P, R, method)
    img = as_images(image, "image", 2)
    img = np.ascontiguousarray(img, dtype=np.float64)
    H, W = img.shape
    codes = np.empty((H, W), np.int64)
    _lbp_into(img, P, LBP_METHODS[method], *_tables(H, W, P, R), codes)
    return codes.astype(np.float64)


def lbp_histograms(images, P=8, R=1.0, method="uniform") -> np.ndarray:
    """Normalised LBP code histograms of a batch of images (one parallel call).

    Parameters
    ----------
    images : ndarray, uint8/float32/float64, shape [N, H, W]
    P, R, method
        As :func:`lbp`.  ``"default"``/``"ror"`` have ``2**P`` bins and are
        limited to ``P <= 16``.

    Returns
    -------
    ndarray, float32, shape [N, bins]
        Row ``n`` is ``np.bincount(lbp(images[n]), minlength=bins) / (H*W)``;
        bins = ``P+2`` (uniform), ``P(P-1)+3`` (nri_uniform), ``2**P``
        (default, ror).
    """
    P, R, method = _check_params(P, R, method)
    imgs = as_images(images, "images", 3)
    if method in ("default", "ror") and P > 16:
        raise ValueError(f"lbp_histograms: method {method!r} has 2**P bins; P must be <= 16")
    N, H, W = imgs.shape
    if H * W == 0:
        raise ValueError("images: images must not be empty")
    n_bins = lbp_n_bins(P, method)
    out = np.zeros((N, n_bins), np.float32)
    if N:
        _lbp_hist_batch(imgs, P, LBP_METHODS[method], n_bins, *_tables(H, W, P, R), out)
    return out
