"""Release post-processing: simulate it (JPEG re-encoding, resampling) and detect it per image.

Public data sets of synthetic images are rarely published as the generator wrote them: they are re-saved
as JPEG or resized for a viewer.  Attribution must not cluster by that history (see
:class:`engine.features.NuisanceProjection`), and an audit should say which processing it saw.

Simulation (used to *learn* what processing does to the features, never on the user's outputs)
    :func:`jpeg_roundtrip`, :func:`resize_roundtrip` and :func:`augment` (a seeded random mixture of
    JPEG quality 50-95, resampling by a factor 0.5-0.9 and back with a random Pillow filter, and both).

Detection
    * :func:`jpeg_quality_from_tables`: libjpeg/IJG quality (1-100) whose scaled standard luminance
      table best matches a JPEG file's own quantisation table (exact for files written by libjpeg,
      Pillow, OpenCV, ImageMagick; an estimate for other encoders).
    * :func:`jpeg_ghost`: JPEG traces in images that no longer are JPEG files (a PNG saved from a decoded
      JPEG).  A pixel-domain 8x8 blockiness ratio was tried first and rejected: on the dev corpus it
      overlapped completely between untouched and quality-70..95 images (generators have periodic
      textures of their own); the ghost separates them (see :data:`GHOST_THRESHOLD`).
    * :func:`detect`: both, per image, with one tag: ``jpeg`` or ``none``.
    * :func:`detect_resampling`: a resize history (down by a factor and back), judged *within a group of images
      of one model* (an attribution cluster).  Per image, over all generators, it cannot be told: a band-limit
      ratio, the periodicity of the second derivative (Gallagher 2005) and a re-resampling "ghost" all overlapped
      between untouched images of some dev generators (which up-sample natively) and resized images of others.
      Within one model the generator's own band limit is shared by all its images, so an image whose energy
      near the Nyquist frequency falls far below its cluster's (robust z-score, :data:`RESAMPLE_Z`) was resized
      after generation.  Power is partial (see benchmarks/RESULTS.md); a cluster whose images were *all*
      resized the same way has nothing to compare with and shows none.
      Attribution does not rely on detection: it discounts processing whether or not it was detected
      (:class:`engine.features.NuisanceProjection`).
    * :func:`resampling_periodicity` (issue 19, second round), also used by :func:`detect_resampling`: the periodic
      interpolation traces an up-sampling leaves (Popescu & Farid 2005; Kirchner 2008's fixed linear predictor and
      p-map), as a peak of the p-map's row/column-mean spectrum above its group's median spectrum.  A generator's own
      periodic traces are shared by its images and cancel.  It finds moderate factors (0.6-0.9) with bilinear or
      bicubic filters, which the band-limit z misses; factor 0.5 (a half-pixel symmetric pattern) stays with the
      band-limit z.
    * :func:`resampling_against` (issue 19, seventh round): the same question for a cluster *pair* that may be one
      model split by its release history, where half the group may be resized (the group-median detectors above then
      see 0-5 %): every image is judged against the other cluster (the one with more high-frequency energy) by the
      drop of its high band (0.6-1.0 of Nyquist) relative to its low band (0.1-0.4), block medians over the 2-D
      spectrum, so a trace at one frequency (a checkerboard) does not count.  Used by the attribution floor waiver.
    * :func:`duplicate_lines` (issue 19, eighth round), also used by :func:`resampling_against`: adjacent rows and
      columns that are exact copies.  Pillow's area (box) filter up-samples like nearest neighbour, so a box resize by
      0.75-0.9 and back keeps much of the high band (the spectral tests miss it) but repeats about (1 - f) of the lines;
      untouched, JPEG'd, checkerboard and noisy images of every dev set have none.  :func:`resampling_features` gives
      the per-image inputs of these detectors once, for many groups of the same images.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = [
    "GHOST_THRESHOLD",
    "RESAMPLE_FILTERS",
    "ALL_RESAMPLE_FILTERS",
    "RESAMPLE_Z",
    "PERIODIC_ALPHA",
    "augment",
    "band_limit_score",
    "detect",
    "detect_resampling",
    "detect_resampling_kinds",
    "duplicate_lines",
    "resampling_against",
    "resampling_features",
    "periodic_threshold",
    "pmap_spectrum",
    "resampling_periodicity",
    "jpeg_ghost",
    "jpeg_quality_from_tables",
    "jpeg_roundtrip",
    "resize_roundtrip",
]

#: Pillow filters drawn by :func:`augment` (a public release may use any of them).
RESAMPLE_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
#: Every Pillow resampling filter (issue 19, branch attr16): :func:`augment` draws from these when asked with
#: ``filters=ALL_RESAMPLE_FILTERS`` (a release may use nearest or hamming, which :data:`RESAMPLE_FILTERS` lacks).
ALL_RESAMPLE_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
#: :func:`jpeg_ghost` above this flags an image as JPEG-decoded.  On dev (in-sample) untouched generated
#: images scored at most 0.12 and JPEG quality 50-95 at least 1.2; the threshold sits between.
GHOST_THRESHOLD = 0.5
#: Qualities :func:`jpeg_ghost` re-encodes at, and the side of the central crop it analyses.
GHOST_QUALITIES = (50, 60, 70, 75, 80, 85, 88, 90, 92, 93, 94, 95, 96, 97)
GHOST_CROP = 64

# IJG (libjpeg) standard luminance quantisation table, natural (row-major) order, quality 50.
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
], dtype=np.float64)


def jpeg_roundtrip(image, quality):
    """Encode one uint8 ``[H,W]`` image as a baseline JPEG at ``quality`` (Pillow/libjpeg) and decode it.

    Returns
    -------
    uint8 ndarray [H,W]
    """
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


def resize_roundtrip(image, factor, resample="bicubic"):
    """Resize one uint8 ``[H,W]`` image by ``factor`` (< 1: down) and back to ``[H,W]`` with one Pillow filter.

    Returns
    -------
    uint8 ndarray [H,W]
    """
    a = np.asarray(image, np.uint8)
    h, w = a.shape
    f = RESAMPLE_FILTERS[resample] if isinstance(resample, str) else resample
    small = (max(4, int(round(w * factor))), max(4, int(round(h * factor))))
    im = Image.fromarray(a).resize(small, f)
    return np.asarray(im.resize((w, h), f), dtype=np.uint8)


def augment(images, seed=0, *, quality=(50, 95), factor=(0.5, 0.9), filters=None):
    """Apply one random release-style processing to each image (seeded, deterministic).

    Each image gets, with equal probability, a JPEG round trip (quality uniform in ``quality``), a resize
    round trip (factor uniform in ``factor``, filter drawn from ``filters``, default :data:`RESAMPLE_FILTERS`) or
    the resize followed by the JPEG.

    Parameters
    ----------
    images : uint8 ndarray [N,H,W]
    seed : int
    filters : dict of str -> Pillow filter, optional
        Filters drawn from (default :data:`RESAMPLE_FILTERS`; :data:`ALL_RESAMPLE_FILTERS` for every Pillow one).

    Returns
    -------
    uint8 ndarray [N,H,W]
    """
    rng = np.random.default_rng(seed)
    table = RESAMPLE_FILTERS if filters is None else filters
    names = list(table)
    out = np.empty_like(np.asarray(images, np.uint8))
    for i, a in enumerate(images):
        kind = rng.integers(3)
        q = int(rng.integers(quality[0], quality[1] + 1))
        f = float(rng.uniform(*factor))
        filt = names[int(rng.integers(len(names)))]
        if kind == 0:
            out[i] = jpeg_roundtrip(a, q)
        elif kind == 1:
            out[i] = resize_roundtrip(a, f, table[filt])
        else:
            out[i] = jpeg_roundtrip(resize_roundtrip(a, f, table[filt]), q)
    return out


def jpeg_quality_from_tables(quantization):
    """Estimate the IJG quality (1-100) of a JPEG from its luminance quantisation table.

    Parameters
    ----------
    quantization : dict or sequence
        ``PIL.JpegImagePlugin.JpegImageFile.quantization`` (table id -> 64 values; table 0 is luminance),
        or the 64 values of the luminance table itself.  Pillow gives them in natural (row-major) order.

    Returns
    -------
    int or None
        The quality whose IJG-scaled standard table is closest (L1) to the file's; None without a table.
    """
    if quantization is None:
        return None
    t = quantization.get(0) if isinstance(quantization, dict) else quantization
    if t is None or len(t) != 64:
        return None
    t = np.asarray(list(t), dtype=np.float64)
    qs = np.arange(1, 101)
    scale = np.where(qs < 50, 5000.0 / qs, 200.0 - 2.0 * qs)
    tabs = np.clip(np.floor((_STD_LUMA[None, :] * scale[:, None] + 50.0) / 100.0), 1, 255)
    err = np.abs(tabs - t[None, :]).sum(axis=1)
    return int(qs[int(np.argmin(err))])


def jpeg_ghost(images, qualities=GHOST_QUALITIES, crop=GHOST_CROP):
    """JPEG "ghost" score of each image (Farid 2009): JPEG traces in images that are no longer JPEG files.

    A decoded JPEG re-encoded at its own quality on its own 8x8 grid barely changes; shifted by 4 pixels off
    the grid it changes as much as a never-compressed image does.  For each quality ``q`` the mean squared
    change of a central crop re-encoded on the grid (``d_on``) and 4 pixels off it (``d_off``) is measured;
    the score is ``max_q log((d_off + 0.05) / (d_on + 0.05))`` (about 0 when untouched) and the quality at
    the maximum estimates the earlier JPEG quality (on the ``qualities`` grid).

    Parameters
    ----------
    images : uint8 ndarray [N,H,W] or [H,W] (H, W >= 24)
    qualities : sequence of int
        Re-encoding qualities tried.
    crop : int
        Side of the central crop analysed (rounded down to a multiple of 8; the whole image if smaller).

    Returns
    -------
    score : float64 ndarray [N]
    quality : int64 ndarray [N]
        Quality at the maximum (meaningful only where the score flags a JPEG).
    """
    a = np.asarray(images, np.uint8)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or min(a.shape[1:]) < 24:
        raise ValueError(f"images must have shape [N,H,W] with H, W >= 24, got {a.shape}")
    n, h, w = a.shape
    c = max(16, (min(crop, h - 4, w - 4) // 8) * 8)
    y0, x0 = ((h - 4 - c) // 16) * 8, ((w - 4 - c) // 16) * 8  # on the 8x8 grid of the full image
    score = np.zeros(n)
    qbest = np.zeros(n, np.int64)
    # Baseline JPEG codes every 8x8 block on its own, so a row of crops (each a multiple of 8 wide) is encoded
    # in one call with exactly the result of one call per crop, and much faster.
    per = 256
    for s in range(0, n, per):
        e = min(n, s + per)
        on = np.ascontiguousarray(a[s:e, y0:y0 + c, x0:x0 + c].transpose(1, 0, 2).reshape(c, -1))
        off = np.ascontiguousarray(a[s:e, y0 + 4:y0 + 4 + c, x0 + 4:x0 + 4 + c].transpose(1, 0, 2).reshape(c, -1))
        best = np.full(e - s, -np.inf)
        bq = np.full(e - s, int(qualities[0]), np.int64)
        for q in qualities:
            d_on = ((on.astype(np.float64) - jpeg_roundtrip(on, q)) ** 2).reshape(c, e - s, c).mean(axis=(0, 2))
            d_off = ((off.astype(np.float64) - jpeg_roundtrip(off, q)) ** 2).reshape(c, e - s, c).mean(axis=(0, 2))
            r = np.log((d_off + 0.05) / (d_on + 0.05))
            better = r > best
            best[better], bq[better] = r[better], int(q)
        score[s:e], qbest[s:e] = best, bq
    return score, qbest


def detect(images, jpeg_quality=None):
    """Detected processing of each image.

    Parameters
    ----------
    images : uint8 ndarray [N,H,W]
        Decoded images (at the size they were analysed).
    jpeg_quality : sequence of (int or None), length N, optional
        Quality read from each file's quantisation table (:func:`jpeg_quality_from_tables`); None for a file
        that is not a JPEG.  A JPEG file is always tagged ``jpeg`` with its table's quality.

    Returns
    -------
    dict of str -> list, each of length N
        ``jpeg_ghost`` (float, :func:`jpeg_ghost`), ``jpeg`` (bool: a JPEG file, or a ghost score above
        :data:`GHOST_THRESHOLD`), ``jpeg_quality`` (int: the file's table quality, else the ghost estimate for
        a flagged image, else None), ``jpeg_source`` (``file`` / ``pixels`` / ``""``) and ``processing``
        (``jpeg`` or ``none``).  Resampling is not detected (see the module notes).
    """
    a = np.asarray(images)
    n = a.shape[0]
    jq = list(jpeg_quality) if jpeg_quality is not None else [None] * n
    if len(jq) != n:
        raise ValueError(f"jpeg_quality has {len(jq)} entries for {n} images")
    if n and min(a.shape[1:]) >= 24:
        g, gq = jpeg_ghost(a)
    else:
        g, gq = np.zeros(n), np.zeros(n, np.int64)
    is_jpeg, qual, src = [], [], []
    for q, v, vq in zip(jq, g, gq):
        if q is not None:
            is_jpeg.append(True), qual.append(int(q)), src.append("file")
        elif v > GHOST_THRESHOLD:
            is_jpeg.append(True), qual.append(int(vq)), src.append("pixels")
        else:
            is_jpeg.append(False), qual.append(None), src.append("")
    return {
        "jpeg_ghost": [round(float(v), 4) for v in g],
        "jpeg": is_jpeg,
        "jpeg_quality": qual,
        "jpeg_source": src,
        "processing": ["jpeg" if j else "none" for j in is_jpeg],
    }


#: :func:`detect_resampling` flags an image whose :func:`band_limit_score` is more than this many robust standard
#: deviations (1.4826 MAD) above its group's median.  Chosen on dev (in-sample): untouched images of model_1..3,
#: gen_e and real images in groups with 40 % resized images: 0-2 % flagged at 3.5.
RESAMPLE_Z = 3.5
#: Groups smaller than this are not judged (the median and MAD of fewer images are too noisy).
RESAMPLE_MIN_GROUP = 10


def band_limit_score(images):
    """How far each image's spectrum falls near the Nyquist frequency (a resize round trip band-limits it).

    The Hann-windowed power spectrum is averaged over square rings (``max(|fx|, |fy|)``: resizing band-limits
    each axis), and the score is the mean log10 power at 0.3-0.5 of the Nyquist frequency minus the mean log10
    power above 0.9 of it.

    Parameters
    ----------
    images : uint8 ndarray [N,H,W]

    Returns
    -------
    float64 ndarray [N]
        Larger means more band-limited.
    """
    a = np.asarray(images)
    if a.ndim == 2:
        a = a[None]
    n, h, w = a.shape
    nb = 32
    win = np.outer(np.hanning(h), np.hanning(w))
    fy = np.abs(np.fft.fftfreq(h))[:, None] * 2.0
    fx = np.abs(np.fft.fftfreq(w))[None, :] * 2.0
    ring = np.minimum((np.maximum(fy, fx) * nb).astype(np.int64), nb - 1).ravel()
    cnt = np.maximum(np.bincount(ring, minlength=nb), 1)
    mid = slice(int(0.3 * nb), int(0.5 * nb))
    high = slice(int(0.9 * nb), nb)
    out = np.empty(n)
    for s in range(0, n, 256):  # blocks: bounded memory for large sets
        x = a[s:s + 256].astype(np.float64)
        x -= x.mean(axis=(1, 2), keepdims=True)
        p = np.abs(np.fft.fft2(x * win)) ** 2
        prof = np.stack([np.bincount(ring, weights=q.ravel(), minlength=nb) for q in p]) / cnt
        lp = np.log10(prof + 1e-3)
        out[s:s + 256] = lp[:, mid].mean(axis=1) - lp[:, high].mean(axis=1)
    return out


#: Kirchner's (2008) fixed linear predictor: an interpolated pixel is predicted by its neighbours far better than a
#: recorded one, and on the grid an up-sampling by p/q makes that happen periodically.
_PREDICTOR = np.array([[-0.25, 0.5, -0.25], [0.5, 0.0, 0.5], [-0.25, 0.5, -0.25]])
#: Scale (grey levels) of the p-map ``exp(-e^2 / (2 s^2))`` of the predictor error ``e``.
PMAP_SIGMA = 1.0
#: Frequencies below this (cycles per pixel) are left out of the periodicity test: content dominates there.
PERIODIC_MIN_FREQ = 0.05
#: Nominal false-alarm rate per untouched image of :func:`resampling_periodicity` under its exponential null (see
#: there).  Real p-map spectra have heavier tails than that null: on dev images (in-sample) the measured false-alarm
#: rate was 8 % at a nominal 1e-2, 2.3 % at 1e-4 and 1.1 % at 1e-6, so 1e-6 was chosen there (benchmarks/RESULTS.md).
#: Synthetic images that follow the null meet the nominal rate (tests/test_processing_resampling.py).
PERIODIC_ALPHA = 1e-6


def pmap_spectrum(images, sigma=PMAP_SIGMA):
    """Log power spectrum of the p-map periodicity of each image (Popescu & Farid 2005; Kirchner 2008).

    The error ``e`` of :data:`_PREDICTOR` gives the p-map ``p = exp(-e^2 / (2 sigma^2))`` (near 1 where a pixel is
    a linear mix of its neighbours, as interpolated pixels are).  Resampling on a regular grid makes ``p``
    periodic along both axes with the same phase in every row, so the p-map is averaged over rows (and over
    columns), Hann-windowed, and the two 1-D power spectra are combined by their geometric mean.

    Parameters
    ----------
    images : uint8 ndarray [N,H,W] (H, W >= 16)
    sigma : float

    Returns
    -------
    logp : float64 ndarray [N, B]
        Natural-log power at the frequencies ``freqs``.
    freqs : float64 ndarray [B]
        Cycles per pixel, ``PERIODIC_MIN_FREQ`` to 0.5 (the side used is ``min(H, W) - 4``).
    """
    from scipy.ndimage import correlate

    a = np.asarray(images)
    if a.ndim == 2:
        a = a[None]
    n, h, w = a.shape
    m = min(h, w) - 4
    if m < 12:
        raise ValueError(f"images must be at least 16x16 for the p-map spectrum, got {a.shape}")
    y0, x0 = (h - m) // 2, (w - m) // 2
    win = np.hanning(m)
    freqs = np.fft.rfftfreq(m)
    keep = freqs >= PERIODIC_MIN_FREQ
    out = np.empty((n, int(keep.sum())))
    for i in range(n):
        x = a[i].astype(np.float64)
        e = (x - correlate(x, _PREDICTOR, mode="reflect"))[y0:y0 + m, x0:x0 + m]
        p = np.exp(-e * e / (2.0 * sigma * sigma))
        px, py = p.mean(axis=0), p.mean(axis=1)
        sx = np.abs(np.fft.rfft((px - px.mean()) * win)) ** 2
        sy = np.abs(np.fft.rfft((py - py.mean()) * win)) ** 2
        out[i] = 0.5 * (np.log(sx[keep] + 1e-18) + np.log(sy[keep] + 1e-18))
    return out, freqs[keep]


def _logprod_exp_sf(y):
    """P(Y > y) for ``Y = (log E1 + log E2) / 2``, E1, E2 independent unit exponentials: P(E1 E2 > u) = 2 sqrt(u)
    K1(2 sqrt(u)) with u = exp(2 y)."""
    from scipy.special import k1

    r = np.sqrt(np.exp(2.0 * np.asarray(y, np.float64)))
    return np.where(r > 0, 2.0 * r * k1(2.0 * r), 1.0)


def _logprod_exp_constants():
    """Median and MAD of ``Y`` (:func:`_logprod_exp_sf`), exact by root finding."""
    from scipy.optimize import brentq

    med = brentq(lambda y: _logprod_exp_sf(y) - 0.5, -20, 20)
    mad = brentq(lambda d: (_logprod_exp_sf(med - d) - _logprod_exp_sf(med + d)) - 0.5, 1e-9, 20)
    return float(med), float(mad)


def periodic_threshold(alpha, n_freq):
    """Threshold, in MADs of ``Y`` above its median, that the largest of ``n_freq`` independent ``Y`` exceeds with
    probability ``alpha`` (``Y`` as in :func:`_logprod_exp_sf`)."""
    from scipy.optimize import brentq

    med, mad = _logprod_exp_constants()
    p1 = 1.0 - (1.0 - alpha) ** (1.0 / n_freq)  # per-frequency tail
    y = brentq(lambda v: _logprod_exp_sf(v) - p1, med, 50)
    return (y - med) / mad


def resampling_periodicity(images, groups, alpha=PERIODIC_ALPHA, min_group=RESAMPLE_MIN_GROUP):
    """Periodic interpolation traces (a resize after generation), judged against the image's group.

    Each image's :func:`pmap_spectrum` minus its group's median spectrum (frequency by frequency: a generator's own
    up-sampling peaks are shared by all its images and cancel) is centred on its own median over frequencies.
    Under the null (no resampling) each periodogram value is the group's spectral shape times the product of two
    independent exponentials' square root (x and y profiles), so the deviations are i.i.d. ``Y`` up to a scale,
    estimated as the MAD of all the group's deviations (robust to the few peaks).  An image is flagged when its
    largest deviation exceeds :func:`periodic_threshold` for ``alpha`` over its frequencies: under the null the
    false-alarm rate per untouched image is ``alpha`` (simulated in tests/test_processing_resampling.py; measured
    on dev images in benchmarks/RESULTS.md).

    Parameters
    ----------
    images : uint8 ndarray [N,H,W]
    groups : int ndarray [N]
        Group (attribution cluster) of each image.
    alpha : float
        False-alarm rate per untouched image under the null.
    min_group : int
        Groups with fewer images are not judged.

    Returns
    -------
    flag : bool ndarray [N]
    score : float64 ndarray [N]
        Largest deviation in units of the threshold (> 1 flags); NaN in groups too small to judge.
    peak_freq : float64 ndarray [N]
        Frequency (cycles per pixel) of the largest deviation.
    """
    L, freqs = pmap_spectrum(images)
    return _periodicity_from(L, freqs, groups, alpha, min_group)


def _periodicity_from(L, freqs, groups, alpha=PERIODIC_ALPHA, min_group=RESAMPLE_MIN_GROUP):
    """:func:`resampling_periodicity` from the images' :func:`pmap_spectrum` ``L`` [N, B] and ``freqs`` [B]."""
    g = np.asarray(groups)
    if g.shape != (L.shape[0],):
        raise ValueError(f"groups has shape {g.shape} for {L.shape[0]} images")
    thr = periodic_threshold(alpha, L.shape[1])
    score = np.full(L.shape[0], np.nan)
    peak = np.full(L.shape[0], np.nan)
    for c in np.unique(g):
        sel = np.flatnonzero(g == c)
        if sel.size < min_group:
            continue
        R = L[sel] - np.median(L[sel], axis=0)
        R -= np.median(R, axis=1, keepdims=True)
        mad_r = float(np.median(np.abs(R - np.median(R))))  # = s * MAD(Y) under the null, s the group's scale
        score[sel] = R.max(axis=1) / (max(mad_r, 1e-9) * thr)
        peak[sel] = freqs[R.argmax(axis=1)]
    return np.nan_to_num(score, nan=-np.inf) > 1.0, score, peak


def detect_resampling(images, groups, z=RESAMPLE_Z, min_group=RESAMPLE_MIN_GROUP, periodic=True):
    """Resize history of each image, judged against the other images of its group (one model's images).

    Parameters
    ----------
    images : uint8 ndarray [N,H,W]
    groups : int ndarray [N]
        Group of each image (attribution clusters).
    z : float
        Robust z-score of :func:`band_limit_score` within the group above which an image is flagged.
    min_group : int
        Groups with fewer images are not judged (nothing flagged there).
    periodic : bool
        Also flag the images :func:`resampling_periodicity` finds (periodic interpolation traces, at its
        :data:`PERIODIC_ALPHA`).  The band-limit z finds strong down-sampling (factor 0.5) and Lanczos, the
        periodicity test moderate factors with bilinear / bicubic interpolation (benchmarks/RESULTS.md).

    Returns
    -------
    resized : bool ndarray [N]
        Band-limit z above ``z``, or (with ``periodic``) periodic traces.
    score : float64 ndarray [N]
        The band-limit robust z-score (NaN in groups too small to judge).
    """
    a = np.asarray(images)
    s = band_limit_score(a)
    pm = pmap_spectrum(a) if periodic and min(a.shape[-2:]) >= 16 else None
    return _detect_resampling_from(s, pm, groups, z, min_group)


def _detect_resampling_from(s, pm, groups, z=RESAMPLE_Z, min_group=RESAMPLE_MIN_GROUP):
    """:func:`detect_resampling` from the images' :func:`band_limit_score` ``s`` [N] and their :func:`pmap_spectrum`
    ``pm`` (``(L [N, B], freqs [B])``, or None: no periodicity test)."""
    g = np.asarray(groups)
    if g.shape != s.shape:
        raise ValueError(f"groups has shape {g.shape} for {s.size} images")
    zs = np.full(s.size, np.nan)
    for c in np.unique(g):
        sel = g == c
        if sel.sum() < min_group:
            continue
        med = np.median(s[sel])
        mad = 1.4826 * np.median(np.abs(s[sel] - med))
        zs[sel] = (s[sel] - med) / max(mad, 1e-6)
    flag = np.nan_to_num(zs, nan=-np.inf) > z
    if pm is not None:
        flag |= _periodicity_from(pm[0], pm[1], g, min_group=min_group)[0]
    return flag, zs


#: :func:`resampling_against` flags an image whose high-band deficit is more than this many robust standard deviations
#: (1.4826 MAD) above the reference images' own deficits.  A priori (as :data:`RESAMPLE_Z`), not tuned on dev.
AGAINST_Z = 3.5
#: Bands of :func:`resampling_against`, in units of the Nyquist frequency on the square rings ``max(|fx|, |fy|)``:
#: the low band a resize by 0.5-0.9 keeps, and the high band it cuts.
AGAINST_LOW = (0.1, 0.4)
AGAINST_HIGH = (0.6, 1.0)
#: Side of the 2-D frequency blocks (in FFT bins) whose log powers are compared.
AGAINST_BLOCK = 4


def _block_log_spectra(images, block=AGAINST_BLOCK):
    """Log10 Hann-windowed power of each image on ``block`` x ``block`` blocks of the folded frequency quadrant.

    Returns ``(L [N, B] float64, fmax [B] float64)``: the blocks' mean log power and the square-ring frequency
    ``max(|fx|, |fy|)`` of their centres in units of the Nyquist frequency (the DC block is left out)."""
    a = np.asarray(images)
    if a.ndim == 2:
        a = a[None]
    n, h, w = a.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    fy = np.abs(np.fft.fftfreq(h)) * 2.0
    fx = np.abs(np.fft.fftfreq(w)) * 2.0
    by = np.minimum((fy * (h // 2) / block).astype(np.int64), max(1, (h // 2) // block) - 1)
    bx = np.minimum((fx * (w // 2) / block).astype(np.int64), max(1, (w // 2) // block) - 1)
    nbx = int(bx.max()) + 1
    idx = (by[:, None] * nbx + bx[None, :]).ravel()
    nb = int(idx.max()) + 1
    cnt = np.maximum(np.bincount(idx, minlength=nb), 1)
    cy = np.bincount(idx, weights=np.broadcast_to(fy[:, None], (h, w)).ravel(), minlength=nb) / cnt
    cx = np.bincount(idx, weights=np.broadcast_to(fx[None, :], (h, w)).ravel(), minlength=nb) / cnt
    fmax = np.maximum(cy, cx)
    out = np.empty((n, nb))
    for s in range(0, n, 256):
        x = a[s:s + 256].astype(np.float64)
        x -= x.mean(axis=(1, 2), keepdims=True)
        p = np.log10(np.abs(np.fft.fft2(x * win)) ** 2 + 1e-3)
        out[s:s + 256] = np.stack([np.bincount(idx, weights=q.ravel(), minlength=nb) for q in p]) / cnt
    keep = np.arange(nb) != idx[0]
    return out[:, keep], fmax[keep]


#: :func:`duplicate_lines`: a row or column counts as a copy of its neighbour when every pixel differs by at most this
#: (grey levels; nearest-neighbour up-sampling copies exactly) ...
DUP_TOL = 0
#: ... and both lines span at least this many grey levels (flat background lines are equal in any image).
DUP_MIN_RANGE = 8
#: :func:`resampling_against` also flags an image with at least this many more duplicated lines than the reference's
#: median (issue 19, eighth round).  A priori: an area (box) or nearest-neighbour resize by a factor f and back copies
#: about (1 - f) of the lines of each axis, 26 of 2 x 127 at f = 0.9 on 128 px, 6 at f = 0.98; untouched,
#: JPEG'd, checkerboard and noise images of every dev set have none (benchmarks/RESULTS.md, eighth round).
DUP_MIN = 4


def duplicate_lines(images, tol=DUP_TOL, min_range=DUP_MIN_RANGE):
    """Number of adjacent rows and columns of each image that are copies of each other (nearest-neighbour traces).

    Pillow's area (``BOX``) filter up-samples like nearest neighbour: resizing by a factor f < 1 and back with it
    repeats about (1 - f) of the rows and of the columns exactly, at a non-integer period.  The high band of such an
    image keeps much of its energy (the copies are steps), so the spectral tests miss factors 0.75-0.9; copied lines
    do not occur in a generator's output or a camera's (two lines of 128 noisy pixels that agree to the grey level).

    Parameters
    ----------
    images : uint8 ndarray [N,H,W]
    tol : int
        Largest absolute difference of two lines counted as copies.
    min_range : int
        Lines spanning fewer grey levels (flat background) are not counted.

    Returns
    -------
    int64 ndarray [N]
        Copied adjacent pairs, rows and columns together.
    """
    a = np.asarray(images)
    if a.ndim == 2:
        a = a[None]
    n = a.shape[0]
    out = np.zeros(n, np.int64)
    for s in range(0, n, 256):
        x = a[s:s + 256].astype(np.int16)
        for ax in (1, 2):  # ax: the axis along a line (1: columns are the lines, compared across axis 2)
            other = 3 - ax
            if x.shape[other] < 2:
                continue
            d = np.abs(np.diff(x, axis=other)).max(axis=ax)
            rng = x.max(axis=ax) - x.min(axis=ax)
            has = np.minimum(rng[:, :-1], rng[:, 1:]) >= min_range
            out[s:s + 256] += ((d <= tol) & has).sum(axis=1)
    return out


def resampling_features(images):
    """Per-image inputs of :func:`detect_resampling` and :func:`resampling_against`, computed once and reusable for
    any group of these images (the attribution floor waiver judges many cluster pairs of the same images).

    Parameters
    ----------
    images : uint8 ndarray [N,H,W]

    Returns
    -------
    dict
        ``band`` float64 [N] (:func:`band_limit_score`), ``pmap`` float64 [N, B] and ``pmap_freqs`` [B]
        (:func:`pmap_spectrum`; None for images under 16 px), ``blocks`` float64 [N, B2] and ``blocks_fmax`` [B2]
        (the block log spectra of :func:`resampling_against`; None for images under 32 px) and ``dup`` int64 [N]
        (:func:`duplicate_lines`).
    """
    a = np.asarray(images)
    small = a.ndim != 3 or min(a.shape[1:]) < 4 * AGAINST_BLOCK * 2
    pm = pmap_spectrum(a) if a.ndim == 3 and min(a.shape[1:]) >= 16 else (None, None)
    bl = (None, None) if small else _block_log_spectra(a)
    return {"band": band_limit_score(a), "pmap": pm[0], "pmap_freqs": pm[1], "blocks": bl[0], "blocks_fmax": bl[1],
            "dup": duplicate_lines(a)}


def detect_resampling_kinds(images, groups, z=RESAMPLE_Z, min_group=RESAMPLE_MIN_GROUP):
    """Resize history of each image, by the evidence that found it (the per-cluster report, issue 19 deliverable 3).

    Three detectors, kept apart so a report can say which one saw what:

    * ``copied``: per image, on its own: at least :data:`DUP_MIN` copied adjacent lines (:func:`duplicate_lines`).
      Needs no group, so a cluster whose images were *all* box- or nearest-resized is seen (untouched, JPEG'd,
      checkerboard and noise images of every dev set have none: benchmarks/RESULTS.md, eighth round).
    * ``band_limit``: the band-limit robust z within the image's group (as :func:`detect_resampling`).
    * ``periodic``: periodic interpolation traces above the group's median spectrum (:func:`resampling_periodicity`).

    The last two compare an image with its group, so a group resized as a whole with a smooth filter (bilinear,
    bicubic, Lanczos) shows nothing there; only copied lines are seen in such a group.

    Parameters
    ----------
    images : uint8 ndarray [N,H,W]
    groups : int ndarray [N]
    z, min_group : as :func:`detect_resampling`

    Returns
    -------
    dict of str -> ndarray [N]
        ``copied``, ``band_limit``, ``periodic``, ``resized`` (any of the three) bool; ``copied_lines`` int64 (the
        count); ``band_z`` float64 (NaN in groups under ``min_group``).
    """
    a = np.asarray(images)
    g = np.asarray(groups)
    n = a.shape[0] if a.ndim == 3 else 0
    if g.shape != (n,):
        raise ValueError(f"groups has shape {g.shape} for {n} images")
    dup = duplicate_lines(a) if n else np.zeros(0, np.int64)
    band, bz = _detect_resampling_from(band_limit_score(a), None, g, z, min_group) if n else (np.zeros(0, bool),
                                                                                            np.zeros(0))
    if n and min(a.shape[1:]) >= 16:
        per = _periodicity_from(*pmap_spectrum(a), g, min_group=min_group)[0]
    else:
        per = np.zeros(n, bool)
    copied = dup >= DUP_MIN
    return {"copied": copied, "band_limit": band, "periodic": per, "resized": copied | band | per,
            "copied_lines": dup, "band_z": bz}


def resampling_against(images, reference, z=AGAINST_Z, min_ref=RESAMPLE_MIN_GROUP, duplicates=True):
    """Resize history of each image judged against *reference* images of the same model that were not resized.

    Built for the floor waiver (issue 19, seventh round): when a pair of clusters might be one model split by its
    release history, the cluster with more high-frequency energy is the reference and every image of the pair is
    compared with it, so a history that covers half the pair (where :func:`detect_resampling`'s group median is half
    resized) is still seen.  Per image, the log power on 2-D frequency blocks minus the reference's median, frequency
    by frequency (the model's own spectral shape cancels); the *deficit* is the median of that difference over the
    blocks of the low band (:data:`AGAINST_LOW`, which a resize by 0.5-0.9 keeps) minus its median over the high band
    (:data:`AGAINST_HIGH`, which it cuts).  A resize lowers every high block; a trace at a few frequencies (a
    period-2 checkerboard: one block) moves the high band's *median* by nothing, so it is not flagged.  A flat added
    noise is: its deficit on a model whose own spectrum falls near the Nyquist frequency is the shape of a gentle
    low-pass (measured in benchmarks/RESULTS.md); a second-order statistic cannot tell the two apart.  The score is
    the robust z of the deficit against the reference images' own deficits (median, 1.4826 MAD).  Eighth round
    (``duplicates``): an image with :data:`DUP_MIN` more copied adjacent lines (:func:`duplicate_lines`) than the
    reference's median is flagged too: area (box) and nearest-neighbour resizes by 0.75-0.9 keep the high band.

    Parameters
    ----------
    images : uint8 ndarray [N,H,W]
        H, W >= 32 for the spectral test (smaller images have too few frequency blocks: only copied lines count).
    reference : bool ndarray [N]
        The reference images (at least ``min_ref``; else nothing is flagged).
    z : float
        Flag above this robust z.
    min_ref : int
    duplicates : bool
        Also flag copied lines (eighth round).

    Returns
    -------
    flag : bool ndarray [N]
    score : float64 ndarray [N]
        The robust z of each image's deficit (NaN without enough reference images or frequency blocks).
    """
    a = np.asarray(images)
    n = a.shape[0] if a.ndim >= 1 else 0
    if np.asarray(reference).shape != (n,):
        raise ValueError(f"reference has shape {np.asarray(reference).shape} for {n} images")
    f = resampling_features(a) if a.ndim == 3 else {"blocks": None, "blocks_fmax": None, "dup": np.zeros(n, np.int64)}
    return _against_from(f["blocks"], f["blocks_fmax"], f["dup"] if duplicates else None, reference, z, min_ref)


def _against_from(L, fmax, dup, reference, z=AGAINST_Z, min_ref=RESAMPLE_MIN_GROUP):
    """:func:`resampling_against` from the block log spectra ``L`` [N, B] / ``fmax`` [B] (None: too small) and the
    copied-line counts ``dup`` [N] (None: not used)."""
    ref = np.asarray(reference, bool)
    n = ref.shape[0]
    flag, score = np.zeros(n, bool), np.full(n, np.nan)
    if ref.sum() < min_ref:
        return flag, score
    if L is not None:
        d = L - np.median(L[ref], axis=0)
        low = (fmax >= AGAINST_LOW[0]) & (fmax < AGAINST_LOW[1])
        high = (fmax >= AGAINST_HIGH[0]) & (fmax <= AGAINST_HIGH[1])
        deficit = np.median(d[:, low], axis=1) - np.median(d[:, high], axis=1)
        med = np.median(deficit[ref])
        mad = 1.4826 * np.median(np.abs(deficit[ref] - med))
        score = (deficit - med) / max(mad, 1e-6)
        flag = score > z
    if dup is not None:
        flag = flag | (dup - np.median(dup[ref]) >= DUP_MIN)
    return flag, score
