"""The processing projection's sample (issue 19, tenth round): stratified over k-means strata of the features
(opt-in, ``attribution.PROCESSING_SAMPLE_RULE = "stratified"``; the default stays the uniform sample).

A small mode (a small model, or one processing history of it) whose processing moves its features along a direction
of its own must be represented in the images the projection is fitted on, or that direction is not removed and its
processing history can split it (benchmarks/RESULTS.md, ninth and tenth rounds).  Synthetic features, no images.
"""
import numpy as np

from imprint.engine import attribution as A
from imprint.engine import features as F


def _planted(seed=5, n_big=960, n_small=40, f=12):
    """Features of a big mode and a small, distant one; their processing moves them along e1 and e2 respectively."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_big + n_small, f))
    X[n_big:, 0] += 8.0
    X[n_big:, 3] += 8.0
    D = 0.05 * rng.standard_normal(X.shape)
    D[:n_big, 1] += rng.standard_normal(n_big)
    D[n_big:, 2] += 1.9 * rng.standard_normal(n_small)  # processing variance 3.6 along e2, small mode only
    small = np.zeros(n_big + n_small, bool)
    small[n_big:] = True
    return X, X + D, small


def _left_along(nap, j):
    """Length of the unit direction e_j after the projection (1: not removed, ~0: removed)."""
    e = np.zeros(nap.proj.shape[0])
    e[j] = 1.0
    return float(np.linalg.norm(e @ nap.proj))


def test_equal_shares_is_water_filling():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 120, rng.integers(1, 10))
        m = int(rng.integers(1, 500))
        take = A._equal_shares(sizes, m)
        assert take.sum() == min(m, sizes.sum())
        assert np.all(take >= 0) and np.all(take <= sizes)
        # max-min fair: a stratum that is not taken whole gets at least as many as any other, less one (rounding)
        for j in np.flatnonzero(take < sizes):
            assert take[j] >= take.max() - 1, (sizes, m, take)
    assert A._equal_shares([100, 500, 20, 0, 300], 300).tolist() == [94, 93, 20, 0, 93]


def test_stratified_sample_represents_a_small_mode_and_the_projection_removes_its_processing():
    X, Xp, small = _planted()
    masks = {"g": np.ones(X.shape[1], bool)}
    m = 300
    idx = A._stratified_sample(X, masks, m, seed=0, content_groups=())
    assert idx.size == m and np.unique(idx).size == m and np.all(np.diff(idx) > 0)
    # the small mode (4 % of the set) gets a stratum's equal share (300 / 8 = 37), not its 4 % (12)
    assert small[idx].sum() >= 37
    rnd = np.sort(np.random.default_rng(19).choice(X.shape[0], m, replace=False))
    assert small[rnd].sum() <= 20  # the uniform sample: ~12 (the defect the rule fixes)

    strat = F.NuisanceProjection.fit(X[idx], Xp[idx], masks)
    unif = F.NuisanceProjection.fit(X[rnd], Xp[rnd], masks)
    # both remove the big mode's processing direction
    assert _left_along(strat, 1) < 0.05 and _left_along(unif, 1) < 0.05
    # only the stratified fit removes the small mode's: with the uniform one its processing history stays a direction
    assert _left_along(strat, 2) < 0.05
    assert _left_along(unif, 2) > 0.9
    # and no other direction is removed
    for j in (0, 3, 4, 5):
        assert _left_along(strat, j) > 0.9


def test_stratified_sample_skips_content_columns_and_degenerate_sets():
    X, _, small = _planted(seed=6)
    # a content column that would dominate the strata (a huge spread unrelated to the modes)
    Xc = np.concatenate([X, 1e3 * np.random.default_rng(1).standard_normal((X.shape[0], 30))], axis=1)
    masks = {"g": np.r_[np.ones(X.shape[1], bool), np.zeros(30, bool)],
             "hist": np.r_[np.zeros(X.shape[1], bool), np.ones(30, bool)]}
    idx = A._stratified_sample(Xc, masks, 300, seed=0, content_groups=("hist",))
    assert small[idx].sum() >= 37
    # constant features: falls back to a uniform sample of the requested size
    idx = A._stratified_sample(np.ones((500, 4)), {"g": np.ones(4, bool)}, 300, seed=0, content_groups=())
    assert idx.size == 300 and np.unique(idx).size == 300
