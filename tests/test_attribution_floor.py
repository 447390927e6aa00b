"""The pair test "floor" of the k scan (issue 19, fifth round; engine.attribution.PAIR_TEST).

Two clusters are two models when they are the two groups of their union (held-out labelled R^2 >= the one-model
threshold) *and* stay separated after every image goes through a common harsh processing (the "floor"), scored against
the log-concave bound (:func:`engine.attribution._floor_threshold`).  Planted here:

* the level: one model split by its processing history, the floor erasing the history: the floor half passes at most
  ``ONE_MODEL_ALPHA`` of the time (simulated over log-concave shapes, sizes and dimensions);
* one model processed half-and-half, through ``attribute()``: stays one cluster (k auto) where the labelled test alone
  splits it;
* two models that differ only along a direction of small variance, next to a strong unimodal content direction: the
  union's best split (main's "both") sits under 0.90 and merges them; "floor" keeps them apart.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score as ari
from threadpoolctl import threadpool_limits

from imprint.engine import attribution as A

SHAPES = ("gauss", "uniform", "laplace", "logistic", "gamma")


def _draw(rng, shape, size):
    return {"gauss": lambda: rng.normal(size=size), "uniform": lambda: rng.uniform(-1, 1, size),
            "laplace": lambda: rng.laplace(size=size), "logistic": lambda: rng.logistic(size=size),
            "gamma": lambda: rng.gamma(2.0, size=size)}[shape]()


def _std(V):
    return (V - V.mean(axis=0)) / (V.std(axis=0) + 1e-12)


def test_floor_threshold_is_the_uniform_quantile():
    """The floor threshold is the uniform's (1 - 0.6 alpha) quantile of the best-split R^2 (fresh draws agree), below
    the one-model threshold, above the uniform's population value 0.75, and it does not fall under the m = 100 value
    for larger sets (conservative cap)."""
    rng = np.random.default_rng(8)
    for n in (40, 200):
        t = A._floor_threshold(n)
        r2 = np.array([A._r2_two_groups(rng.uniform(size=n // 2)) for _ in range(3000)])
        assert abs(np.mean(r2 >= t) - 0.6 * A.ONE_MODEL_ALPHA) < 0.015
        assert 0.75 < t < A._one_model_threshold(n)
    assert A._floor_threshold(5000) == A._floor_threshold(200)


def test_one_model_split_by_its_history_passes_the_floor_at_most_alpha():
    """Level of the floor half, by simulation: 60 one-model sets (five log-concave shapes, n 40-200, 3-8 features);
    half the images carry a processing history (6-9 SDs along a random direction: the base labelled test passes
    them), the clusters are 2-means on the base features, and the floor erases the history up to a leftover of 0-0.3
    SD plus its own noise.  The floor half passes at most alpha of them at 95 % confidence (0 of 80: Clopper-Pearson
    upper bound 4.9 %).  The planted power check: every fifth set with a second model instead of a history (9 SDs,
    kept by the floor at 70 %) passes the whole pair test."""
    rng = np.random.default_rng(1905)
    n_sets, passed, power, trap = 60, 0, 0, 0
    with threadpool_limits(1):
        for rep in range(n_sets):
            shape = SHAPES[rep % len(SHAPES)]
            n, d = int(rng.choice([40, 80, 140, 200])), int(rng.integers(3, 9))
            X = _std(_draw(rng, shape, (n, d)))
            U = np.linalg.qr(rng.normal(size=(d, 1)))[0][:, 0]
            h = (rng.permutation(n) < n // 2).astype(int)
            base = _std(X + rng.uniform(6.0, 9.0) * h[:, None] * U)
            lab = KMeans(2, n_init=3, random_state=rep).fit_predict(base)
            # the history separates in the base features: the labelled test alone passes it (counted)
            trap += A._labelled_separation(base, lab, rep) >= A._one_model_threshold(n)
            floor = _std(X + rng.uniform(0.0, 0.3) * h[:, None] * U + 0.3 * rng.normal(size=X.shape))
            A.PAIR_TEST, old = "floor", A.PAIR_TEST
            try:
                # the floor half alone (its level), and the whole pair test
                ok = A._labelled_separation(floor, lab, rep) >= A._floor_threshold(n)
                if rep % 5 == 0:  # the planted counterpart: a second model (9 SDs), which the floor keeps at 70 %
                    y = (rng.permutation(n) < n // 2).astype(int)
                    two = _std(X + 9.0 * y[:, None] * U)
                    two_f = _std(X + 0.7 * 9.0 * y[:, None] * U + 0.3 * rng.normal(size=X.shape))
                    power += A._pair_separation(two, y, rep, V_floor=two_f)[2]
            finally:
                A.PAIR_TEST = old
            passed += bool(ok)
    ub = 1.0 if passed >= n_sets else float(beta.ppf(0.95, passed + 1, n_sets - passed))
    assert ub <= A.ONE_MODEL_ALPHA, passed
    assert trap >= 0.8 * n_sets, trap  # the history is a real trap: the labelled test alone passes most sets
    assert power == n_sets // 5


def _encode(n):
    """n distinct 8x8 images: the row index in pixels (0, 0) and (0, 1)."""
    im = np.zeros((n, 8, 8), np.uint8)
    im[:, 0, 0], im[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return im


def _encode_ct(n, resized, seed=0):
    """n distinct 64x64 CT-like images (white noise SD 3), the row index in pixels (0, 0) and (0, 1); the rows
    ``resized`` (bool [n]) resized by 0.6 and back (bicubic), so a release history is in the pixels too (what the
    floor waiver, on by default since issue 19's seventh round, looks for)."""
    from conftest import ct_like
    from imprint.engine.processing import resize_roundtrip

    rng = np.random.default_rng(seed)
    im = np.clip(np.rint(ct_like(rng, n, 64).astype(np.float32) + rng.normal(0, 3, (n, 64, 64))), 0, 255)
    im = im.astype(np.uint8)
    im[resized] = np.stack([resize_roundtrip(v, 0.6, "bicubic") for v in im[resized]])
    im[:, 0, 0], im[:, 0, 1], im[:, 0, 2] = np.arange(n) % 256, np.arange(n) // 256, 0
    return im


def _planted(monkeypatch, F, F_floor, images=None):
    """attribute() sees ``F`` [N, d] for the images and ``F_floor`` for their floor copies (pixel (0, 2) marks them).
    ``images`` (uint8 [N, H, W] carrying the row index as :func:`_encode` does; default :func:`_encode`)."""
    names = [f"resid.f{i}" for i in range(F.shape[1])]

    def fake(images, groups, backbones=(), errors=None, executor=None):
        idx = images[:, 0, 0].astype(int) + 256 * images[:, 0, 1].astype(int)
        src = F_floor if (images[:, 0, 2] == 1).all() else F
        return src[idx].copy(), list(names)

    def floor(images):
        out = images.copy()
        out[:, 0, 2] = 1
        return out

    monkeypatch.setattr(A, "_extract", fake)
    monkeypatch.setattr(A, "_floor_images", floor)
    return _encode(F.shape[0]) if images is None else images


def _run(images, rule):
    old = A.PAIR_TEST
    A.PAIR_TEST = rule
    try:
        return A.attribute(images, None, processing_invariant=False, stability_resamples=0, k_max=5, backbones=())
    finally:
        A.PAIR_TEST = old


def test_one_model_processed_half_and_half_stays_one_cluster(monkeypatch):
    """Three models; model 0's images are half 'resized' (its trace features moved 7 SDs: the release erased part of
    its fingerprint).  The labelled test alone passes model 0's two halves (k = 4); the floor brings both halves to the
    same state, so "floor" keeps model 0 whole (k = 3, the true partition).  The history is in the pixels too (half of
    model 0's images resized 0.6 and back): the floor waiver (default since the seventh round) finds it in the pair's
    resized half (``processing.resampling_against``) and keeps the veto."""
    rng = np.random.default_rng(21)
    n, d = 60, 6
    y = np.repeat([0, 1, 2], n)
    X = rng.normal(size=(3 * n, d))
    X[y == 1, 0] += 12.0
    X[y == 2, 1] += 12.0
    hist = (y == 0) & (rng.permutation(3 * n) % 2 == 0)
    F = X.copy()
    F[hist, 2] += 7.0  # the history, in base features
    F_floor = X + 0.3 * rng.normal(size=X.shape)  # after the floor every image is 'resized': no history left
    images = _planted(monkeypatch, F, F_floor, _encode_ct(3 * n, hist))
    with threadpool_limits(1):
        labels_only = _run(images, "labels")
        floor = _run(images, "floor")
    assert labels_only.k == 4  # the planted trap: the history passes the labelled test
    assert floor.k == 3 and ari(y, floor.labels) == 1.0
    assert any(v < A._floor_threshold(2 * n) for v in floor.info["k_scan_pairs_floor"]["4"].values())
    if A.FLOOR_WAIVER:  # the veto stood because the resize was detected, not because the waiver was off
        hist4 = floor.info["k_scan_pairs_history"]["4"]
        assert hist4 and not any(v["veto_waived"] for v in hist4.values()), hist4
        assert any(v["p_resampled"] < A.HISTORY_ALPHA for v in hist4.values()), hist4


def test_two_models_at_the_old_threshold_are_kept_apart(monkeypatch):
    """Three models; models 0 and 1 differ by 9 SDs along one feature only, while three other features share a strong
    uniform content component (the direction 2-means splits first).  The union of models 0 and 1 has no bimodal best
    split (main's "both" sits under 0.90 and does not accept the three models: k < 3), but they are its groups (labelled R^2 ~ 0.95) and
    the floor keeps the difference (70 %): "floor" finds k = 3, the true partition."""
    rng = np.random.default_rng(4)
    n, d = 60, 6
    y = np.repeat([0, 1, 2], n)
    X = rng.normal(size=(3 * n, d)) * 0.3
    c = rng.uniform(-1, 1, 3 * n) * 6.0
    X[:, 2:5] += c[:, None]  # content: strong, unimodal, on three columns
    X[y == 1, 0] += 9.0 * 0.3 * 3.0
    X[y == 2, 1] += 40.0
    F_floor = X.copy()
    F_floor[y == 1, 0] -= 0.3 * 9.0 * 0.3 * 3.0
    F_floor += 0.1 * rng.normal(size=X.shape)
    images = _planted(monkeypatch, X, F_floor)
    with threadpool_limits(1):
        two = y < 2
        V = A._pca90(_std(X)[two], {}, 0)
        assert A._separation_test(V, 0)[0] < A._one_model_threshold(2 * n)  # the old statistic fails this pair
        assert A._labelled_separation(V, y[two], 0) >= A._one_model_threshold(2 * n)
        both = _run(images, "both")
        floor = _run(images, "floor")
    assert both.k < 3, both.k  # main's pair test does not accept the three models
    assert floor.k == 3 and ari(y, floor.labels) == 1.0, (floor.k, floor.info["k_scan_pairs"])
