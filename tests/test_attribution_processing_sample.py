"""The processing projection's sample (issue 19, tenth and eleventh rounds): drawn over k-means strata of the features
with equal shares per stratum (``attribution.PROCESSING_SAMPLE_RULE = "stratified"``) or the larger of the proportional
and the equal share, scaled to fit ("balanced"), which also keeps a compact mode's share next to heterogeneous modes.

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


def _share_cases(shares, seed, max_size, max_m):
    """200 random (sizes, m, shares(sizes, m)) cases, each checked to be a valid split: sums to min(m, total),
    no stratum over-drawn."""
    rng = np.random.default_rng(seed)
    for _ in range(200):
        sizes = rng.integers(0, max_size, rng.integers(1, 10))
        m = int(rng.integers(1, max_m))
        take = shares(sizes, m)
        assert take.sum() == min(m, sizes.sum())
        assert np.all(take >= 0) and np.all(take <= sizes)
        yield sizes, m, take


def test_equal_shares_is_water_filling():
    for sizes, m, take in _share_cases(A._equal_shares, 0, 120, 500):
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


# --- the "balanced" rule (issue 19, eleventh round, branch attr13) -------------------------------------------------


def test_balanced_shares_match_their_definition():
    """min(size_j, c * max(size_j / n, 1 / s)) with c solved by bisection (the reference), rounded to within 1."""
    for sizes, m, take in _share_cases(A._balanced_shares, 3, 150, 600):
        n, s = int(sizes.sum()), int((sizes > 0).sum())
        if m >= n:
            assert np.array_equal(take, sizes)
            continue
        w = np.where(sizes > 0, np.maximum(sizes / n, 1.0 / s), 0.0)
        lo, hi = 0.0, 4.0 * m
        for _ in range(200):
            c = 0.5 * (lo + hi)
            lo, hi = (c, hi) if np.minimum(sizes, c * w).sum() < m else (lo, c)
        ref = np.minimum(sizes, c * w)
        assert np.all(np.abs(take - ref) < 1.0 + 1e-6), (sizes, m, take, ref)
        # the guarantee: a stratum not taken whole gets at least half of both its proportional and its equal share
        part = take < sizes
        assert np.all(take[part] >= np.floor(0.5 * m * w[part]) - 1e-9), (sizes, m, take)
    assert A._balanced_shares([200, 200, 100, 200, 200, 0], 300).tolist() == [62, 61, 55, 61, 61, 0]


def _planted_modes(seed=7, f=24, sub=100, n_c=200, n_s=50):
    """The "+real" failure in features: three heterogeneous modes of two sub-clusters each (6 x ``sub`` rows, their
    processing moves them along e1), a compact mode (``n_c`` rows in one cluster, processing along e2 by +-1.73) and
    a small one (``n_s`` rows, processing along e3 by +-2.53).  Returns X, X processed, the mode of each row (0-2
    heterogeneous, 3 compact, 4 small).  The amplitudes put the removal threshold (NUISANCE_TAU of the 24 unit
    variances) at a 16 % sample share for the compact mode and 7.5 % for the small one."""
    rng = np.random.default_rng(seed)
    sizes = [sub] * 6 + [n_c, n_s]
    mode = np.repeat([0, 0, 1, 1, 2, 2, 3, 4], sizes)
    clus = np.repeat(np.arange(8), sizes)
    X = rng.standard_normal((mode.size, f))
    for c in range(8):
        X[clus == c, 5 + 2 * c: 7 + 2 * c] += 10.0
    D = 0.05 * rng.standard_normal(X.shape)
    sign = rng.choice([-1.0, 1.0], mode.size)
    D[mode < 3, 1] += sign[mode < 3]
    D[mode == 3, 2] += 1.73 * sign[mode == 3]
    D[mode == 4, 3] += 2.53 * sign[mode == 4]
    return X, X + D, mode


def test_balanced_sample_keeps_a_compact_modes_share_and_lifts_a_small_one():
    X, Xp, mode = _planted_modes()
    masks = {"g": np.ones(X.shape[1], bool)}
    m, n = 300, X.shape[0]
    idx = A._stratified_sample(X, masks, m, seed=0, content_groups=(), rule="balanced")
    assert idx.size == m and np.unique(idx).size == m and np.all(np.diff(idx) > 0)
    per = np.bincount(mode[idx], minlength=5)
    assert per[3] >= 0.8 * m * 200 / n  # the compact mode keeps >= 80 % of its uniform share (70.6): 63 drawn
    assert per[4] >= 30  # the small one is lifted towards the equal share (37.5), not its uniform 17.6: 34 drawn
    eq = A._stratified_sample(X, masks, m, seed=0, content_groups=(), rule="stratified")
    assert np.bincount(mode[eq], minlength=5)[3] <= 40  # equal shares per stratum: the compact mode gets ~37
    rnd = np.sort(np.random.default_rng(19).choice(n, m, replace=False))
    assert np.bincount(mode[rnd], minlength=5)[4] <= 20  # uniform: the small mode gets ~15

    fits = {name: F.NuisanceProjection.fit(X[i], Xp[i], masks) for name, i in
            (("balanced", idx), ("stratified", eq), ("random", rnd))}
    # the balanced fit removes all three processing directions and nothing else
    for j in (1, 2, 3):
        assert _left_along(fits["balanced"], j) < 0.05, j
    for j in (0, 4, 5, 6, 23):
        assert _left_along(fits["balanced"], j) > 0.9, j
    # each other rule loses one: the equal-share fit keeps the compact mode's direction, the uniform one the small's
    assert _left_along(fits["stratified"], 2) > 0.9 and _left_along(fits["stratified"], 3) < 0.05
    assert _left_along(fits["random"], 3) > 0.9 and _left_along(fits["random"], 2) < 0.05
