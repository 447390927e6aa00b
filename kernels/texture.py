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

Implementation: the per-row / per-column interpolation coordinates
(``floor``, ``ceil`` and the fraction of ``r + rp[i]`` / ``c + cp[i]``, and
``1 - fraction``) are tabulated once per image size, exactly as skimage
computes them per pixel.  Samples whose fractions are zero for every pixel
(for P=8, R=1: the 4 axis neighbours) are read directly, which is exactly
what skimage's interpolation returns there; the others are interpolated with
skimage's expression order.  Rows are processed with column loops that
vectorise over a zero-padded float64 copy of the image (no bounds checks),
building the raw P-bit code (bit i = ``sample_i - centre >= 0``) in int32.
Codes are mapped to a method through a ``2**P`` lookup table (P <= 16) or
bit operations (popcount of ``v ^ (v >> 1)`` for transitions, rotations for
``ror``).  :func:`lbp_histograms` never materialises a code image: for
P <= 12 it counts raw codes in 4 interleaved counter arrays (repeated codes in
flat areas would otherwise serialise on store-to-load forwarding) and folds
them through the table once per image; images are processed in parallel
chunks, each with its own padded buffer.
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def _popcount(v):
    v = v - ((v >> 1) & 0x5555555555555555)
    v = (v & 0x3333333333333333) + ((v >> 2) & 0x3333333333333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (v * 0x0101010101010101) >> 56


@njit(cache=True, nogil=True)
def _map_code(v, P, method):
    """Map a raw LBP code (bit i set when sample i >= centre) to ``method``'s code.

    Same definitions as skimage: ``ror`` is the minimum over the P right
    rotations; ``uniform`` counts 0/1 transitions over the open chain
    ``0..P-1`` (bits i, i+1 for i < P-1); ``nri_uniform`` as skimage's
    rotation index.
    """
    if method == 0:
        return v
    if method == 1:
        best = v
        for _ in range(1, P):
            v = (v >> 1) | ((v & 1) << (P - 1))
            best = min(best, v)
        return best
    changes = _popcount((v ^ (v >> 1)) & ((np.int64(1) << (P - 1)) - 1))
    n_ones = _popcount(v)
    if method == 2:
        return n_ones if changes <= 2 else P + 1
    if changes > 2:
        return P * (P - 1) + 2
    if n_ones == 0:
        return 0
    if n_ones == P:
        return P * (P - 1) + 1
    first_one = 0
    while (v >> first_one) & 1 == 0:
        first_one += 1
    first_zero = 0
    while (v >> first_zero) & 1 == 1:
        first_zero += 1
    if first_one == 0:
        rot_index = n_ones - first_zero
    else:
        rot_index = P - first_one
    return 1 + (n_ones - 1) * P + rot_index


@njit(cache=True, nogil=True)
def _code_lut(P, method):
    """Lookup table raw code -> method code for all ``2**P`` raw codes (P <= 16)."""
    n = 1 << P
    lut = np.empty(n, np.int32)
    for v in range(n):
        lut[v] = _map_code(np.int64(v), P, method)
    return lut


@njit(cache=True, nogil=True)
def _raw_codes_row(pad, m, r, P, kind, drow0, drow1, dcol0, dcol1, rfr, frT, omfrT, code):
    """Raw LBP codes (int32, bit i = ``sample_i - centre >= 0``) of image row ``r``.

    pad : float64 [H+2m, W+2m] zero-padded image (skimage's constant mode, cval 0).
    For sample i: ``kind[i] == 0`` -> the sample sits on the pixel grid for
    every pixel (both fractions are exactly 0, so skimage's interpolation
    returns the pixel itself: ``(1-0)*tl + 0*tr == tl`` for finite values);
    ``kind[i] == 1`` -> bilinear interpolation with skimage's expression order
    (``top = (1-dc) tl + dc tr``, ``bottom``, ``(1-dr) top + dr bottom``),
    float64 without contraction.  drow0/drow1[i]: ``floor/ceil(r+rp_i) - r``;
    dcol0/dcol1[i]: ``floor/ceil(c+cp_i) - c + m`` (padded frame);
    rfr[r, i] row fraction; frT/omfrT[i, c]: column fraction dc and 1-dc.
    """
    cols = code.shape[0]
    center = pad[r + m, m : m + cols]
    for c in range(cols):
        code[c] = 0
    for i in range(P):
        bit = np.int32(1) << i
        row0 = pad[r + m + drow0[i]]
        b0 = dcol0[i]
        tl = row0[b0 : b0 + cols]
        if kind[i] == 0:
            for c in range(cols):
                if tl[c] - center[c] >= 0:
                    code[c] |= bit
        else:
            row1 = pad[r + m + drow1[i]]
            b1 = dcol1[i]
            tr = row0[b1 : b1 + cols]
            bl = row1[b0 : b0 + cols]
            br = row1[b1 : b1 + cols]
            dr = rfr[r, i]
            omdr = 1 - dr
            fr = frT[i]
            omfr = omfrT[i]
            for c in range(cols):
                top = omfr[c] * tl[c] + fr[c] * tr[c]
                bottom = omfr[c] * bl[c] + fr[c] * br[c]
                val = omdr * top + dr * bottom
                if val - center[c] >= 0:
                    code[c] |= bit


@njit(cache=True, nogil=True)
def _raw_codes_row8(pad, m, r, drow0, drow1, dcol0, dcol1, rfr, frT, omfrT, code):
    """:func:`_raw_codes_row` specialised to P=8 with samples 0, 2, 4, 6 on the grid
    and 1, 3, 5, 7 interpolated (any integer R): one fused column loop builds
    the whole code (no per-sample read-modify-write of ``code``); identical
    arithmetic per sample."""
    cols = code.shape[0]
    center = pad[r + m, m : m + cols]
    g0 = pad[r + m + drow0[0], dcol0[0] : dcol0[0] + cols]
    g2 = pad[r + m + drow0[2], dcol0[2] : dcol0[2] + cols]
    g4 = pad[r + m + drow0[4], dcol0[4] : dcol0[4] + cols]
    g6 = pad[r + m + drow0[6], dcol0[6] : dcol0[6] + cols]
    tl1 = pad[r + m + drow0[1], dcol0[1] : dcol0[1] + cols]
    tr1 = pad[r + m + drow0[1], dcol1[1] : dcol1[1] + cols]
    bl1 = pad[r + m + drow1[1], dcol0[1] : dcol0[1] + cols]
    br1 = pad[r + m + drow1[1], dcol1[1] : dcol1[1] + cols]
    f1 = frT[1]
    o1 = omfrT[1]
    d1 = rfr[r, 1]
    e1 = 1 - d1
    tl3 = pad[r + m + drow0[3], dcol0[3] : dcol0[3] + cols]
    tr3 = pad[r + m + drow0[3], dcol1[3] : dcol1[3] + cols]
    bl3 = pad[r + m + drow1[3], dcol0[3] : dcol0[3] + cols]
    br3 = pad[r + m + drow1[3], dcol1[3] : dcol1[3] + cols]
    f3 = frT[3]
    o3 = omfrT[3]
    d3 = rfr[r, 3]
    e3 = 1 - d3
    tl5 = pad[r + m + drow0[5], dcol0[5] : dcol0[5] + cols]
    tr5 = pad[r + m + drow0[5], dcol1[5] : dcol1[5] + cols]
    bl5 = pad[r + m + drow1[5], dcol0[5] : dcol0[5] + cols]
    br5 = pad[r + m + drow1[5], dcol1[5] : dcol1[5] + cols]
    f5 = frT[5]
    o5 = omfrT[5]
    d5 = rfr[r, 5]
    e5 = 1 - d5
    tl7 = pad[r + m + drow0[7], dcol0[7] : dcol0[7] + cols]
    tr7 = pad[r + m + drow0[7], dcol1[7] : dcol1[7] + cols]
    bl7 = pad[r + m + drow1[7], dcol0[7] : dcol0[7] + cols]
    br7 = pad[r + m + drow1[7], dcol1[7] : dcol1[7] + cols]
    f7 = frT[7]
    o7 = omfrT[7]
    d7 = rfr[r, 7]
    e7 = 1 - d7
    for c in range(cols):
        ce = center[c]
        v = np.int32(0)
        v |= np.int32(1) if g0[c] - ce >= 0 else np.int32(0)
        top = o1[c] * tl1[c] + f1[c] * tr1[c]
        bottom = o1[c] * bl1[c] + f1[c] * br1[c]
        v |= np.int32(2) if e1 * top + d1 * bottom - ce >= 0 else np.int32(0)
        v |= np.int32(4) if g2[c] - ce >= 0 else np.int32(0)
        top = o3[c] * tl3[c] + f3[c] * tr3[c]
        bottom = o3[c] * bl3[c] + f3[c] * br3[c]
        v |= np.int32(8) if e3 * top + d3 * bottom - ce >= 0 else np.int32(0)
        v |= np.int32(16) if g4[c] - ce >= 0 else np.int32(0)
        top = o5[c] * tl5[c] + f5[c] * tr5[c]
        bottom = o5[c] * bl5[c] + f5[c] * br5[c]
        v |= np.int32(32) if e5 * top + d5 * bottom - ce >= 0 else np.int32(0)
        v |= np.int32(64) if g6[c] - ce >= 0 else np.int32(0)
        top = o7[c] * tl7[c] + f7[c] * tr7[c]
        bottom = o7[c] * bl7[c] + f7[c] * br7[c]
        v |= np.int32(128) if e7 * top + d7 * bottom - ce >= 0 else np.int32(0)
        code[c] = v


@njit(cache=True, nogil=True)
def _fill_pad(img, pad, m):
    rows = img.shape[0]
    cols = img.shape[1]
    for r in range(rows):
        pr = pad[r + m]
        ir = img[r]
        for c in range(cols):
            pr[c + m] = np.float64(ir[c])


@njit(cache=True, nogil=True)
def _lbp_codes_image(img, P, method, m, kind, drow0, drow1, dcol0, dcol1, rfr, frT, omfrT, fast8, lut, out):
    """Method codes of one image into ``out`` (float64 [H, W])."""
    rows = img.shape[0]
    cols = img.shape[1]
    pad = np.zeros((rows + 2 * m, cols + 2 * m), np.float64)
    _fill_pad(img, pad, m)
    code = np.empty(cols, np.int32)
    for r in range(rows):
        if fast8:
            _raw_codes_row8(pad, m, r, drow0, drow1, dcol0, dcol1, rfr, frT, omfrT, code)
        else:
            _raw_codes_row(pad, m, r, P, kind, drow0, drow1, dcol0, dcol1, rfr, frT, omfrT, code)
        o = out[r]
        if lut.shape[0] > 0:
            for c in range(cols):
                o[c] = lut[code[c]]
        else:
            for c in range(cols):
                o[c] = _map_code(np.int64(code[c]), P, method)


@njit(parallel=True, cache=True, nogil=True)
def _lbp_hist_kernel(images, P, method, n_bins, m, kind, drow0, drow1, dcol0, dcol1, rfr, frT, omfrT, fast8, lut, raw, nch, out):
    """Normalised histograms of method codes, one image per task, no code image.

    raw == 1: count raw codes (``2**P`` counters, 4 interleaved copies to
    break store-to-load chains on repeated codes) and fold them through
    ``lut`` at the end; raw == 0: map every pixel (``lut`` or
    :func:`_map_code`) and count method codes.  ``nch`` chunks of images run
    in parallel, each with its own padded buffer.
    """
    N = images.shape[0]
    H = images.shape[1]
    W = images.shape[2]
    inv = 1.0 / (H * W)
    nraw = (1 << P) if raw == 1 else n_bins
    for ch in prange(nch):
        pad = np.zeros((H + 2 * m, W + 2 * m), np.float64)
        code = np.empty(W, np.int32)
        cnt = np.empty((4, nraw), np.int64)
        c0 = cnt[0]
        c1 = cnt[1]
        c2 = cnt[2]
        c3 = cnt[3]
        W4 = W - W % 4
        for n in range(ch * N // nch, (ch + 1) * N // nch):
            _fill_pad(images[n], pad, m)
            cnt[:] = 0
            for r in range(H):
                if fast8:
                    _raw_codes_row8(pad, m, r, drow0, drow1, dcol0, dcol1, rfr, frT, omfrT, code)
                else:
                    _raw_codes_row(pad, m, r, P, kind, drow0, drow1, dcol0, dcol1, rfr, frT, omfrT, code)
                if raw == 0:
                    if lut.shape[0] > 0:
                        for c in range(W):
                            code[c] = lut[code[c]]
                    else:
                        for c in range(W):
                            code[c] = _map_code(np.int64(code[c]), P, method)
                for c in range(0, W4, 4):
                    c0[code[c]] += 1
                    c1[code[c + 1]] += 1
                    c2[code[c + 2]] += 1
                    c3[code[c + 3]] += 1
                for c in range(W4, W):
                    c0[code[c]] += 1
            hist = out[n]
            for b in range(n_bins):
                hist[b] = 0.0
            tot = np.zeros(n_bins, np.int64)
            for k in range(nraw):
                s = c0[k] + c1[k] + c2[k] + c3[k]
                if s:
                    tot[lut[k] if raw == 1 else k] += s
            for b in range(n_bins):
                hist[b] = np.float32(tot[b] * inv)


def _tables(H, W, P, R):
    """Interpolation tables for an ``H x W`` image (see :func:`_raw_codes_row`).

    Returns ``(m, kind, drow0, drow1, dcol0, dcol1, rfr, frT, omfrT, fast8)``; all
    fractions are computed per coordinate exactly as skimage does per pixel.
    """
    rp, cp = _sample_offsets(P, R)
    rlo, rhi, rfr = _axis_table(H, rp)
    clo, chi, cfr = _axis_table(W, cp)
    ar = np.arange(H)[:, None]
    ac = np.arange(W)[:, None]
    # the row kernel relies on floor/ceil(k + off_i) == k + floor/ceil(off_i)
    if not ((rlo - ar == rlo[0]).all() and (rhi - ar == rhi[0]).all()
            and (clo - ac == clo[0]).all() and (chi - ac == chi[0]).all()):
        raise ValueError(f"LBP: unsupported radius R={R} for image size {H}x{W}")
    m = int(max(np.abs(rlo[0]).max(), np.abs(rhi[0]).max(), np.abs(clo[0]).max(), np.abs(chi[0]).max())) + 1
    kind = np.where((rfr == 0).all(0) & (cfr == 0).all(0), 0, 1).astype(np.int64)
    frT = np.ascontiguousarray(cfr.T)
    omfrT = np.ascontiguousarray(1 - cfr.T)
    # P=8 with the axis samples on the grid and the diagonals interpolated
    # (any integer R) has a fused single-loop row kernel
    fast8 = P == 8 and bool((kind == np.array([0, 1, 0, 1, 0, 1, 0, 1])).all())
    return (m, kind, np.ascontiguousarray(rlo[0]), np.ascontiguousarray(rhi[0]),
            np.ascontiguousarray(clo[0] + m), np.ascontiguousarray(chi[0] + m),
            np.ascontiguousarray(rfr), frT, omfrT, fast8)


#: raw-code LUTs are used up to this P (2**P int32 entries)
_LUT_MAX_P = 16
#: histograms count raw codes (then fold) up to this P
_RAW_COUNT_MAX_P = 12


def _lut(P, method):
    if P <= _LUT_MAX_P:
        return _code_lut(P, LBP_METHODS[method])
    return np.zeros(0, np.int32)


def _lbp_hist_into(imgs, P, R, method, out):
    """Fill ``out`` (float32 [N, bins]) with normalised LBP histograms of ``imgs`` (validated)."""
    import numba

    N, H, W = imgs.shape
    if N == 0:
        return out
    raw = 1 if P <= _RAW_COUNT_MAX_P else 0
    nch = int(min(N, 4 * numba.get_num_threads()))
    _lbp_hist_kernel(imgs, P, LBP_METHODS[method], lbp_n_bins(P, method), *_tables(H, W, P, R),
                     _lut(P, method), raw, nch, out)
    return out


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
    H, W = img.shape
    out = np.empty((H, W), np.float64)
    _lbp_codes_image(img, P, LBP_METHODS[method], *_tables(H, W, P, R), _lut(P, method), out)
    return out


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
    out = np.zeros((N, lbp_n_bins(P, method)), np.float32)
    return _lbp_hist_into(imgs, P, R, method, out)
