"""The floor waiver (issue 19, sixth round: ``engine.attribution.FLOOR_WAIVER``).

The pair test's processing floor (resize 0.5 + JPEG 50) vetoes two clusters whose separation it erases, which is
right for one model split by its release history and wrong for two generators whose only difference is a
high-frequency trace the floor erases.  With the opt-in waiver the veto stands only when the split coincides with
detected processing (JPEG traces, or resampling traces in the cluster with less high-frequency energy).  The detector
check is planted both ways here; the waiver is opt-in because a resize-only history in a 50/50 union is not detected
(strict xfail below).  On dev (benchmarks/attribution_floor_price.py) it keeps a planted checkerboard / noise model.
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


def test_the_waiver_is_opt_in():
    assert A.FLOOR_WAIVER is False


@pytest.mark.xfail(strict=True, reason="known gap that keeps FLOOR_WAIVER opt-in: half the union resized (0.6 bicubic) "
                   "and back is not flagged by detect_resampling judged within the union (its group median is half "
                   "resized), so the waiver would re-open a resize-only history split")
def test_resize_history_split_is_explained():
    a, ia, ib = _pair(np.random.default_rng(5))
    a[ib] = np.stack([P.resize_roundtrip(v, 0.6, "bicubic") for v in a[ib]])
    assert A._history_explains(a, ia, ib)[0]
