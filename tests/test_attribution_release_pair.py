"""Issue 19, branch attr16: two models of one architecture under a release mix, and the processing projection's
opt-in variants (every Pillow filter in the augmentation, a generalized-eigen nuisance rule, the column cap).

The planted failure (two weight seeds of one stand-in architecture, half of each model's images resized 128 -> 96
-> 128 style with one Pillow filter, k = 2) is a strict xfail: the clustering finds the processing history or a
mix, not the models (benchmarks/RESULTS.md, branches attr15 and attr16).  None of the opt-in variants fixes it,
so none is on.  Fixtures are synthetic (``conftest.ct_like``); the dev corpus is never read.
"""
import os
import sys

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from conftest import ct_like
from imprint.engine import attribution as A
from imprint.engine import features as F
from imprint.engine import processing as P
from imprint.engine.errors import ImprintError

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import attribution_heldout as H  # noqa: E402
import standin_families as SF  # noqa: E402


def test_defaults_are_off():
    assert A.PROCESSING_FILTERS == "four"
    assert A.NUISANCE_RULE == "share"
    assert A.NUISANCE_MAX_SHARE == pytest.approx(1.0 / 3.0)
    assert set(P.RESAMPLE_FILTERS) == {"bilinear", "bicubic", "lanczos", "box"}
    assert set(P.ALL_RESAMPLE_FILTERS) == set(P.RESAMPLE_FILTERS) | {"nearest", "hamming"}


def test_augment_default_is_unchanged_and_all_filters_draws_nearest_and_hamming():
    imgs = ct_like(np.random.default_rng(3), 60, 48)
    a = P.augment(imgs, 7)
    # the default draws exactly what an explicit RESAMPLE_FILTERS table draws (no change off)
    assert np.array_equal(a, P.augment(imgs, 7, filters=P.RESAMPLE_FILTERS))
    b = P.augment(imgs, 7, filters=P.ALL_RESAMPLE_FILTERS)
    # same random draws: the JPEG-only images (kind 0) are identical, some resized ones differ (another filter)
    rng = np.random.default_rng(7)
    kinds, filt = [], []
    for _ in range(len(imgs)):
        kinds.append(int(rng.integers(3)))
        rng.integers(50, 96)
        rng.uniform(0.5, 0.9)
        filt.append(list(P.ALL_RESAMPLE_FILTERS)[int(rng.integers(6))])
    kinds, filt = np.array(kinds), np.array(filt)
    assert np.array_equal(a[kinds == 0], b[kinds == 0])
    resized = kinds > 0
    assert {"nearest", "hamming"} & set(filt[resized])
    # an image resized with nearest is the nearest round trip (the table is used, not the name list of the default)
    i = int(np.flatnonzero(resized & (filt == "nearest"))[0])
    rng2 = np.random.default_rng(7)
    for _ in range(i):
        rng2.integers(3), rng2.integers(50, 96), rng2.uniform(0.5, 0.9), rng2.integers(6)
    k, q, f = int(rng2.integers(3)), int(rng2.integers(50, 96)), float(rng2.uniform(0.5, 0.9))
    want = P.resize_roundtrip(imgs[i], f, P.ALL_RESAMPLE_FILTERS["nearest"])
    if k == 2:
        want = P.jpeg_roundtrip(want, q)
    assert np.array_equal(b[i], want)


def _unit_left(nap, j):
    e = np.zeros(nap.proj.shape[0])
    e[j] = 1.0
    return float(np.linalg.norm(nap.proj @ e))


def test_geneig_removes_a_direction_small_in_the_group_but_large_for_its_own_variance():
    """Planted: processing moves images along e3 by 0.3 sd of the images' own spread there (9 % of e3's variance)
    but only ~1 % of the group's total; the "share" rule (tau 0.02 of the group total) keeps it, "geneig" removes
    it, and no direction processing does not move is removed."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 10))
    Xp = X.copy()
    Xp[:, 3] += 0.3 * rng.normal(size=300)
    Xp += 0.001 * rng.normal(size=X.shape)
    masks = {"g": np.ones(10, bool)}
    share = F.NuisanceProjection.fit(X, Xp, masks, rule="share")
    gen = F.NuisanceProjection.fit(X, Xp, masks, rule="geneig")
    assert share.removed["g"] == 0
    assert gen.removed["g"] == 1
    Ts, Tg = share.transform(Xp) - share.transform(X), gen.transform(Xp) - gen.transform(X)
    assert Ts[:, 3].var() > 0.05  # left by the share rule
    assert Tg.var(axis=0).max() < 0.01  # processing's motion gone under geneig
    # the other columns keep the images' variance (the removal is along one functional, not the whole space)
    Zg = gen.transform(X)
    assert np.all(Zg[:, [0, 1, 2, 4, 5, 6, 7, 8, 9]].var(axis=0) > 0.9)


def test_invalid_settings_are_errors(monkeypatch):
    imgs = ct_like(np.random.default_rng(1), 8, 32)
    monkeypatch.setattr(A, "PROCESSING_FILTERS", "six")
    with pytest.raises(ImprintError):
        A.attribute(imgs, 2, random_state=0)
    monkeypatch.setattr(A, "PROCESSING_FILTERS", "four")
    monkeypatch.setattr(A, "NUISANCE_RULE", "lda")
    with pytest.raises(ImprintError):
        A.attribute(imgs, 2, random_state=0)


def _same_architecture_pair(seed=1, n=40, size=64, filt="hamming", factor=0.75):
    """Two weight seeds of the rdec stand-in on the same synthetic anatomy; every second image of each model resized
    by ``factor`` and back with ``filt``.  Returns (images, model labels, history labels)."""
    real = ct_like(np.random.default_rng(seed), n, size)
    parts = []
    for ws in (71001, 71002):
        model, r = SF.RandomDecoder(seed=ws), np.random.default_rng([seed, ws])
        parts.append(np.stack([model(a, r) for a in real]))
    X = np.concatenate(parts)
    y = np.repeat([0, 1], n)
    hist = np.tile(np.arange(n) % 2, 2)
    for i in np.flatnonzero(hist):
        X[i] = H._resize(X[i], factor, filt)
    return X, y, hist


def test_fixture_models_and_history_are_both_there():
    """The fixture is what it claims: the two seeds give different images from the same inputs, and the resized
    images differ from the untouched ones (so a history split is possible)."""
    X, y, hist = _same_architecture_pair()
    a, b = X[(y == 0) & (hist == 0)], X[(y == 1) & (hist == 0)]
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1.0
    Xu, _, _ = _same_architecture_pair(factor=1.0)
    assert np.all(np.any(X[hist == 1] != Xu[hist == 1], axis=(1, 2)))


@pytest.mark.xfail(strict=True, reason="issue 19 open (attr15, attr16): two models of one architecture, half of each "
                   "resized, are split by processing history at k 2; no processing-projection variant fixes it")
@pytest.mark.parametrize("variant", [("four", "share", 1.0 / 3.0), ("all", "share", 1.0 / 3.0),
                                     ("four", "geneig", 1.0 / 3.0), ("four", "share", 1.0)])
def test_same_architecture_pair_half_resized_is_split_by_model(monkeypatch, variant):
    X, y, hist = _same_architecture_pair()
    monkeypatch.setattr(A, "PROCESSING_FILTERS", variant[0])
    monkeypatch.setattr(A, "NUISANCE_RULE", variant[1])
    monkeypatch.setattr(A, "NUISANCE_MAX_SHARE", variant[2])
    labels = A.attribute(X, 2, random_state=0).labels
    assert adjusted_rand_score(y, labels) >= 0.9
    assert abs(adjusted_rand_score(hist, labels)) < 0.1
