"""Tests for engine.attribution and engine.features (synthetic generators with known fingerprints)."""

import json

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import adjusted_rand_score

from imprint.engine import features as F
from imprint.engine.attribution import AttributionResult, attribute
from imprint.engine.errors import ImprintError

S = 64  # image side (small for speed; the algorithm is size-agnostic)


def _anatomy(rng, n, s=S):
    """Smooth random 'CT-like' blobs: an elliptic body with darker lungs, random shapes."""
    yy, xx = np.mgrid[0:s, 0:s] / s - 0.5
    out = np.empty((n, s, s), np.float64)
    for i in range(n):
        a, b = rng.uniform(0.3, 0.45), rng.uniform(0.22, 0.35)
        body = ((xx / a) ** 2 + (yy / b) ** 2 < 1).astype(float)
        img = 30 + 150 * body
        for sx in (-1, 1):
            cx, cy = sx * rng.uniform(0.12, 0.2), rng.uniform(-0.08, 0.05)
            la, lb = rng.uniform(0.07, 0.12), rng.uniform(0.1, 0.18)
            img -= 110 * (((xx - cx) / la) ** 2 + ((yy - cy) / lb) ** 2 < 1)
        img += ndimage.gaussian_filter(rng.normal(0, 25, (s, s)), 3)
        out[i] = ndimage.gaussian_filter(img, 1.0)
    return out


def _gen(model, rng, n, s=S):
    """Images of one synthetic 'generator' with a distinct trace."""
    if model == "nearest2x":  # generated at half size, nearest-neighbour upsampled
        base = _anatomy(rng, n, s // 2) + rng.normal(0, 4, (n, s // 2, s // 2))
        img = base.repeat(2, axis=1).repeat(2, axis=2)
    elif model == "checker":  # transposed-conv checkerboard
        yy, xx = np.mgrid[0:s, 0:s]
        img = _anatomy(rng, n, s) + 7.0 * ((-1.0) ** (yy + xx))[None] + rng.normal(0, 1, (n, s, s))
    elif model == "white":  # white sensor-like noise
        img = _anatomy(rng, n, s) + rng.normal(0, 9, (n, s, s))
    elif model == "smooth":  # over-smoothed output with low-pass noise
        img = ndimage.gaussian_filter(_anatomy(rng, n, s), (0, 1.5, 1.5))
        img += ndimage.gaussian_filter(rng.normal(0, 6, (n, s, s)), (0, 1.2, 1.2))
    else:  # pragma: no cover
        raise ValueError(model)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


MODELS = ("nearest2x", "checker", "white", "smooth")


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(1234)
    parts = [_gen(m, rng, 30) for m in MODELS]
    y = np.repeat(np.arange(len(MODELS)), 30)
    perm = np.random.default_rng(7).permutation(len(y))
    dev = {m: _gen(m, rng, 20) for m in MODELS}
    return np.concatenate(parts)[perm], y[perm], dev


@pytest.fixture(scope="module")
def result_k4(corpus):
    imgs, _, _ = corpus
    return attribute(imgs, 4, random_state=0)


def test_recovers_known_generators(corpus, result_k4):
    _, y, _ = corpus
    r = result_k4
    assert isinstance(r, AttributionResult)
    assert adjusted_rand_score(y, r.labels) >= 0.99
    assert r.k == 4


def test_result_contract(corpus, result_k4):
    imgs, _, _ = corpus
    r = result_k4
    n = len(imgs)
    assert r.labels.dtype == np.int64 and r.labels.shape == (n,)
    assert set(np.unique(r.labels)) == {0, 1, 2, 3}
    assert r.confidence.dtype == np.float64 and r.confidence.shape == (n,)
    assert np.all((r.confidence >= 0) & (r.confidence <= 1))
    sizes = np.bincount(r.labels, minlength=4)
    assert r.info["cluster_sizes"] == sizes.tolist()
    assert list(sizes) == sorted(sizes, reverse=True)  # cluster 0 is the largest
    spec = r.info["residual_radial_spectrum"]
    assert len(spec) == 4 and all(len(s) == F.N_RADIAL for s in spec)
    # the per-cluster spectrum is the mean of the per-image residual spectra
    ref = F.residual_radial_spectrum(imgs)
    np.testing.assert_allclose(spec[1], ref[r.labels == 1].mean(0), rtol=1e-6, atol=1e-9)
    json.dumps(r.info, allow_nan=False)  # strict JSON
    assert isinstance(r.summary, str) and "\n" not in r.summary
    assert r.features.shape[0] == n


def test_deterministic_for_seed(corpus, result_k4):
    imgs, _, _ = corpus
    r2 = attribute(imgs, 4, random_state=0)
    np.testing.assert_array_equal(result_k4.labels, r2.labels)
    np.testing.assert_array_equal(result_k4.confidence, r2.confidence)


def test_auto_k_finds_number_of_generators(corpus):
    # Run without the processing invariance, on purpose: these synthetic generators differ *only* by resampling
    # traces (nearest 2x up-sampling, low-pass smoothing, a Nyquist checkerboard, white noise), which are exactly
    # the directions the invariance removes as "resized or re-encoded for release".  With it on, issue 16's one-model
    # test scores 0.87 (< 0.90) on what is left and k auto answers 1 (measured; issue 19 note).  On the dev corpus
    # k auto finds every model with the invariance on (benchmarks/RESULTS.md); a generator whose only trace is a
    # resampling one is a known limit of it.
    imgs, y, _ = corpus
    r = attribute(imgs, None, random_state=0, k_max=7, processing_invariant=False)
    assert r.k == 4
    assert r.info["k_estimated"] is True
    # the k scan stops at the first k whose consensus splits a model (a pair of clusters fails the one-model test)
    pairs = r.info["k_scan_pair_separation"]
    assert set(r.info["k_scan_silhouette"]) == set(pairs) == {"2", "3", "4", "5"}
    assert all(pairs[k] >= 0.90 for k in "234") and pairs["5"] < 0.90
    assert len(r.info["k_scan_pairs"]["4"]) == 6  # every pair of the 4 clusters was tested
    assert adjusted_rand_score(y, r.labels) >= 0.99


def test_auto_k_silhouette_rule_still_available(corpus, monkeypatch):
    # the rule before issue 19 (kept for the benchmarks' before/after) scans every k
    import imprint.engine.attribution as A

    imgs, y, _ = corpus
    monkeypatch.setattr(A, "K_RULE", "silhouette")
    r = attribute(imgs, None, random_state=0, k_max=7, processing_invariant=False, stability_resamples=0)
    assert r.k == 4 and set(r.info["k_scan_silhouette"]) == {str(k) for k in range(2, 8)}
    assert r.info["k_scan_pair_separation"] == {}


def test_content_groups_are_not_extracted(corpus):
    # 'hist' and 'ispec' are left out of clustering, so they are no longer computed ...
    import imprint.engine.attribution as A
    from imprint.engine.processing import augment

    imgs, y, _ = corpus
    calls = []
    orig = A._extract

    def spy(images, groups, *a, **kw):
        calls.append(tuple(groups))
        return orig(images, groups, *a, **kw)

    A._extract = spy
    try:
        r = attribute(imgs, 4, random_state=0, backbones=(), stability_resamples=0)
    finally:
        A._extract = orig
    assert calls and all("hist" not in g and "ispec" not in g for g in calls)
    assert r.info["content_groups_excluded"] == ["hist", "ispec"]
    assert adjusted_rand_score(y, r.labels) >= 0.99
    # ... which changes nothing else: the processing projection is block-diagonal per group, so the other groups'
    # projected features are the same whether or not the content groups were extracted with them
    groups = ("hist", "resid", "rspec", "ispec", "lbp")
    X, names = F.extract(imgs[:40], groups)
    Xa = F.extract(augment(imgs[:40], 0), groups)[0]
    masks = A._group_masks(names, groups)
    full = F.NuisanceProjection.fit(X, Xa, masks).transform(X)
    keep = ~(masks["hist"] | masks["ispec"])
    part = F.NuisanceProjection.fit(X[:, keep], Xa[:, keep], {g: m[keep] for g, m in masks.items()
                                                              if g not in ("hist", "ispec")}).transform(X[:, keep])
    np.testing.assert_allclose(full[:, keep], part, rtol=0, atol=1e-9)


def test_dev_sets_with_unseen_model(corpus):
    """Dev knows three generators; the fourth (absent from dev) must form its own cluster."""
    imgs, y, dev = corpus
    known = {m: dev[m] for m in MODELS[:3]}
    r = attribute(imgs, 4, dev_sets=known, random_state=3)
    assert r.info["dev_weighting"] is True
    assert adjusted_rand_score(y, r.labels) >= 0.99
    unseen = r.labels[y == 3]
    assert len(np.unique(unseen)) == 1
    assert np.sum(r.labels == unseen[0]) == np.sum(y == 3)


def test_subsampled_consensus_matches(corpus):
    imgs, y, _ = corpus
    r = attribute(imgs, 4, random_state=0, max_consensus=50)
    assert r.info["consensus_subsample"] == 50
    assert adjusted_rand_score(y, r.labels) >= 0.95


def test_edge_k_values(corpus):
    imgs, _, _ = corpus
    r1 = attribute(imgs[:10], 1)
    assert r1.k == 1 and np.all(r1.labels == 0)
    json.dumps(r1.info, allow_nan=False)
    rn = attribute(imgs[:6], 6)
    assert sorted(rn.labels.tolist()) == list(range(6))


@pytest.mark.parametrize(
    "k, images",
    [
        (0, None),
        (-2, None),
        (7, None),  # k > N
        (2.5, None),
        (True, None),
        (2, np.zeros((6, 32, 32), np.float32)),
        (2, np.zeros((32, 32), np.uint8)),
        (2, np.zeros((0, 32, 32), np.uint8)),
    ],
)
def test_input_validation(k, images):
    imgs = np.zeros((6, 32, 32), np.uint8) if images is None else images
    with pytest.raises(ImprintError):
        attribute(imgs, k)


def test_dev_size_mismatch_rejected(corpus):
    imgs, _, _ = corpus
    with pytest.raises(ImprintError):
        attribute(imgs, 2, dev_sets={"m": np.zeros((4, 32, 32), np.uint8)})


# ------------------------------------------------------------------------------- feature helpers
def test_noise_residual_matches_scipy():
    x = np.random.default_rng(0).integers(0, 256, (3, 20, 17)).astype(np.uint8)
    ref = x.astype(np.float64) - ndimage.uniform_filter(x.astype(np.float64), size=(1, 3, 3), mode="nearest")
    np.testing.assert_allclose(F.noise_residuals(x), ref, atol=1e-4)


def test_radial_profile_bruteforce():
    rng = np.random.default_rng(1)
    p = rng.random((2, 16, 12))
    got = F.radial_profile(p, nbins=5)
    fy, fx = np.fft.fftfreq(16), np.fft.fftfreq(12)
    sums, cnt = np.zeros((2, 5)), np.zeros(5)
    for i in range(16):
        for j in range(12):
            if i == 0 and j == 0:
                continue
            b = int(np.sqrt(fy[i] ** 2 + fx[j] ** 2) / 0.5 * 5)
            if b < 5:
                sums[:, b] += p[:, i, j]
                cnt[b] += 1
    np.testing.assert_allclose(got, sums / cnt, rtol=1e-12)


def test_hist_quantiles_match_numpy():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (4, 500))
    counts = F._rowwise_bincount(x, 256)
    qs = (0.01, 0.3, 0.5, 0.99)
    ref = np.percentile(x, [q * 100 for q in qs], axis=1, method="inverted_cdf").T
    np.testing.assert_array_equal(F._hist_quantiles(counts, qs), ref)


def test_numpy_lbp_fallback_bruteforce():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (2, 9, 11)).astype(np.uint8)
    got = F._lbp_uniform_hist(x)
    offs = [(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)]
    ref = np.zeros((2, 10))
    for n in range(2):
        for i in range(9):
            for j in range(11):
                c = int(x[n, i, j])
                bits = [int(x[n, min(max(i + dy, 0), 8), min(max(j + dx, 0), 10)]) >= c for dy, dx in offs]
                t = sum(bits[q] != bits[q - 1] for q in range(8))
                ref[n, sum(bits) if t <= 2 else 9] += 1
    np.testing.assert_allclose(got, ref / 99.0)


def test_extract_shapes_and_finite():
    x = np.zeros((3, 32, 32), np.uint8)  # constant images must still give finite features
    x[1] = 255
    x[2, ::2] = 100
    f, names = F.extract(x)
    assert f.shape == (3, len(names)) and np.all(np.isfinite(f))
    with pytest.raises(ImprintError):
        F.extract(x, groups=("nope",))


def test_backbone_views_optional(corpus):
    imgs, y, _ = corpus
    r = attribute(imgs, 4, backbones=("no-such-backbone",), random_state=0)
    assert r.info["backbones"] == [] and "no-such-backbone" in r.info["backbone_errors"]
    assert not any(v.startswith("backbone:") for v in r.info["views"])
    assert adjusted_rand_score(y, r.labels) >= 0.99


def test_identical_images_do_not_crash():
    x = np.full((12, 32, 32), 90, np.uint8)
    r = attribute(x, 3)
    assert r.k == 3 and r.labels.shape == (12,) and np.all(np.isfinite(r.confidence))
    ra = attribute(x, None, k_max=4)
    assert 1 <= ra.k <= 4 and ra.labels.max() < ra.k
    json.dumps(ra.info, allow_nan=False)
