"""Anatomy evidence: agreement of the low spatial frequencies, discounting texture (issue 13).

A generator can copy a training patient's anatomy (body outline, lungs, mediastinum, large vessels) and
re-synthesise the texture on top: its output is then the member's low-pass image plus another patient's
high frequencies.  Pixel NCC / SSIM / MSE on the full band are dominated by that foreign texture, so such a
copy matches its member hardly better than a look-alike patient does (benchmarks/RESULTS.md, branch reg4:
8 of 40 true copies registered below a look-alike).  Here both images are Gaussian low-passed first and
compared by Pearson correlation (NCC), which removes the texture and keeps the anatomy.

Scale (a priori, not fitted): latent generators (VAE / latent diffusion) work on a grid 8x smaller than the
image, so what they can copy of a patient lies below that grid's Nyquist frequency, ``1 / 16`` cycles per
pixel at 128 px; texture above it is theirs.  The low-pass is a Gaussian of sigma = half the latent cell,
``side / 32`` (4 px at 128 px; its transfer is 0.29 at ``1 / 16`` cycles/px and 0.007 at ``1 / 8``), and the
low-passed image is sampled every ``sigma`` pixels (32 x 32 values at any size; the aliasing left is < 1%).

The evidence is a ratio like the other ``*_ratio`` columns: the best low-pass NCC with a generated image
over the best with another real image (the control), each searched exhaustively (exact k-NN, or the
recall-calibrated index of :mod:`engine.search` at scale) in place and mirrored:

    anat_ratio = -log((1 - ncc_G + 1e-3) / (1 - ncc_R + 1e-3))

Geometric transforms are the registration's job (``reg_*`` in :mod:`.register`); this channel covers
copies in place or mirrored.
"""

from __future__ import annotations

import functools

import numpy as np

#: Low-pass scale as a fraction of the image side (sigma = side / 32: 4 px at 128 px), see the module docstring.
SIGMA_FRACTION = 1.0 / 32.0
#: Floor of ``1 - ncc`` in the ratio (the same as the registered ratios').
_EPS_NCC = 1e-3


def lowpass_sigma(h: int, w: int) -> float:
    """Gaussian sigma (pixels) of the anatomy low-pass for ``h x w`` images: ``min(h, w) * SIGMA_FRACTION``."""
    return float(min(h, w) * SIGMA_FRACTION)


@functools.lru_cache(maxsize=8)
def _sampled_gaussian(h: int, w: int):
    """Row / column operators of the anatomy low-pass: ``K [n_out, n]`` with ``K @ v`` equal to
    ``scipy.ndimage.gaussian_filter1d(v, sigma, mode="nearest")[o::step]`` (float32)."""
    from scipy import ndimage as ndi

    s = lowpass_sigma(h, w)
    step = max(1, int(round(s)))
    o = step // 2
    out = []
    for m in (h, w):
        # column j of the filtered identity = the response to a unit impulse at j
        K = ndi.gaussian_filter1d(np.eye(m, dtype=np.float64), s, axis=0, mode="nearest")[o::step]
        out.append(np.ascontiguousarray(K, np.float32))
    return out[0], out[1]


def anatomy_features(images: np.ndarray, *, mirror: bool = False) -> np.ndarray:
    """Unit-norm, zero-mean low-pass images (the anatomy), for Pearson correlation by a dot product.

    Every image is Gaussian-filtered (sigma :func:`lowpass_sigma`, ``mode="nearest"``), sampled every
    ``step = max(1, round(sigma))`` pixels starting at ``step // 2``, centred and scaled to unit norm, so
    the dot product of two rows is the NCC of the two low-passed images on that grid.

    Parameters
    ----------
    images : uint8 or float [N, H, W]
    mirror : bool
        Features of the horizontally mirrored images (``x[:, :, ::-1]``).

    Returns
    -------
    float32 [N, ceil((H - step//2) / step) * ceil((W - step//2) / step)]
        A constant image (low-pass standard deviation < 1e-3 grey levels) gives a zero row.
    """
    x = np.asarray(images, np.float32)
    n, h, w = x.shape
    Kh, Kw = _sampled_gaussian(h, w)
    if mirror:
        Kw = Kw[:, ::-1]
    # separable filter and sampling as two matrix products per image (== gaussian_filter(...)[:, o::step, o::step]).
    # Stacked matmul runs one small GEMM per image, so an image's features do not depend on how many images share
    # the call (one GEMM over the whole batch did: float32 blocking changed the last bits with the batch size, and
    # streamed / chunked runs must write the same outputs as whole ones).
    low = Kh @ (x @ Kw.T)                                                # [n, h', w']
    f = low.reshape(n, -1).astype(np.float64)
    f -= f.mean(1, keepdims=True)
    nrm = np.linalg.norm(f, axis=1, keepdims=True)
    # a low-pass image whose standard deviation is below 1e-3 grey levels is constant (float32 rounding only)
    f = np.where(nrm > 1e-3 * np.sqrt(f.shape[1]), f / np.maximum(nrm, 1e-12), 0.0)
    return np.ascontiguousarray(f, np.float32)


def _best_ncc(base_chunks, queries: np.ndarray, *, exclude=None, executor=None):
    """Highest dot product of every query row with the base rows (searched by L2 on unit vectors, then
    recomputed by the caller); ``exclude`` [Q] = a base row never returned for that query (-1: none).
    Returns the index of the nearest base row, int64 [Q] (-1: none)."""
    from .evidence import _knn, _merge_topk

    Q = len(queries)
    k = 2 if exclude is not None else 1
    bd = bi = None
    for c0, fb in base_chunks:
        d, i = _knn(fb, queries, min(k, len(fb)), executor=executor)
        bd, bi = _merge_topk(bd, bi, d, np.where(i >= 0, i + c0, -1), k)
    best = np.full(Q, -1, np.int64)
    if bi is not None:
        cand = bi.copy()
        if exclude is not None:
            cand[cand == np.asarray(exclude)[:, None]] = -1
        first = np.argmax(cand >= 0, axis=1)
        best = np.where((cand >= 0).any(1), cand[np.arange(Q), first], -1)
    return best


def anatomy_evidence(G: np.ndarray, P: np.ndarray, *, chunk: int = 4096, executor=None) -> dict:
    """Anatomy (low-pass) evidence of every pool image against the generated images.

    Parameters
    ----------
    G : uint8 [M, H, W]   generated images (may be memory-mapped; processed in chunks of ``chunk``)
    P : uint8 [N, H, W]   the real pool (candidates and reference), ``N >= 2``
    chunk : int           generated images per chunk
    executor : Executor or None   where the k-NN searches run (default local)

    Returns
    -------
    dict[str, float64 [N]]
        ``anat_ratio`` (see the module docstring), ``anat_ncc`` (best low-pass NCC with a generated image,
        in place or mirrored), ``anat_real_ncc`` (the same with another pool image), ``anat_match`` (index
        into ``G`` of the best generated image) and ``anat_flip`` (1 where the mirrored pool image matched).
    """
    n = len(P)
    fP = anatomy_features(P)
    fPm = anatomy_features(P, mirror=True)
    q = np.concatenate([fP, fPm])                                  # [2N, D]: in place, then mirrored

    def gen_chunks():
        for c0 in range(0, len(G), chunk):
            yield c0, anatomy_features(np.asarray(G[c0:c0 + chunk]))

    ig = _best_ncc(gen_chunks(), q, executor=executor)
    self_ = np.r_[np.arange(n), np.arange(n)]
    ir = _best_ncc(iter([(0, fP)]), q, exclude=self_, executor=executor)

    def ncc_of(idx, base_fn):
        out = np.full(2 * n, -1.0)
        ok = idx >= 0
        if ok.any():
            rows = np.flatnonzero(ok)
            uniq, inv = np.unique(idx[ok], return_inverse=True)
            fb = base_fn(uniq)
            out[rows] = np.einsum("ij,ij->i", q[rows].astype(np.float64), fb[inv].astype(np.float64))
        return out

    def gen_features(u):   # the matched generated images, in blocks (bounded memory for a large pool)
        return np.concatenate([anatomy_features(np.asarray(G[u[b:b + chunk]])) for b in range(0, len(u), chunk)])

    ncc_g2 = ncc_of(ig, gen_features)
    ncc_r2 = ncc_of(ir, lambda u: fP[u])
    flip = (ncc_g2[n:] > ncc_g2[:n]).astype(np.int64)
    ncc_g = np.maximum(ncc_g2[:n], ncc_g2[n:])
    ncc_r = np.maximum(ncc_r2[:n], ncc_r2[n:])
    match = np.where(flip == 1, ig[n:], ig[:n])
    ratio = -np.log((np.clip(1.0 - ncc_g, 0, None) + _EPS_NCC) / (np.clip(1.0 - ncc_r, 0, None) + _EPS_NCC))
    return {"anat_ratio": ratio, "anat_ncc": ncc_g, "anat_real_ncc": ncc_r,
            "anat_match": match.astype(np.float64), "anat_flip": flip.astype(np.float64)}
