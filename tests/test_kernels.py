"""Tests for kernels/: compared against scikit-image, scipy and brute-force numpy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.feature import local_binary_pattern
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

import imprint.kernels as kernels
from imprint.kernels import (
    FINGERPRINT_FEATURE_NAMES,
    fingerprint_features,
    lbp,
    lbp_histograms,
    mse_pairs,
    noise_residuals,
    psnr_pairs,
    ssim,
    ssim_mse_pairs,
    ssim_pairs,
)


# ----------------------------------------------------------------------------- fixtures
def ct_like(rng, h=64, w=64, dtype=np.uint8):
    """Smooth-blob 'CT-like' slice: dark background, elliptic body, organs, noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = h / 2 + rng.normal(0, h / 20), w / 2 + rng.normal(0, w / 20)
    body = ((yy - cy) / (0.42 * h)) ** 2 + ((xx - cx) / (0.45 * w)) ** 2 < 1
    img = np.where(body, 110.0, 0.0)
    for _ in range(6):  # lungs / organs as Gaussian blobs
        by, bx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
        s = rng.uniform(0.04, 0.15) * min(h, w)
        amp = rng.uniform(-90, 120)
        img += amp * np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * s * s)) * body
    img += rng.normal(0, 4, (h, w)) * body
    img = ndi.gaussian_filter(img, 0.7)
    img = np.clip(img, 0, 255)
    if dtype == np.uint8:
        return np.round(img).astype(np.uint8)
    return img.astype(dtype)


def sk_ssim(a, b, data_range=255.0):
    return structural_similarity(
        a, b, data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )


def sk_lbp(img, P, R, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return local_binary_pattern(img, P, R, method)


# ----------------------------------------------------------------------------- SSIM
@pytest.mark.parametrize("shape", [(11, 11), (11, 17), (23, 12), (40, 33), (64, 64)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_ssim_matches_skimage_random(shape, dtype):
    rng = np.random.default_rng([shape[0], shape[1], np.dtype(dtype).itemsize])
    a = rng.integers(0, 256, shape).astype(dtype)
    b = np.clip(a.astype(np.float64) + rng.normal(0, 30, shape), 0, 255).astype(dtype)
    if dtype != np.uint8:
        a = (a + rng.uniform(0, 1, shape)).astype(dtype)
    assert abs(ssim(a, b) - sk_ssim(a, b)) < 1e-4
    assert abs(ssim(a, a) - 1.0) < 1e-6


def test_ssim_ct_like_and_constant_images():
    rng = np.random.default_rng(1)
    for _ in range(4):
        a = ct_like(rng, 72, 60)
        b = ct_like(rng, 72, 60)
        assert abs(ssim(a, b) - sk_ssim(a, b)) < 1e-6  # uint8: float64 on both sides
        af, bf = a.astype(np.float32), b.astype(np.float32)
        assert abs(ssim(af, bf) - sk_ssim(af, bf)) < 1e-4
    c0 = np.zeros((20, 20), np.uint8)
    c1 = np.full((20, 20), 200, np.uint8)
    for x, y in [(c0, c0), (c0, c1), (c1, c1), (c1, ct_like(rng, 20, 20))]:
        assert abs(ssim(x, y) - sk_ssim(x, y)) < 1e-6
    # flat regions far from the image mean (worst case for cancellation)
    h = np.zeros((48, 48), np.uint8)
    h[:24] = 255
    # identical images: 1 up to the float32 rounding of the stored variances
    assert abs(ssim(h, h) - 1.0) < 1e-7
    assert abs(ssim(h, 255 - h) - sk_ssim(h, 255 - h)) < 1e-8


def _flat_bright_cases(rng):
    """Flat regions far from the image mean (the cancellation worst case) and CT-like pairs."""
    out = []
    for lev in (200, 255):
        a = np.full((40, 44), lev, np.uint8)
        a[:, :7] = 0
        b = a.copy()
        b[20:, 15:] = lev - 3
        noisy = np.clip(a.astype(int) + rng.integers(-1, 2, a.shape), 0, 255).astype(np.uint8)
        other = np.full_like(a, 80)
        other[:, :7] = 0
        out += [(a, b), (a, noisy), (a, other)]
    a = ct_like(rng, 40, 44)
    out += [(a, ct_like(rng, 40, 44)), (a, np.clip(a + rng.normal(0, 2, a.shape), 0, 255).astype(np.uint8))]
    return out


def test_ssim_tight_accuracy_flat_bright_and_float():
    """Worst cases for cancellation stay far below the 1e-4 tolerance.

    uint8: float64 skimage is exact to ~1e-12, ours (int32 fixed-point means,
    float32 variances) must agree to 2e-8.  float32 inputs: compared with
    skimage on the same values in float64 (2e-8) and with skimage's own float32
    computation (whose rounding error dominates; 2e-5).
    """
    rng = np.random.default_rng(12)
    cases = _flat_bright_cases(rng)
    A = np.stack([a for a, _ in cases])
    B = np.stack([b for _, b in cases])
    pairs = np.stack([np.arange(len(cases))] * 2, 1)
    got = ssim_pairs(A, B, pairs).astype(np.float64)
    for k, (a, b) in enumerate(cases):
        ref = sk_ssim(a, b)
        assert abs(ssim(a, b) - ref) < 2e-8
        assert abs(got[k] - ref) < 1e-7  # float32 output
        af = (a + rng.uniform(0, 0.9, a.shape)).astype(np.float32)
        bf = (b + rng.uniform(0, 0.9, b.shape)).astype(np.float32)
        assert abs(ssim(af, bf) - sk_ssim(af.astype(np.float64), bf.astype(np.float64))) < 2e-8
        assert abs(ssim(af, bf) - sk_ssim(af, bf)) < 2e-5
    # float data on tiny to huge scales (fixed-point step and variance units adapt;
    # a plain float32 variance would underflow at 1e-20 and overflow at 1e30)
    for scale in (1e-20, 1 / 255, 1000.0, 1e30):
        a, b = (cases[0][0] * scale).astype(np.float32), (cases[0][1] * scale).astype(np.float32)
        r = 255 * scale
        assert abs(ssim(a, b, data_range=r) - sk_ssim(a.astype(np.float64), b.astype(np.float64), r)) < 2e-8


def test_ssim_pairs_grouping_swap_and_tiling():
    """Unsorted pairs, more distinct B than A (roles swapped), tiny stats budgets."""
    rng = np.random.default_rng(13)
    A = np.stack([ct_like(rng, 30, 26) for _ in range(3)])
    B = np.stack([ct_like(rng, 30, 26) for _ in range(9)])
    pairs = np.stack([rng.integers(0, 3, 25), rng.integers(0, 9, 25)], 1)
    ref = np.array([sk_ssim(A[i], B[j]) for i, j in pairs])
    for budget in (2**30, 1, 3 * 8 * 20 * 16):
        np.testing.assert_allclose(ssim_pairs(A, B, pairs, max_cache_bytes=budget), ref, atol=1e-7)
    # swapped argument order gives the same values (SSIM is symmetric)
    np.testing.assert_allclose(ssim_pairs(B, A, pairs[:, ::-1]), ref, atol=1e-7)


def test_ssim_data_range_and_edges():
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 1, (30, 25)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    assert abs(ssim(a, b, data_range=1.0) - sk_ssim(a, b, data_range=1.0)) < 1e-4
    # edge handling: pixels within 5 of the border only enter through windows of
    # retained pixels, so changing the border changes SSIM exactly as skimage does
    x = ct_like(rng, 32, 32)
    y = x.copy()
    y[0, :] = 255 - y[0, :]
    y[:, -1] = 0
    assert abs(ssim(x, y) - sk_ssim(x, y)) < 1e-9


def test_ssim_pairs_matches_ssim_with_repeats():
    rng = np.random.default_rng(3)
    A = np.stack([ct_like(rng, 40, 48) for _ in range(5)])
    B = np.stack([ct_like(rng, 40, 48) for _ in range(7)])
    pairs = np.array([[0, 0], [0, 3], [4, 6], [2, 2], [0, 0], [3, 1], [1, 5], [4, 0]], np.int64)
    got = ssim_pairs(A, B, pairs)
    assert got.dtype == np.float32 and got.shape == (len(pairs),)
    ref = np.array([sk_ssim(A[i], B[j]) for i, j in pairs])
    np.testing.assert_allclose(got, ref, atol=1e-6)
    # tiling path (tiny stats budget) gives the same values
    tiled = ssim_pairs(A, B, pairs, max_cache_bytes=1)
    np.testing.assert_allclose(tiled, got, atol=1e-7)
    # float32 stacks and mixed dtypes
    gotf = ssim_pairs(A.astype(np.float32), B, pairs)
    np.testing.assert_allclose(gotf, ref, atol=1e-4)
    assert ssim_pairs(A, B, np.zeros((0, 2), np.int64)).shape == (0,)


def test_ssim_errors():
    a = np.zeros((20, 20), np.uint8)
    with pytest.raises(ValueError):
        ssim(a, np.zeros((20, 21), np.uint8))
    with pytest.raises(ValueError):
        ssim(np.zeros((10, 20), np.uint8), np.zeros((10, 20), np.uint8))  # < 11x11
    with pytest.raises(ValueError):
        ssim(a[None], a[None])
    bad = np.zeros((20, 20), np.float32)
    bad[3, 3] = np.nan
    with pytest.raises(ValueError):
        ssim(bad, bad)
    with pytest.raises(ValueError):
        ssim(a.astype(np.int16), a.astype(np.int16))
    with pytest.raises(ValueError):
        ssim(a, a, data_range=0)
    A = np.zeros((3, 20, 20), np.uint8)
    with pytest.raises(ValueError):
        ssim_pairs(A, A, np.array([[0, 3]]))
    with pytest.raises(ValueError):
        ssim_pairs(A, A, np.array([[-1, 0]]))
    with pytest.raises(ValueError):
        ssim_pairs(A, A, np.array([0, 1]))
    with pytest.raises(ValueError):
        ssim_pairs(A, A, np.array([[0.0, 1.0]]))
    with pytest.raises(ValueError):
        ssim_pairs(A, np.zeros((3, 20, 19), np.uint8), np.array([[0, 1]]))
    with pytest.raises(ValueError):
        ssim_pairs(A[:, :10], A[:, :10], np.array([[0, 1]]))


@pytest.mark.parametrize("odd", [False, True])
def test_ssim_mse_pairs_one_pass_equals_references(odd):
    """The fused pass (SSIM and MSE of each pair) equals skimage's SSIM and MSE (float64 values to 2e-8) and the
    separate kernels, on a kNN-like shortlist (repeated images, both grouping directions, stats blocks,
    an odd number of output rows)."""
    from imprint.kernels.similarity import _ssim_pairs_f64

    rng = np.random.default_rng(21)
    h, w = (41, 37) if odd else (48, 44)
    A = np.stack([ct_like(rng, h, w) for _ in range(6)])
    B = np.stack([ct_like(rng, h, w) for _ in range(9)])
    B[3] = A[2]  # an identical pair: SSIM 1, MSE 0
    B[4] = np.clip(A[0].astype(int) + rng.integers(-3, 4, A[0].shape), 0, 255).astype(np.uint8)
    pairs = np.stack([np.repeat(np.arange(6), 5), rng.integers(0, 9, 30)], 1)
    pairs[:2] = [[2, 3], [0, 4]]
    s, m = ssim_mse_pairs(A, B, pairs)
    assert s.dtype == np.float32 and m.dtype == np.float32 and s.shape == m.shape == (30,)
    ref_s = np.array([structural_similarity(A[i], B[j], data_range=255, gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False) for i, j in pairs])
    ref_m = np.array([mean_squared_error(A[i], B[j]) for i, j in pairs])
    np.testing.assert_allclose(s, ref_s, atol=1e-7)
    assert abs(s[0] - 1.0) < 1e-7 and m[0] == 0.0 and s[1] > 0.9
    np.testing.assert_array_equal(m, mse_pairs(A, B, pairs))  # uint8: exact on both paths
    np.testing.assert_allclose(m, ref_m, rtol=1e-6)
    np.testing.assert_array_equal(s, ssim_pairs(A, B, pairs))
    # the kernel's float64 values (before the float32 output) equal skimage's float64 computation to 2e-8
    s64, sse64 = _ssim_pairs_f64(A, B, pairs, 255.0, 2**30, with_sse=True)
    np.testing.assert_allclose(s64, ref_s, rtol=0, atol=2e-8)
    exact_sse = [int(((A[i].astype(np.int64) - B[j]) ** 2).sum()) for i, j in pairs]
    np.testing.assert_array_equal(sse64, exact_sse)  # integers summed exactly
    # roles swapped (grouping by the other side) and tiny stats blocks give the same values
    s2, m2 = ssim_mse_pairs(B, A, pairs[:, ::-1], max_cache_bytes=1)
    np.testing.assert_allclose(s2, s, atol=1e-7)
    np.testing.assert_array_equal(m2, m)
    # float32 stacks: MSE up to the summation order
    sf, mf = ssim_mse_pairs(A.astype(np.float32) + 0.25, B.astype(np.float32), pairs)
    np.testing.assert_allclose(mf, mse_pairs(A.astype(np.float32) + 0.25, B.astype(np.float32), pairs), rtol=1e-6)
    assert ssim_mse_pairs(A, B, np.zeros((0, 2), np.int64))[1].shape == (0,)
    with pytest.raises(ValueError):
        ssim_mse_pairs(A, B, np.array([[6, 0]]))


# ----------------------------------------------------------------------------- MSE / PSNR
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_mse_psnr_pairs(dtype):
    rng = np.random.default_rng(4)
    A = rng.integers(0, 256, (4, 13, 17)).astype(dtype)
    B = rng.integers(0, 256, (6, 13, 17)).astype(dtype)
    B[2] = A[1]
    pairs = np.array([[0, 0], [1, 2], [3, 5], [0, 0], [2, 4]])
    mse = mse_pairs(A, B, pairs)
    ref = np.array([mean_squared_error(A[i], B[j]) for i, j in pairs])
    np.testing.assert_allclose(mse, ref, rtol=1e-6)
    ps = psnr_pairs(A, B, pairs)
    with np.errstate(divide="ignore"):
        ref_ps = np.array(
            [peak_signal_noise_ratio(A[i], B[j], data_range=255) for i, j in pairs]
        )
    assert np.isinf(ps[1]) and np.isinf(ref_ps[1])
    fin = np.isfinite(ref_ps)
    np.testing.assert_allclose(ps[fin], ref_ps[fin], rtol=1e-5)
    with pytest.raises(ValueError):
        mse_pairs(A, B, np.array([[4, 0]]))
    with pytest.raises(ValueError):
        psnr_pairs(A, B, pairs, data_range=-1)
    with pytest.raises(ValueError):
        mse_pairs(A, B[:, :, :5], pairs)


# ----------------------------------------------------------------------------- LBP
def _lbp_images(rng):
    yy, xx = np.mgrid[:37, :45]
    smooth = (120 + 80 * np.sin(xx / 7.0) * np.cos(yy / 5.0)).astype(np.uint8)
    return {
        "random": rng.integers(0, 256, (33, 41), dtype=np.uint8),
        "few_levels": rng.integers(0, 3, (29, 31), dtype=np.uint8),  # many ties
        "smooth": smooth,
        "ct": ct_like(rng, 48, 40),
        "constant": np.full((16, 16), 9, np.uint8),
        # bright flat areas with ties: (1-dc)*v + dc*v need not round to v,
        # so threshold ties depend on skimage's exact interpolation rounding
        "bright_ties": rng.integers(200, 202, (30, 34), dtype=np.uint8),
        "float": rng.normal(size=(21, 26)).astype(np.float32),
        "tiny": rng.integers(0, 256, (3, 4), dtype=np.uint8),
    }


@pytest.mark.parametrize("P,R", [(8, 1), (8, 2), (16, 2), (24, 3)])
@pytest.mark.parametrize("method", ["default", "ror", "uniform", "nri_uniform"])
def test_lbp_equals_skimage(P, R, method):
    rng = np.random.default_rng(P * 10 + len(method))
    for name, img in _lbp_images(rng).items():
        got = lbp(img, P, R, method)
        ref = sk_lbp(img, P, R, method)
        assert got.dtype == ref.dtype and got.shape == ref.shape
        assert np.array_equal(got, ref), (name, int((got != ref).sum()))


def test_lbp_odd_radius_equals_skimage():
    rng = np.random.default_rng(7)
    img = ct_like(rng, 30, 30)
    for P, R in [(4, 1.5), (12, 2.5)]:
        for method in ["default", "uniform", "nri_uniform"]:
            assert np.array_equal(lbp(img, P, R, method), sk_lbp(img, P, R, method))


@pytest.mark.parametrize(
    "P,R,method",
    [(8, 1, "uniform"), (16, 2, "nri_uniform"), (8, 1, "ror"), (24, 3, "uniform"), (12, 2, "default"), (14, 2, "uniform")],
)
def test_lbp_histograms_match_loop(P, R, method):
    rng = np.random.default_rng(8)
    imgs = np.stack([ct_like(rng, 36, 40) for _ in range(5)])
    h = lbp_histograms(imgs, P, R, method)
    bins = kernels.lbp_n_bins(P, method)
    assert h.shape == (5, bins) and h.dtype == np.float32
    for n in range(5):
        codes = sk_lbp(imgs[n], P, R, method)
        ref, _ = np.histogram(codes, bins=bins, range=(0, bins))
        np.testing.assert_allclose(h[n], ref / codes.size, atol=1e-7)
    np.testing.assert_allclose(h.sum(1), 1.0, atol=1e-5)


def test_lbp_errors():
    img = np.zeros((10, 10), np.uint8)
    for kwargs in [dict(P=0), dict(P=2.5), dict(R=0), dict(R=np.nan), dict(method="var"), dict(method=3)]:
        with pytest.raises(ValueError):
            lbp(img, **kwargs)
    with pytest.raises(ValueError):
        lbp(img[None])
    with pytest.raises(ValueError):
        lbp_histograms(img)
    with pytest.raises(ValueError):
        lbp_histograms(img[None], P=24, R=3, method="default")
    bad = np.zeros((1, 10, 10), np.float64)
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError):
        lbp_histograms(bad)


# ----------------------------------------------------------------------------- fingerprints
def test_noise_residuals_match_scipy_median():
    rng = np.random.default_rng(9)
    imgs = np.stack([ct_like(rng, 33, 28) for _ in range(3)] + [rng.integers(0, 256, (33, 28), dtype=np.uint8)])
    res = noise_residuals(imgs)
    assert res.dtype == np.float32 and res.shape == imgs.shape
    for n in range(len(imgs)):
        ref = imgs[n].astype(np.float32) - ndi.median_filter(imgs[n], size=3, mode="reflect").astype(np.float32)
        np.testing.assert_array_equal(res[n], ref)
    f = rng.normal(size=(2, 12, 15)).astype(np.float32)
    res_f = noise_residuals(f)
    for n in range(2):
        np.testing.assert_array_equal(res_f[n], f[n] - ndi.median_filter(f[n], size=3, mode="reflect"))
    with pytest.raises(ValueError):
        noise_residuals(f[0])


def _reference_features(img):
    """Brute-force numpy re-implementation of a subset of the features."""
    h, w = img.shape
    res = img.astype(np.float32) - ndi.median_filter(img, size=3, mode="reflect").astype(np.float32)
    res = res.astype(np.float64)
    win = np.outer(np.hanning(h), np.hanning(w))
    p = np.abs(np.fft.fft2(res * win)) ** 2 / (win**2).sum()
    lp = np.log10(p + 1e-10)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    rho = np.sqrt(fy**2 + fx**2) / 0.5
    radial = []
    for k in range(32):
        m = (rho > k / 32) & (rho <= (k + 1) / 32)
        radial.append(lp[m].mean())
    d = res - res.mean()
    sd = d.std()
    mom = [np.log10(sd + 1e-6), (d**3).mean() / sd**3, (d**4).mean() / sd**4 - 3, (d[:, :-1] * d[:, 1:]).mean() / sd**2]
    iy, ix = h // 2, 0  # peak_v_half
    inner = lp[np.ix_([(iy + k) % h for k in (-1, 0, 1)], [(ix + k) % w for k in (-1, 0, 1)])].max()
    rows = [(iy + k) % h for k in range(-4, 5)]
    cols = [(ix + k) % w for k in range(-4, 5)]
    blk = lp[np.ix_(rows, cols)]
    ring = np.ones((9, 9), bool)
    ring[3:6, 3:6] = False
    peak_v = inner - blk[ring].mean()
    codes = sk_lbp(res, 8, 1, "uniform")
    hist = np.bincount(codes.astype(int).ravel(), minlength=10) / codes.size
    return np.array(radial), np.array(mom), peak_v, hist


def test_fingerprint_features_against_numpy_reference():
    rng = np.random.default_rng(10)
    imgs = np.stack([ct_like(rng, 64, 64) for _ in range(3)])
    F = fingerprint_features(imgs)
    names = list(FINGERPRINT_FEATURE_NAMES)
    assert F.shape == (3, len(names)) and F.dtype == np.float32
    assert len(set(names)) == len(names)
    assert np.isfinite(F).all()
    for n in range(3):
        radial, mom, peak_v, hist = _reference_features(imgs[n])
        np.testing.assert_allclose(F[n, :32], radial, atol=2e-3)
        i0 = names.index("res_log_std")
        np.testing.assert_allclose(F[n, i0 : i0 + 3], mom[:3], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(F[n, names.index("acf_h1")], mom[3], atol=1e-4)
        np.testing.assert_allclose(F[n, names.index("peak_v_half")], peak_v, atol=2e-3)
        i1 = names.index("lbp_u00")
        np.testing.assert_allclose(F[n, i1 : i1 + 10], hist, atol=1e-6)


def test_fingerprint_detects_checkerboard_and_upsampling():
    rng = np.random.default_rng(11)
    base = np.stack([ct_like(rng, 64, 64, np.float64) for _ in range(4)])
    yy, xx = np.mgrid[:64, :64]
    checker = base + 3.0 * ((yy + xx) % 2)
    F0 = fingerprint_features(np.round(base).astype(np.uint8))
    F1 = fingerprint_features(np.round(checker).clip(0, 255).astype(np.uint8))
    k = list(FINGERPRINT_FEATURE_NAMES).index("peak_d_half")
    assert (F1[:, k] > F0[:, k] + 1.0).all()
    # nearest-neighbour 2x upsampling of noise -> strong positive lag-1 correlation
    noise = rng.normal(128, 20, (4, 32, 32))
    up = np.repeat(np.repeat(noise, 2, axis=1), 2, axis=2).clip(0, 255).astype(np.uint8)
    white = rng.normal(128, 20, (4, 64, 64)).clip(0, 255).astype(np.uint8)
    Fu, Fw = fingerprint_features(up), fingerprint_features(white)
    assert np.isfinite(Fu).all() and np.isfinite(Fw).all()
    names = list(FINGERPRINT_FEATURE_NAMES)
    h1, top = names.index("acf_h1"), names.index("spec_r31")
    assert (Fu[:, h1] > 0.1).all() and (Fw[:, h1] < 0.0).all()
    assert (Fu[:, top] < Fw[:, top] - 0.5).all()  # upsampling removes the top octave


def test_fingerprint_constant_small_and_errors():
    F = fingerprint_features(np.full((2, 16, 20), 77, np.uint8))
    assert np.isfinite(F).all()
    F2 = fingerprint_features(np.random.default_rng(0).integers(0, 256, (1, 16, 16), dtype=np.uint8))
    assert np.isfinite(F2).all()
    assert fingerprint_features(np.zeros((0, 32, 32), np.uint8)).shape == (0, len(FINGERPRINT_FEATURE_NAMES))
    with pytest.raises(ValueError):
        fingerprint_features(np.zeros((2, 15, 32), np.uint8))
    with pytest.raises(ValueError):
        fingerprint_features(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError):
        fingerprint_features(np.full((1, 32, 32), np.nan, np.float32))


# ----------------------------------------------------------------------------- GIL release (LBP / fingerprint)
def test_lbp_and_fingerprint_kernels_release_the_gil_and_give_the_same_values_from_threads():
    """The LBP / fingerprint Numba kernels called from Python are ``nogil`` (so two evidence pools on two threads
    overlap there, as in kernels/similarity.py); four threads at once give the serial results bit for bit, and the
    LBP histograms still equal scikit-image's codes counted."""
    from concurrent.futures import ThreadPoolExecutor

    from imprint.kernels import fingerprint as fp
    from imprint.kernels import texture as tx

    for disp in (tx._lbp_hist_kernel, tx._lbp_codes_image, tx._axis_table, tx._code_lut, fp._residual_batch,
                 fp._moments_batch):
        assert disp.targetoptions.get("nogil") is True, disp.py_func.__name__
    rng = np.random.default_rng(12)
    batches = [np.stack([ct_like(rng, 40, 36) for _ in range(6)]) for _ in range(4)]

    def work(x):
        return (lbp_histograms(x, 8, 1, "uniform"), lbp_histograms(x, 16, 2, "nri_uniform"), lbp(x[0], 8, 2, "ror"),
                noise_residuals(x), fingerprint_features(x))

    serial = [work(x) for x in batches]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(work, batches))
    for s, t in zip(serial, threaded):
        for a, b in zip(s, t):
            np.testing.assert_array_equal(a, b)
    for x, s in zip(batches, serial):
        for n in range(len(x)):
            codes = sk_lbp(x[n], 8, 1, "uniform")
            np.testing.assert_allclose(s[0][n], np.bincount(codes.astype(int).ravel(), minlength=10) / codes.size,
                                       atol=1e-7)
        assert np.array_equal(s[2], sk_lbp(x[0], 8, 2, "ror"))
