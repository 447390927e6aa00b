"""The k = 1 decision's stated error rate (issue 19, third round): P(k auto > 1 | one model) <= ONE_MODEL_ALPHA.

Simulated on many one-model sets: several log-concave shapes (Gaussian, uniform, the least favourable one for the
two-way test, Laplace, logistic, skewed gamma), sizes 20-200 and 3-8 features, unprocessed and "released" (half of the
images moved along processing directions, which the processing projection is fitted on from processed pairs, as in
``engine.attribution._processing_projection``).  Both routes of the k scan to k > 1 are run: the two-way one-model test
and a k = 3 partition (k-means, standing in for the consensus) whose every pair passes the pair test.  The planted
counterpart: two models, processed or not, must be split.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from imprint.engine import attribution as A
from imprint.engine import features as Fe

SHAPES = ("gauss", "uniform", "laplace", "logistic", "gamma")


def _draw(rng, shape, size):
    return {"gauss": lambda: rng.normal(size=size), "uniform": lambda: rng.uniform(-1, 1, size),
            "laplace": lambda: rng.laplace(size=size), "logistic": lambda: rng.logistic(size=size),
            "gamma": lambda: rng.gamma(2.0, size=size)}[shape]()


def _released(rng, X, cols=None):
    """Half the rows moved by 3-6 SDs along 1-2 random processing directions (supported on the columns ``cols`` when
    given, so they stay orthogonal to what lives on the others after any per-column scaling); the projection is
    fitted on pairs (x, x + processing change) of a sample, removes those directions, and the projected features are
    returned."""
    n, d = X.shape
    R = rng.normal(size=(d, int(rng.integers(1, 3)) if cols is None or len(cols) > 2 else 1))
    if cols is not None:
        R[np.setdiff1d(np.arange(d), cols)] = 0.0
    U = np.linalg.qr(R)[0]
    sd = X.std(axis=0)

    def change(m):
        return (rng.uniform(3.0, 6.0, (m, U.shape[1])) * rng.choice([-1, 1], (m, U.shape[1]))) @ U.T * sd

    Y = X.copy()
    half = rng.permutation(n)[: n // 2]
    Y[half] += change(half.size)
    idx = rng.choice(n, min(n, 300), replace=True)
    nap = Fe.NuisanceProjection.fit(Y[idx], Y[idx] + change(idx.size), {"resid": np.ones(d, bool)})
    return nap.transform(Y)


def _splits(V, seed, lookahead=None):
    """Does any route of the k scan split these images?  (two-way test, a k = 2 partition that passes the pair test
    (issue 19, sixth round: ``K2_PAIR_ROUTE``; its labelled half alone, which passes whenever labelled + floor does),
    or an all-pairs-passing k = 3 partition, or, with the look-ahead, k = 4, ...: for one model every k >= 3 fails
    until one passes, so these are all the routes)"""
    thr = A._one_model_threshold(V.shape[0])
    if A._separation_test(V, seed)[0] >= thr:
        return True
    if A.K2_PAIR_ROUTE:
        lab2 = KMeans(2, n_init=3, random_state=seed).fit_predict(V)
        if A._pair_separation(V, lab2, seed, early_stop=True)[2]:
            return True
    # k = 3, then the scan's look-ahead (issue 19, twelfth round: K_SCAN_LOOKAHEAD more k after a failing one)
    look = A.K_SCAN_LOOKAHEAD if lookahead is None else lookahead
    return any(_k_passes(V, kk, seed) for kk in range(3, 4 + look))


def _k_passes(V, kk, seed):
    """Does a k-means k-partition (standing in for the consensus) pass every pair test?"""
    lab = KMeans(kk, n_init=3, random_state=seed).fit_predict(V)
    return bool(A._pair_separation(V, lab, seed, early_stop=True)[2])


def _cp_upper(k, n, conf=0.95):
    """One-sided Clopper-Pearson upper confidence bound of a binomial proportion."""
    return 1.0 if k >= n else float(beta.ppf(conf, k + 1, n - k))


def test_false_split_rate_of_one_model_is_at_most_alpha():
    """P(k > 1 | one model) <= ONE_MODEL_ALPHA, at 95 % confidence: 0 splits in 60 sets (every other one released)
    gives a Clopper-Pearson upper bound of 4.9 % (< 5 %).  benchmarks/bench_attribution_processing.py --k1-sim runs
    more sets for a tighter bound (benchmarks/RESULTS.md).  Both scan rules are held to it: without the look-ahead
    and with one k of it (``K_SCAN_LOOKAHEAD = 1``, opt-in: its one extra route for one model is a k = 4 partition
    that passes every pair test, tried on the sets the other routes did not split)."""
    rng = np.random.default_rng(1901)
    n_sets, splits, tried, splits_look = 60, 0, [], 0
    with threadpool_limits(1):
        for rep in range(n_sets):
            shape, processed = SHAPES[rep % len(SHAPES)], bool(rep % 2)
            n = int(rng.choice([20, 30, 48, 80, 140, 200]))
            d = int(rng.integers(3, 9))
            X = _draw(rng, shape, (n, d)) * rng.uniform(0.3, 3.0, d)
            V = _released(rng, X) if processed else X
            V = (V - V.mean(axis=0)) / (V.std(axis=0) + 1e-12)
            s = _splits(V, rep, lookahead=0)
            s1 = s or _k_passes(V, 4, rep)
            splits += s
            splits_look += s1
            tried.append((shape, n, d, s, s1))
    assert _cp_upper(splits, n_sets) <= A.ONE_MODEL_ALPHA, [t for t in tried if t[3]]
    assert _cp_upper(splits_look, n_sets) <= A.ONE_MODEL_ALPHA, [t for t in tried if t[4]]


def test_false_split_rate_of_large_one_model_sets_in_many_dimensions():
    """The level with the k = 2 pair route on (the default since issue 19's seventh round), for sets of the size and
    dimension where the sixth round's route split dev gen_a (1000 images, ~120 pair-view columns): 8 one-model sets,
    n 600-1000, d 40-120, log-concave shapes, half of them released.  0 splits allowed: a smoke check of the level in
    many dimensions (8 sets bound little; the 60-set test above holds the rate).  gen_a itself is not log-concave in
    these features; what keeps it at k = 1 is the route's floor at the one-model threshold (test below)."""
    assert A.K2_PAIR_ROUTE
    rng = np.random.default_rng(1907)
    splits = []
    with threadpool_limits(1):
        for rep in range(8):
            shape, processed = SHAPES[rep % len(SHAPES)], bool(rep % 2)
            n, d = int(rng.choice([600, 1000])), int(rng.choice([40, 80, 120]))
            X = _draw(rng, shape, (n, d)) * rng.uniform(0.3, 3.0, d)
            V = _released(rng, X) if processed else X
            V = (V - V.mean(axis=0)) / (V.std(axis=0) + 1e-12)
            if _splits(V, rep):
                splits.append((shape, n, d, processed))
    assert not splits, splits


def test_k2_route_floor_is_judged_at_the_one_model_threshold():
    """Planted (seventh round, ``K2_FLOOR_STRICT``): a k = 2 partition whose labelled separation passes (two groups 8
    SDs apart) but whose separation after the floor falls to between the floor bound (~0.80) and 0.90 (the groups 4.6
    SDs apart there) passes the k >= 3 pair test and fails the k = 2 route's."""
    rng = np.random.default_rng(3)
    n = 400
    y = np.arange(n) % 2
    V = rng.normal(size=(n, 3))
    Vf = V.copy()
    V[:, 0] += 8.0 * y
    Vf[:, 0] += 4.6 * y
    lab = A._labelled_separation(V, y, 0)
    flo = A._labelled_separation(Vf, y, 0)
    assert lab >= A._one_model_threshold(n) and A._floor_threshold(n) <= flo < A._one_model_threshold(n), (lab, flo)
    assert A._pair_separation(V, y, 0, V_floor=Vf)[2]
    assert not A._pair_separation(V, y, 0, V_floor=Vf, floor_threshold=A._one_model_threshold)[2]


def test_threshold_follows_the_least_favourable_log_concave_shape():
    """The small-set threshold: at n = 20 one uniform test half of 10 values scores >= 0.90 with probability about
    6 %, so 0.90 alone would not hold the rate there; the threshold is above the uniform's (1 - 0.6 alpha) quantile
    and never below 0.90."""
    rng = np.random.default_rng(5)
    for n in (12, 20, 40, 400):
        t = A._one_model_threshold(n)
        assert t >= A.ONE_MODEL_SEPARATION
        m = n // 2
        r2 = np.array([A._r2_two_groups(rng.uniform(size=m)) for _ in range(3000)])
        assert np.mean(r2 >= t) <= 0.6 * A.ONE_MODEL_ALPHA + 0.01
    assert A._one_model_threshold(20) > 0.9 and A._one_model_threshold(400) == A.ONE_MODEL_SEPARATION
    # population values: uniform 0.75 is the largest of these log-concave shapes, far below the threshold
    big = {s: A._r2_two_groups(_draw(rng, s, 200000)) for s in SHAPES}
    assert abs(big["uniform"] - 0.75) < 0.01 and abs(big["gauss"] - 2 / np.pi) < 0.01
    assert max(big.values()) == big["uniform"]


@pytest.mark.parametrize("processed", [False, True], ids=["unprocessed", "released"])
def test_two_models_must_split(processed):
    """Planted: two models 10 within-SDs apart along a random direction of the first half of the features (processing
    moves the other half, the way noise-level features move and trace features do not), sizes 30-200, processed or
    not: every set is split by the two-way test and the true partition passes the
    pair test."""
    rng = np.random.default_rng(77 + processed)
    with threadpool_limits(1):
        for rep in range(6):
            shape = SHAPES[rep % len(SHAPES)]
            n, d = int(rng.choice([30, 60, 120, 200])), int(rng.integers(4, 9))
            X = _draw(rng, shape, (n, d))
            X = (X - X.mean(axis=0)) / X.std(axis=0)
            y = np.arange(n) % 2
            w = np.zeros(d)  # the difference is carried by half the features equally (a single column can be
            w[: d // 2] = 1.0  # outvoted by content the projection leaves correlated: see SEPARATION_WHITEN)
            X[y == 1] += 10.0 * w / np.linalg.norm(w)
            V = _released(rng, X, cols=np.arange(d // 2, d)) if processed else X
            V = (V - V.mean(axis=0)) / (V.std(axis=0) + 1e-12)
            thr = A._one_model_threshold(n)
            assert A._separation_test(V, rep)[0] >= thr, (shape, n, d)
            assert A._pair_separation(V, y, rep)[2], (shape, n, d)


def test_one_model_released_gives_k1_and_two_models_k2_through_attribute(monkeypatch):
    """The whole decision (attribute(k=None) with the consensus scan) on planted features: a released one-model set
    gives k = 1 and states its error rate; a released two-model set gives k = 2."""
    rng = np.random.default_rng(11)
    n, d = 120, 6
    for two in (False, True):
        X = rng.normal(size=(n, d)) * np.array([3, 2, 1, 1, 1, 0.5])
        y = np.arange(n) % 2
        if two:  # the models differ in features 2 and 4, which processing does not move
            X[y == 1, 2] += 8.0
            X[y == 1, 4] += 8.0
        U = np.zeros((d, 1))
        U[[0, 1, 3], 0] = (0.6, 0.64, 0.48)  # processing: a combination of features 0, 1, 3 (not 2)
        half = rng.permutation(n)[: n // 2]
        X[half] += 15.0 * U[:, 0]  # released: half the images moved along a processing direction
        names = [f"resid.f{i}" for i in range(d)]
        monkeypatch.setattr(A, "_extract", lambda images, groups, backbones=(), errors=None, executor=None,
                            X=X: (X.copy(), list(names)))

        def proj(images, X_, names_, groups, backbones, masks, seed, cache_dir, executor=None, content_groups=()):
            idx = np.arange(X_.shape[0])
            Xa = X_[idx] + rng.uniform(10, 20, (idx.size, 1)) * U[:, 0]
            nap = Fe.NuisanceProjection.fit(X_[idx], Xa, masks)
            return nap, nap.transform(Xa) - nap.transform(X_[idx])

        monkeypatch.setattr(A, "_processing_projection", proj)
        imgs = np.zeros((n, 8, 8), np.uint8) + (np.arange(n) % 251).astype(np.uint8)[:, None, None]
        r = A.attribute(imgs, None, backbones=(), stability_resamples=0, k_max=4)
        t = r.info["one_model_test"]
        assert t["alpha"] == A.ONE_MODEL_ALPHA and "P(k > 1 | one model)" in t["error_rate"]
        if two:
            assert r.k == 2
            assert abs(np.corrcoef(r.labels, y)[0, 1]) > 0.95
        else:
            assert r.k == 1 and t["one_model"] is True
