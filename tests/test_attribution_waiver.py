"""The floor waiver (issue 19, sixth round: ``engine.attribution.FLOOR_WAIVER``).

The pair test's processing floor (resize 0.5 + JPEG 50) vetoes two clusters whose separation it erases, which is
right for one model split by its release history and wrong for two generators whose only difference is a
high-frequency trace the floor erases.  With the opt-in waiver the veto stands only when the split coincides with
detected processing (JPEG traces, or resampling traces in the cluster with less high-frequency energy).  The detector
check is planted both ways here.  Seventh round: a resize-only history of half the union is detected by judging every
image against the other cluster (``processing.resampling_against``; a strict xfail before), and the waiver is on by
default.  On dev (benchmarks/attribution_floor_price.py) it keeps a planted checkerboard model apart; a planted white
noise on a natively band-limited model still reads as a resize there (benchmarks/RESULTS.md, seventh round).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import ct_like
from imprint.engine import attribution as A
from imprint.engine import processing as P


def _gen(rng, n, checker=0.0, texture=False, size=64):
    """Synthetic generator: CT-like content + white noise SD 3; ``checker`` adds a period-2 checkerboard of that
    amplitude (grey levels), ``texture`` a random-phase period-8 texture of amplitude 6 (a trace the floor keeps)."""
    x = ct_like(rng, n, size).astype(np.float32) + rng.normal(0, 3, (n, size, size))
    yy, xx = np.mgrid[0:size, 0:size]
    if checker:
        x += checker * np.where((yy + xx) % 2 == 0, 1.0, -1.0)
    if texture:
        for i in range(n):
            p = rng.uniform(0, 2 * np.pi, 2)
            x[i] += 6 * (np.cos(2 * np.pi * xx / 8 + p[0]) + np.cos(2 * np.pi * yy / 8 + p[1]))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _pair(rng, n=20):
    return _gen(rng, 2 * n), np.arange(n), np.arange(n, 2 * n)


def test_jpeg_history_split_is_explained():
    """Half the images JPEG'd at quality 60: the split coincides with the JPEG flags, so the floor's veto stands."""
    a, ia, ib = _pair(np.random.default_rng(5))
    a[ib] = np.stack([P.jpeg_roundtrip(v, 60) for v in a[ib]])
    hist, info = A._history_explains(a, ia, ib)
    assert hist and info["p_jpeg"] < A.HISTORY_ALPHA and info["jpeg"] == [0.0, 1.0]


@pytest.mark.parametrize("trace", ["checker", "noise"])
def test_high_frequency_generator_split_is_not_explained(trace):
    """Planted: the second cluster's generator adds a period-2 checkerboard (amplitude 4) or white noise (SD 3), both
    erased by the floor; no processing is detected, so the veto would be waived."""
    rng = np.random.default_rng(6)
    a, ia, ib = _pair(rng)
    if trace == "checker":
        a[ib] = _gen(rng, ib.size, checker=4.0)
    else:
        a[ib] = np.clip(a[ib] + rng.normal(0, 3, a[ib].shape), 0, 255).astype(np.uint8)
    hist, info = A._history_explains(a, ia, ib)
    assert not hist, info


def test_the_waiver_is_the_default():
    """Seventh round: the resize history of half a pair is detected (below), so the waiver is on by default."""
    assert A.FLOOR_WAIVER is True and A.HISTORY_AGAINST is True


@pytest.mark.parametrize("factor,filt", [(0.6, "bicubic"), (0.75, "bilinear"), (0.5, "lanczos"), (0.9, "bicubic")])
def test_resize_history_split_is_explained(factor, filt):
    """Planted (seventh round; a strict xfail before): half the union resized and back, no JPEG.  The union-median
    detectors flag 0-5 % of it; judged against the other cluster (``processing.resampling_against``) every resized image
    is flagged, so the floor's veto stands and the waiver cannot re-open a resize-only history split."""
    a, ia, ib = _pair(np.random.default_rng(5))
    a[ib] = np.stack([P.resize_roundtrip(v, factor, filt) for v in a[ib]])
    hist, info = A._history_explains(a, ia, ib)
    assert hist and info["p_resampled"] < A.HISTORY_ALPHA and info["resampled"][1] >= 0.9, info


def test_resampling_against_flags_the_resized_half_only():
    """The detector itself on a 50/50 group: the resized images (factors 0.5-0.9, three filters) are flagged, the
    reference's own images at most at the nominal-tail rate, and a checkerboard / JPEG'd half is not flagged."""
    rng = np.random.default_rng(11)
    a = _gen(rng, 48)
    ref = np.arange(48) < 24
    b = a.copy()
    for j, i in enumerate(np.flatnonzero(~ref)):
        b[i] = P.resize_roundtrip(a[i], (0.5, 0.6, 0.75, 0.9)[j % 4], ("bicubic", "bilinear", "lanczos")[j % 3])
    flag, score = P.resampling_against(b, ref)
    assert flag[~ref].mean() >= 0.9 and flag[ref].mean() <= 0.1, score
    # the union-median detector misses most of this half (why the waiver was opt-in)
    assert P.detect_resampling(b, np.zeros(48, np.int64))[0][~ref].mean() < 0.5
    c = a.copy()
    c[~ref] = _gen(np.random.default_rng(12), 24, checker=4.0)
    assert P.resampling_against(c, ~ref)[0][ref].mean() <= 0.1  # the clean half judged against the checkerboard one
    d = a.copy()
    d[~ref] = np.stack([P.jpeg_roundtrip(v, 90) for v in a[~ref]])
    assert P.resampling_against(d, ref)[0][~ref].mean() <= 0.1
    with pytest.raises(ValueError):
        P.resampling_against(b, ref[:10])
    assert not P.resampling_against(b, np.arange(48) < 5)[0].any()  # too few reference images: nothing judged
    tiny = P.resampling_against(b[:, :8, :8], ref)  # too few frequency blocks: nothing judged, no warning or error
    assert not tiny[0].any() and np.isnan(tiny[1]).all()


def _resize_nn(a, factor, filt):
    from PIL import Image

    f = Image.Resampling.NEAREST if filt == "nearest" else filt
    return np.stack([P.resize_roundtrip(v, factor, f) for v in a])


@pytest.mark.parametrize("factor,filt", [(0.75, "box"), (0.9, "box"), (0.6, "nearest")])
def test_area_resize_history_split_is_explained(factor, filt):
    """Planted (eighth round; missed before: the area filter up-samples like nearest neighbour and keeps the high band):
    half the union resized with Pillow's box filter by 0.75 / 0.9 (or nearest neighbour) and back.  The copied lines
    (``processing.duplicate_lines``) mark every resized image, so the floor's veto stands."""
    a, ia, ib = _pair(np.random.default_rng(5))
    a[ib] = _resize_nn(a[ib], factor, filt)
    hist, info = A._history_explains(a, ia, ib)
    assert hist and info["p_resampled"] < A.HISTORY_ALPHA and info["resampled"][1] >= 0.9, info


def test_duplicate_lines_flags_area_resizes_only():
    """Copied adjacent lines: none in untouched, JPEG'd, checkerboard or noisy images; at least DUP_MIN (and about
    2 x 63 x (1 - f) on 64 px) after an area resize by 0.75-0.9; ``resampling_against`` flags exactly those."""
    rng = np.random.default_rng(13)
    a = _gen(rng, 24)
    assert (P.duplicate_lines(a) == 0).all()
    assert (P.duplicate_lines(np.stack([P.jpeg_roundtrip(v, 90) for v in a])) == 0).all()
    assert (P.duplicate_lines(_gen(rng, 8, checker=4.0)) == 0).all()
    assert (P.duplicate_lines(np.clip(a + rng.normal(0, 3, a.shape), 0, 255).astype(np.uint8)) == 0).all()
    for f in (0.75, 0.9):
        d = P.duplicate_lines(_resize_nn(a, f, "box"))
        assert d.min() >= P.DUP_MIN and abs(np.median(d) - 2 * 63 * (1 - f)) <= 4, d
    flat = np.zeros((1, 16, 16), np.uint8)  # flat lines (background) are equal in any image: not counted
    assert P.duplicate_lines(flat)[0] == 0
    b = a.copy()
    b[12:] = _resize_nn(a[12:], 0.8, "box")
    ref = np.arange(24) < 12
    flag = P.resampling_against(b, ref)[0]
    assert flag[~ref].all() and flag[ref].sum() <= 1  # a reference image may pass the spectral z (12 images)
    dup_only = P._against_from(None, None, P.duplicate_lines(b), ref)[0]
    assert dup_only.tolist() == (~ref).tolist()


def _history_reference(images, ia, ib):
    """The waiver's evidence recomputed on the pair's union with the public detectors (the path before the cache)."""
    from scipy.stats import fisher_exact

    sel = np.concatenate([ia, ib])
    u = images[sel]
    j = np.asarray(P.detect(u)["jpeg"], bool)
    ja, jb = int(j[: ia.size].sum()), int(j[ia.size:].sum())
    p_j = float(fisher_exact([[ja, ia.size - ja], [jb, ib.size - jb]])[1]) if ja + jb else 1.0
    rs = P.detect_resampling(u, np.zeros(sel.size, np.int64))[0]
    bl, dup = P.band_limit_score(u), P.duplicate_lines(u)
    da, db = np.median(dup[: ia.size]), np.median(dup[ia.size:])
    a_low = da > db if abs(da - db) >= P.DUP_MIN else np.median(bl[: ia.size]) >= np.median(bl[ia.size:])
    ref = np.r_[np.full(ia.size, not a_low), np.full(ib.size, a_low)]
    rs = rs | P.resampling_against(u, ref)[0]
    ra, rb = int(rs[: ia.size].sum()), int(rs[ia.size:].sum())
    tab = [[ra, ia.size - ra], [rb, ib.size - rb]] if a_low else [[rb, ib.size - rb], [ra, ia.size - ra]]
    p_r = float(fisher_exact(tab, alternative="greater")[1]) if ra + rb else 1.0
    return {"p_jpeg": p_j, "p_resampled": p_r, "jpeg": [ja / ia.size, jb / ib.size],
            "resampled": [ra / ia.size, rb / ib.size], "a_low": bool(a_low)}


def _explains_reference(want, min_share):
    """The decision :func:`A._history_explains` must give on the evidence ``want`` (``_history_reference``) under
    ``HISTORY_MIN_SHARE = min_share``."""
    if min_share is None:
        return min(want["p_jpeg"], want["p_resampled"]) < A.HISTORY_ALPHA
    d_j = abs(want["jpeg"][0] - want["jpeg"][1])
    ra, rb = want["resampled"]
    d_r = ra - rb if want["a_low"] else rb - ra
    return (want["p_jpeg"] < A.HISTORY_ALPHA and d_j >= min_share) or (
        want["p_resampled"] < A.HISTORY_ALPHA and d_r >= min_share)


@pytest.mark.parametrize("min_share", [None, 0.5])
def test_history_cache_gives_identical_answers(min_share, monkeypatch):
    """Eighth round: the detector inputs are computed once per image and shared by every pair of a k scan; the
    answers equal the per-pair recomputation on the union, for every pair of a four-cluster labelling with JPEG'd,
    resized and area-resized images, in any order (the cache filled by earlier pairs); with and without attr15's
    ``HISTORY_MIN_SHARE``."""
    monkeypatch.setattr(A, "HISTORY_MIN_SHARE", min_share)
    rng = np.random.default_rng(21)
    a = _gen(rng, 64)
    a[16:24] = np.stack([P.jpeg_roundtrip(v, 70) for v in a[16:24]])
    a[24:32] = np.stack([P.resize_roundtrip(v, 0.6, "bicubic") for v in a[24:32]])
    a[40:52] = _resize_nn(a[40:52], 0.8, "box")
    labels = np.repeat(np.arange(4), 16)
    cache = {}
    pairs = [(x, y) for x in range(4) for y in range(x + 1, 4)]
    for x, y in pairs[::-1] + pairs:  # twice: the second pass reads everything from the cache
        ia, ib = np.flatnonzero(labels == x), np.flatnonzero(labels == y)
        got = A._history_explains(a, ia, ib, cache)
        want = _history_reference(a, ia, ib)
        assert {k: v for k, v in got[1].items() if k != "share"} == {k: v for k, v in want.items() if k != "a_low"}
        assert ("share" in got[1]) == (min_share is not None)
        assert got[0] == _explains_reference(want, min_share)
    assert cache["resampling_done"].all() and (cache["jpeg"] >= 0).all()


@pytest.mark.xfail(strict=True, reason="eighth round, diagnosed: white noise added on a natively band-limited model "
                   "reads as a resize of the noisy cluster (second-order statistics match a drooping resize filter, "
                   "and the cues that differ, the reference's Gaussian high band, also mark a resize of a generator "
                   "whose own high band is white noise); benchmarks/RESULTS.md, eighth round")
def test_white_noise_on_a_band_limited_model_is_not_a_resize():
    """Planted: a band-limited generator (content blurred, SD 1.2 px) and the same generator + white noise SD 3 (a
    second model whose only own trace is the noise).  The split should not be explained by a resize history, so the
    floor's veto would be waived; today the clean cluster is flagged as resized against the noisy one."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(8)
    x = ct_like(rng, 40, 64).astype(np.float64) + rng.normal(0, 3, (40, 64, 64))
    a = np.clip(np.rint(np.stack([gaussian_filter(v, 1.2) for v in x])), 0, 255).astype(np.uint8)
    ia, ib = np.arange(20), np.arange(20, 40)
    a[ib] = np.clip(np.rint(a[ib] + rng.normal(0, 3, a[ib].shape)), 0, 255).astype(np.uint8)
    hist, info = A._history_explains(a, ia, ib)
    assert not hist, info
