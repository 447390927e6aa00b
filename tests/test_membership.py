"""Tests for engine.membership on constructed (synthetic, CT-like) cases.

Every fixture is generated here with a seed: smooth elliptic "bodies" with two dark "lungs",
smooth vessel-like texture and a little noise.  Reference implementations: brute-force numpy
distances, numpy median/MAD, scipy/sklearn.
"""

import numpy as np
import pytest
from scipy import ndimage, stats

from imprint.engine.errors import ImprintError
from imprint.engine.membership import (DevSet, anatomy_masks, audit_membership, compute_evidence, estimate_used_share,
                               f1_decision, fit_weights, null_threshold, robust_calibrate, zscore_images)

H = 64


def phantom(rng, h=H, tex_amp=60.0):
    """One smooth CT-like axial slice, uint8 [h, h] (``tex_amp``: texture amplitude)."""
    yy, xx = np.mgrid[0:h, 0:h].astype(np.float64) / h
    cy, cx = 0.5 + rng.normal(0, 0.03, 2)
    ay, ax = rng.uniform(0.25, 0.36), rng.uniform(0.36, 0.46)
    body = ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 < 1
    img = np.where(body, rng.uniform(150, 200), 5.0)
    for side in (-1, 1):
        ly, lx = cy + rng.normal(0, 0.03), cx + side * rng.uniform(0.14, 0.22)
        by, bx = rng.uniform(0.12, 0.22), rng.uniform(0.08, 0.14)
        lung = ((yy - ly) / by) ** 2 + ((xx - lx) / bx) ** 2 < 1
        img = np.where(lung, rng.uniform(20, 50), img)
    tex = ndimage.gaussian_filter(rng.normal(0, 1, (h, h)), 1.5)
    img = img + tex_amp * tex / tex.std() * body
    img = ndimage.gaussian_filter(img, 0.7) + rng.normal(0, 2, (h, h))
    return np.clip(img, 0, 255).astype(np.uint8)


def phantoms(n, seed, tex_amp=60.0):
    rng = np.random.default_rng(seed)
    return np.stack([phantom(rng, tex_amp=tex_amp) for _ in range(n)])


@pytest.fixture(scope="module")
def scenario():
    """Real candidates, reference non-members and a generator that copies some candidates.

    Candidates 0..3 are members copied in four ways (exact, noisy, contrast-shifted, partial);
    candidate 4 is a typical unused image, candidate 5 an atypical unused one (inverted body).
    """
    rng = np.random.default_rng(1)
    real = phantoms(30, 10)
    real[5] = 255 - real[5]                                    # atypical non-member
    fresh = phantoms(60, 11)                                   # the generator's own samples
    gen = fresh.copy()
    gen[7] = real[0]                                           # exact copy
    gen[13] = np.clip(real[1] + rng.normal(0, 6, real[1].shape), 0, 255).astype(np.uint8)  # noisy copy
    gen[21] = np.clip(0.6 * real[2] + 70, 0, 255).astype(np.uint8)                         # contrast shift
    part = fresh[30].copy()
    part[:, : H // 2] = real[3][:, : H // 2]                   # left half copied
    gen[30] = part
    reference = phantoms(60, 12)
    return dict(real=real, gen=gen, reference=reference, copies={0: 7, 1: 13, 2: 21, 3: 30})


def _brute_sq(A, B):
    a = A.reshape(len(A), -1).astype(np.float64)
    b = B.reshape(len(B), -1).astype(np.float64)
    return ((a[:, None, :] - b[None, :, :]) ** 2).mean(2)


def test_zscore_images_matches_numpy_and_is_contrast_invariant():
    x = phantoms(3, 0)
    z = zscore_images(x)
    f = x.reshape(3, -1).astype(np.float64)
    ref = (f - f.mean(1, keepdims=True)) / f.std(1, keepdims=True)
    np.testing.assert_allclose(z.reshape(3, -1), ref, atol=1e-4)
    shifted = np.clip(0.5 * x.astype(np.float64) + 40, 0, 255)
    np.testing.assert_allclose(zscore_images(shifted), z, atol=0.02)
    assert np.all(zscore_images(np.full((1, 8, 8), 7, np.uint8)) == 0)


def test_evidence_matches_brute_force(scenario):
    real, gen = scenario["real"], scenario["gen"]
    ev, nearest, info = compute_evidence(gen, real, backbone=None, k_gen=5, k_real=5)
    zr, zg = zscore_images(real), zscore_images(gen)
    DG = _brute_sq(zr, zg)
    DR = _brute_sq(zr, zr)
    np.fill_diagonal(DR, np.inf)
    np.testing.assert_allclose(ev["pixel_nn_dist"], DG.min(1), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(ev["real_nn_dist"], DR.min(1), rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(nearest[:, 0], DG.argmin(1))
    np.testing.assert_allclose(ev["pixel_nn_ratio"], -np.log((DG.min(1) + 1e-6) / (DR.min(1) + 1e-6)), atol=1e-3)
    # hubness: how many generated images have this real as nearest real
    hub = np.bincount(DG.argmin(0), minlength=len(real))
    np.testing.assert_allclose(ev["hub"], np.log1p(hub))
    # raw-intensity MSE over the shortlist: the exact copy has MSE 0 and is found
    raw = _brute_sq(real, gen)
    short = np.take_along_axis(raw, nearest, 1).min(1)
    np.testing.assert_allclose(ev["mse_nn"], short, rtol=1e-5)
    assert ev["mse_nn"][0] == 0 and nearest[0, 0] == scenario["copies"][0]
    # best SSIM over the shortlist against skimage
    from skimage.metrics import structural_similarity
    i = 2
    s = max(structural_similarity(zr[i], zg[j], data_range=6.0, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False) for j in nearest[i])
    assert ev["ssim_nn"][i] == pytest.approx(s, abs=1e-3)
    for v in ev.values():
        assert v.shape == (len(real),) and np.all(np.isfinite(v))


def test_copies_rank_above_typical_and_atypical_unused(scenario):
    res = audit_membership(scenario["gen"], scenario["real"], reference=scenario["reference"], backbone=None)
    s = res.score
    members = [0, 1, 2, 3]
    non = [i for i in range(len(s)) if i not in members]
    assert min(s[members]) > max(s[non])
    # the contrast-shifted copy is invisible to raw MSE but found by the normalised evidence
    assert res.evidence["pixel_nn_ratio"][2] > np.max(res.evidence["pixel_nn_ratio"][non])
    # the partial copy is found by the tile evidence
    assert res.evidence["tile_ratio"][3] > np.max(res.evidence["tile_ratio"][non])
    flagged = set(np.flatnonzero(res.used).tolist())
    assert res.used.dtype == np.int8 and set(members) <= flagged and len(flagged - set(members)) <= 1
    assert res.used[5] == 0 and res.used[4] == 0     # typical and atypical non-members
    assert res.nearest.shape[0] == len(s)
    for m, g in scenario["copies"].items():
        assert g in res.nearest[m, :3]
    th = res.info["threshold_detail"]         # 60 reference images: fewer than fpr:0.01 needs, so the fallback
    assert res.threshold == pytest.approx(th["threshold"] if th["exact"] else th["fallback"])
    import json
    json.dumps(res.info)


def test_unsupervised_without_reference_still_ranks_copies(scenario):
    res = audit_membership(scenario["gen"], scenario["real"], backbone=None)
    members = [0, 1, 2, 3]
    non = [i for i in range(len(res.score)) if i not in members]
    assert min(res.score[members]) > np.median(res.score[non])
    assert res.info["null"] == "real-pairs"             # no labelled null: pairs of different real patients
    assert res.used[non].sum() <= 1


def test_fpr_control_on_a_null_set():
    # nothing is copied: generated, candidates and reference are independent samples
    gen = phantoms(80, 20)
    real = phantoms(60, 21)
    ref = phantoms(120, 22)
    res = audit_membership(gen, real, reference=ref, backbone=None)
    assert res.used.sum() <= 2
    if res.used.sum() == 0:
        assert res.summary.startswith("No evidence of membership")
    f1 = audit_membership(gen, real, reference=ref, backbone=None, decision="f1")
    # no evidence: the f1 rule flags only what fpr:0.01 would (branch f17; it flagged all before)
    assert f1.info["f1"]["evidence"] is False and f1.used.sum() <= 2
    assert f1.summary.startswith("No significant evidence of membership")


def test_null_threshold_is_conservative():
    rng = np.random.default_rng(0)
    exceed = []
    for _ in range(200):
        null = rng.standard_normal(300)
        t = null_threshold(null, 0.01)
        assert t["threshold"] >= np.sort(null)[-1 - t["allowed_exceedances"]] - 1e-12
        exceed.append(stats.norm.sf(t["threshold"]))
    exceed = np.array(exceed)
    assert np.mean(exceed <= 0.01) >= 0.9          # true FPR below alpha with >= 90% (nominal 95%)
    # allowed exceedances follow the exact order-statistic rule: P(Binomial(K, alpha) <= j) <= 0.05
    t = null_threshold(rng.standard_normal(1000), 0.01)
    j = t["allowed_exceedances"]
    assert stats.binom.cdf(j, 1000, 0.01) <= 0.05 < stats.binom.cdf(j + 1, 1000, 0.01)


def test_robust_calibrate_matches_numpy():
    rng = np.random.default_rng(3)
    null = rng.normal(2, 3, 501)
    v = rng.normal(0, 5, 20)
    med = np.median(null)
    mad = 1.4826 * np.median(np.abs(null - med))
    np.testing.assert_allclose(robust_calibrate(v, null), (v - med) / mad)
    # constant null falls back to scale 1, infinities are clipped
    out = robust_calibrate(np.array([1.0, np.inf]), np.zeros(10))
    assert out[0] == 1.0 and out[1] == 50.0


def test_storey_and_f1_decision():
    rng = np.random.default_rng(4)
    p = np.r_[rng.uniform(0, 1, 800), rng.uniform(0, 1e-3, 200)]
    assert estimate_used_share(p) == pytest.approx(1 - np.mean(p > 0.5) / 0.5)
    null = rng.standard_normal(500)
    s = np.r_[rng.standard_normal(100), rng.normal(8, 1, 100)]
    used, info = f1_decision(s, null)
    y = np.r_[np.zeros(100), np.ones(100)]
    from sklearn.metrics import f1_score
    assert info["evidence"] and f1_score(y, used) > 0.9
    cand0 = rng.standard_normal(200)
    used0, info0 = f1_decision(cand0, null)
    assert not info0["evidence"] and used0.sum() <= 4
    assert used0.sum() == (cand0 > info0["threshold"]).sum()          # the fpr:0.01 threshold's flags
    used0, info0 = f1_decision(cand0, null, no_evidence="all")        # the rule before branch f17
    assert used0.all() and not info0["evidence"]


def test_fit_weights_prior_and_signal():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((400, 3))
    y = rng.integers(0, 2, 400)
    prior = np.array([1.0, 0.5, 0.0])
    w = fit_weights(X, y, prior)
    cos = w @ prior / np.linalg.norm(w) / np.linalg.norm(prior)
    assert np.all(w >= 0) and cos > 0.95          # no signal: the prior direction is kept
    X[:, 2] += 3 * y
    w2 = fit_weights(X, y, prior)
    assert w2[2] > w2[1] and w2[2] > 0.5


def test_dev_sets_are_used(scenario):
    rng = np.random.default_rng(6)
    # a labelled dev generator that copies its used images
    used = phantoms(12, 30)
    unused = phantoms(12, 31)
    gen = phantoms(40, 32)
    gen[rng.permutation(40)[:12]] = used
    dev = DevSet("dev", gen, used, unused)
    res = audit_membership(scenario["gen"], scenario["real"], dev_sets=[dev], reference=scenario["reference"],
                           backbone=None)
    assert res.info["dev_sets"]["dev"]["auc_fitted"] > 0.9
    members = [0, 1, 2, 3]
    non = [i for i in range(len(res.score)) if i not in members]
    assert min(res.score[members]) > max(res.score[non])


def test_input_validation(scenario):
    real, gen = scenario["real"], scenario["gen"]
    with pytest.raises(ImprintError):
        audit_membership(gen.astype(np.float32), real)
    with pytest.raises(ImprintError):
        audit_membership(gen[:, :32, :32], real)
    with pytest.raises(ImprintError):
        audit_membership(gen, real, decision="fpr:0.7")
    with pytest.raises(ImprintError):
        audit_membership(gen, real, decision="best")
    with pytest.raises(ImprintError):
        audit_membership(gen, real[:1])


def _reference_anatomy_masks(img, levels, f):
    """Independent reference: skimage Otsu / labelling / block_reduce, holes = background
    components (4-connected) that do not touch the border."""
    from skimage.filters import threshold_otsu
    from skimage.measure import block_reduce, label
    t = threshold_otsu(img)
    lab = label(img > t, connectivity=1)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    fg = lab == sizes.argmax()
    bg = label(~fg, connectivity=1)
    border = np.unique(np.r_[bg[0], bg[-1], bg[:, 0], bg[:, -1]])
    body = fg | ((bg > 0) & ~np.isin(bg, border))
    return np.concatenate([block_reduce((body & (img <= lv * t)).astype(np.float64), (f, f), np.mean).ravel()
                           for lv in levels])


def test_anatomy_masks_match_skimage_reference():
    x = phantoms(4, 40)
    x[2, 60:62, 8:56] = 230                     # a separate bright "table" below the body: not the body
    x[3] = 7                                    # constant image: no body, empty masks
    levels = (0.5, 1.0)
    M = anatomy_masks(x, levels=levels, size=32)
    assert M.shape == (4, 2 * 32 * 32) and M.dtype == np.float32
    for i in range(3):
        np.testing.assert_allclose(M[i], _reference_anatomy_masks(x[i], levels, 2), atol=1e-6)
        assert M[i].sum() > 0
    assert M[3].sum() == 0
    # intensity-affine changes with the same ordering leave the masks (Otsu-relative levels) nearly unchanged
    y = np.clip(x[:3].astype(np.float64) * 0.9 + 10, 0, 255).astype(np.uint8)
    assert np.abs(anatomy_masks(y, levels=levels, size=32) - M[:3]).mean() < 0.02


def test_shape_evidence_finds_loose_reconstructions():
    """A generator that reproduces its members' anatomy (body outline, lung shapes) but blurs them
    and invents new texture and brightness: ``shape_ratio`` ranks those members first."""
    rng = np.random.default_rng(7)
    real = phantoms(40, 50, tex_amp=20)          # CT-like: lung / tissue contrast >> texture
    reference = phantoms(60, 51, tex_amp=20)
    members = np.arange(8)
    gen = phantoms(80, 52, tex_amp=20)
    for j, i in enumerate(members):
        body = ndimage.gaussian_filter(real[i].astype(np.float64), 1.0)
        tex = ndimage.gaussian_filter(rng.normal(0, 1, body.shape), 1.5)
        rec = 0.9 * body + 10 + 20 * tex / tex.std() * (body > 100)
        gen[10 * j] = np.clip(rec, 0, 255).astype(np.uint8)
    ev, _, _ = compute_evidence(gen, np.concatenate([real, reference]), backbone=None, use_lbp=False)
    s = ev["shape_ratio"][: len(real)]
    non = np.setdiff1d(np.arange(len(real)), members)
    assert np.all(np.isfinite(ev["shape_ratio"]))
    assert np.sort(s[members])[2] > s[non].max()        # at least 6 of 8 members above every non-member
    # brute force: shape_ratio is the log ratio of nearest mask distances (generated vs other reals)
    pool = np.concatenate([real, reference])
    mP, mG = anatomy_masks(pool), anatomy_masks(gen)
    dG = ((mP[:, None, :] - mG[None]) ** 2).mean(2).min(1)
    dR = ((mP[:, None, :] - mP[None]) ** 2).mean(2)
    np.fill_diagonal(dR, np.inf)
    fl = 1.0 / mP.shape[1]
    np.testing.assert_allclose(ev["shape_ratio"], -np.log((dG + fl) / (dR.min(1) + fl)), atol=1e-4)


def test_threshold_headroom_matches_the_order_statistics_and_the_binomial_rule():
    """decide.threshold_headroom: the next order statistic, the real images between it and the threshold (brute
    count) and the smallest null that would allow one more exceedance (scipy's binomial, directly)."""
    from imprint.engine.membership.decide import ordinal, threshold_headroom

    rng = np.random.default_rng(3)
    for K, alpha in ((300, 0.01), (1000, 0.01), (80, 0.05)):
        null = rng.standard_normal(K)
        null[0] = 9.0                                   # one extreme null image
        th = null_threshold(null, alpha, parametric=False)
        scores = rng.uniform(-1, 10, 200)
        room = threshold_headroom(null, scores, th, alpha)
        s, j = np.sort(null), th["allowed_exceedances"]
        assert room["threshold"] == th["threshold"] == s[K - 1 - j] and room["next"] == s[K - 2 - j]
        between = int(((scores > s[K - 2 - j]) & (scores <= s[K - 1 - j])).sum())
        assert room["n_between"] == between and (between > 0 or j > 0)   # j = 0: the planted 9.0 leaves a wide gap
        k2 = room["null_size_for_next"]
        assert stats.binom.cdf(j + 1, k2, alpha) <= 0.05 < stats.binom.cdf(j + 1, k2 - 1, alpha)
        assert k2 > K
    assert threshold_headroom(rng.standard_normal(50), [0.0], null_threshold(rng.standard_normal(50), 0.01), 0.01) is None
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st"]


def test_audit_says_when_one_reference_image_sets_the_threshold():
    """PLANTED: 8 members copied with noise; the reference also holds one image that is an exact copy of a generated
    image (a training image passed as a known non-member). Its score sets fpr:0.05's threshold above the members, and
    the summary says so, with the count between the null's top two scores; with a clean reference the same members
    are flagged and the headroom line is absent or counts no member."""
    rng = np.random.default_rng(4)
    gen = phantoms(80, 40)
    real = phantoms(24, 41)
    for i in range(8):
        gen[5 * i] = np.clip(real[i] + rng.normal(0, 6, real[i].shape), 0, 255).astype(np.uint8)
    clean = phantoms(80, 42)
    res = audit_membership(gen, real, reference=clean, backbone=None, decision="fpr:0.05")
    assert res.used[:8].sum() >= 6 and res.used[8:].sum() <= 1
    bad = clean.copy()
    bad[0] = gen[79]                                     # a generated image's training image among the reference
    res2 = audit_membership(gen, real, reference=bad, backbone=None, decision="fpr:0.05")
    room = res2.info["threshold_headroom"]
    assert res2.used[:8].sum() < res.used[:8].sum()     # the one reference image cost members
    assert room["n_between"] >= res.used[:8].sum() - res2.used[:8].sum()
    assert any("more real images score between them" in w for w in res2.info["warnings"])
    assert "more real images score between them" in res2.summary
