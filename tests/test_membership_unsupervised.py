"""The unsupervised membership mode (no --dev, no --reference): the registered evidence's real-to-real null,
the decision's false-positive rate by simulation, and planted transformed copies found without a reference.

* :func:`real_pair_null` with ``register=True``: a real image whose flipped and shifted twin is in the real folder
  gets a high registered null value exactly when the twin plays a generated image (and a low one when it plays a
  real one); the pixel channel, compared in place, does not see the twin.
* :func:`pair_null_scores` + the decision rules, by simulation on a null model of the evidence channels
  (heavy-tailed, correlated channels; null rows correlated within a real image like the dev corpus' measured
  0.1-0.2): no member planted, the true false-positive rate of ``fpr:0.01`` over many seeds.
* :func:`audit_membership` with no reference: strong transformed copies (flip + shift, 10% shift, rotation) of half
  the real folder among a generator's new patients are flagged, and at most 5% of the other half.

Fixtures are generated here (seeded, small CT-like phantoms).
"""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from imprint.engine.membership import audit_membership, real_pair_null
from imprint.engine.membership.calibrate import PAIR_REG_FEATURES, pair_null_matrix, pair_null_scores
from imprint.engine.membership.common import DEFAULT_WEIGHTS, MAX_FEATURES
from imprint.engine.membership.decide import fdr_decision, null_threshold

from conftest import series_folder
from test_membership_evidence import phantom, u8

H = 64


def phantoms(n, seed, h=H):
    rng = np.random.default_rng(seed)
    return np.stack([phantom(rng, h) for _ in range(n)])


def transform(x, *, flip=0, angle=0.0, dy=0.0, dx=0.0):
    """Flip, rotation about the centre and shift (scipy.ndimage, linear, edge values replicated)."""
    x = np.asarray(x, np.float64)
    if flip:
        x = x[:, ::-1]
    if angle:
        x = ndimage.rotate(x, angle, reshape=False, order=1, mode="nearest")
    if dy or dx:
        x = ndimage.shift(x, (dy, dx), order=1, mode="nearest")
    return x


# ------------------------------------------------------------------------------------- the registered pair null
def test_registered_pair_null_sees_a_transformed_twin_in_the_real_folder():
    """Real image 0's flipped + 5 px shifted twin is real image 1.  In every split where the twin is in the
    'generated' part A the registered null value of image 0 is high (above 95% of the other null values); where it
    is in the 'real' part B, low.  The in-place pixel channel does not see the twin (its values separate the two
    cases far less)."""
    rng = np.random.default_rng(5)
    real = phantoms(24, 30)
    real[1] = u8(transform(real[0], flip=1, dy=4.0, dx=-3.0) + rng.normal(0, 2, (H, H)))
    splits, repeats = (0.25, 0.5, 0.75), 2
    pn = real_pair_null(real, 23, splits=splits, repeats=repeats, random_state=9, register=True)
    R = len(real)
    for n in PAIR_REG_FEATURES:
        assert n in pn and pn[n].shape == (R * len(splits) * repeats,) and np.isfinite(pn[n]).all()
    # the splits, drawn as real_pair_null draws them
    draw = np.random.default_rng(9)
    in_a = np.concatenate([draw.random(R) < p for p in splits for _ in range(repeats)])  # row t: image t % R
    rows0 = np.arange(len(in_a)) % R == 0
    twin_in_a = in_a[1::R]                               # per split: is image 1 in part A
    assert twin_in_a.any() and (~twin_in_a).any()
    v = pn["reg_ratio"][rows0]
    assert v[twin_in_a].min() > 1.0                     # the twin registers (NCC ~0.9 vs other patients' ~0.5)
    assert v[~twin_in_a].max() < -1.0
    assert v[twin_in_a].min() > np.quantile(pn["reg_ratio"][~rows0], 0.95)
    px = pn["pixel_nn_ratio"][rows0]
    assert abs(np.median(px[twin_in_a]) - np.median(px[~twin_in_a])) < 0.5 * (v[twin_in_a].min() - v[~twin_in_a].max())


def test_pair_null_on_a_subset_of_images_is_the_full_null_restricted(tmp_path):
    """``max_images`` (the cost bound on large folders) keeps a random subset of the images as non-members, with
    the splits and neighbours over every image: its rows are exactly the full null's rows of those images (one
    split share, so no size-correction slope differs).  The checkpointed null reads back identical."""
    from imprint.engine.membership.calibrate import PAIR_FEATURES, real_pair_null_cached

    real = phantoms(30, 60, h=48)
    kw = dict(splits=(0.5,), repeats=2, register=True, random_state=4)
    full = real_pair_null(real, 29, **kw)
    sub = real_pair_null(real, 29, max_images=12, **kw)
    imgs = np.unique(sub["_images"])
    assert len(imgs) == 12 and len(sub["_images"]) == 24 and len(full["_images"]) == 60
    rows = np.flatnonzero(np.isin(full["_images"], imgs))
    for n in PAIR_FEATURES + PAIR_REG_FEATURES:
        np.testing.assert_allclose(sub[n], full[n][rows], rtol=1e-12, err_msg=n)
    first = real_pair_null_cached(real, 29, cache_dir=str(tmp_path), **kw)
    again = real_pair_null_cached(real, 29, cache_dir=str(tmp_path), **kw)
    assert len(list(tmp_path.glob("pairnull-*.npz"))) == 1 and again["_theta"] == first["_theta"]
    for n in PAIR_FEATURES + PAIR_REG_FEATURES + ("_images",):
        np.testing.assert_array_equal(again[n], first[n])
        np.testing.assert_allclose(first[n], full[n], rtol=1e-12)


# ------------------------------------------------------------------------------------- the guarantee, simulated
NAMES = ("pixel_nn_ratio", "mse_ratio", "shape_ratio") + PAIR_REG_FEATURES


def _channels(rng, n, df=5):
    """Heavy-tailed (multivariate t, df 5) correlated channels: 0.6 within the in-place and within the registered
    channels, 0.3 across."""
    C = np.full((6, 6), 0.3)
    C[:3, :3] = C[3:, 3:] = 0.6
    np.fill_diagonal(C, 1.0)
    z = rng.standard_normal((n, 6)) @ np.linalg.cholesky(C).T
    return z / np.sqrt(rng.chisquare(df, (n, 1)) / df)


def _null_model_fpr(rng, *, loc, scale, empirical, R=100, n_fresh=2000, icc=0.2, reps=6, pi1=0.0,
                    series_null=0.0, series_cand=0.0, threshold=None, exact_out=None):
    """One simulated audit: ``R`` real images, each with ``reps`` null rows (correlated ``icc`` within the image,
    as real_pair_null's splits are), ``R`` candidates whose non-members' channels are ``loc + scale * S`` (S
    distributed as a null row), and ``n_fresh`` more non-members scored by the same fitted rule without shaping it:
    their flagged share is the rule's true false-positive rate.  A share ``pi1`` of the candidates are members:
    a non-member draw plus a copy's evidence, +2..6 on the registered channels (every copy) and, for half of
    them (copies in place), on the in-place channels too.  Returns the FPR, the fdr:0.1 flags among the
    non-member candidates, the null's within-image correlation, the members' recall at fpr:0.01 and the
    false share among the fdr:0.1 flags.

    Series folders (several slices per patient): a share ``series_null`` of the real images keep a slice of their own
    patient in their null neighbours (the series the grouping missed): in each of their rows that slice plays a
    generated image with probability 1/2 (every channel +2..5) or a real one (every channel -2..5); a share
    ``series_cand`` of the candidates (members and non-members) have a slice of their own patient among the real
    images, so their nearest real is that slice (every channel -1..4)."""
    img = _channels(rng, R)
    null = np.concatenate([np.sqrt(icc) * img + np.sqrt(1 - icc) * _channels(rng, R) for _ in range(reps)])
    if series_null:
        sib = np.tile(rng.random(R) < series_null, reps)
        null[sib] += np.where(rng.random((int(sib.sum()), 1)) < 0.5, 1.0, -1.0) * rng.uniform(2.0, 5.0, (int(sib.sum()), 1))
    cand = loc + scale * _channels(rng, R + n_fresh)
    if series_cand:
        cs = rng.random(R + n_fresh) < series_cand
        cand[cs] -= rng.uniform(1.0, 4.0, (int(cs.sum()), 1))
    nm = int(round(pi1 * R))
    sh = rng.uniform(2.0, 6.0, (nm, 1))
    cand[:nm, 3:] += sh
    cand[:nm, :3] += np.where(rng.random((nm, 1)) < 0.5, sh, 0.0)
    Z, null_mask = pair_null_matrix({n: cand[:, j] for j, n in enumerate(NAMES)},
                                    {n: null[:, j] for j, n in enumerate(NAMES)}, NAMES)
    w = np.array([DEFAULT_WEIGHTS[n] for n in NAMES])
    mx = np.array([n in MAX_FEATURES for n in NAMES])
    fit = np.zeros(len(Z), bool)
    fit[:R] = True
    s, ns, info = pair_null_scores(Z, null_mask, w, mx, empirical=empirical, fit_rows=fit,
                                   null_groups=np.arange(R * reps) % R)
    assert info["combine"] == "tail"
    thr = (threshold or null_threshold)(ns, 0.01)["threshold"]
    fpr = float(np.mean(s[R:] > thr))
    if exact_out is not None:        # the default (exact 95%) threshold on the same folder, for a comparison
        te = null_threshold(ns, 0.01)["threshold"]
        exact_out.update(fpr=float(np.mean(s[R:] > te)), recall=float(np.mean(s[:nm] > te)) if nm else float("nan"))
    u = fdr_decision(s[:R], ns, 0.1)[0]
    flags = int(u[nm:].sum())
    recall = float(np.mean(s[:nm] > thr)) if nm else float("nan")
    return fpr, flags, info["null_icc"], recall, flags / max(int(u.sum()), 1)


#: simulated generators: (location, scale) of the non-members' channels against the real-to-real null
SIM_CASES = {"exchangeable": (0.0, 1.0), "further": (-0.8, 0.8), "closer": (0.8, 1.3), "narrower": (-1.0, 0.6)}


@pytest.mark.parametrize("empirical", ["widen", "channel"])
@pytest.mark.parametrize("case", list(SIM_CASES))
def test_unsupervised_decision_false_positive_rate_by_simulation(case, empirical):
    """Simulated folders per case and share of members (0, 25%, 50%).  'exchangeable': the generator's non-copies
    relate to a patient as another patient does (the real-to-real null's model); 'further' / 'narrower': their
    evidence is moved down and narrowed (gen_e-like); 'closer': moved up and widened (a generator closer to
    every patient than patients are to each other).  Stated guarantee of both empirical nulls ("widen", the
    default, and "channel", per evidence channel): the EXPECTED share of non-members flagged by fpr:0.01 is
    <= 0.01, and P(FPR > 0.02) <= 5% (location and scale are estimated, so the 95% confidence of the order
    statistic alone does not carry over).  fdr:0.1 with no member: P(any flag) <= 0.1 (its FDR then) and mean
    flags <= 0.6 (the project's target "at most 3 in every folder" is NOT asserted: both modes flagged 4 in an
    occasional folder, see benchmarks/RESULTS.md, uns6); with members, the mean false share among its flags
    <= 0.1.  Members' recall is not asserted here (their role is the contamination of the fit); the planted
    tests below require members to be found.  Without the empirical null and an exchangeable generator the order statistic's own
    guarantee is checked: P(FPR > 0.01) <= 5% (+ Monte-Carlo slack) with correlated null rows."""
    loc, scale = SIM_CASES[case]
    rng = np.random.default_rng([list(SIM_CASES).index(case), len(empirical)])
    reps = 10
    mc = 3 * np.sqrt(0.01 / 2000 / (4 * reps))           # Monte-Carlo error of a mean FPR
    fprs = []
    for pi1 in (0.0, 0.25, 0.5):
        res = np.array([_null_model_fpr(rng, loc=loc, scale=scale, empirical=empirical, pi1=pi1)
                        for _ in range(2 * reps if pi1 == 0 else reps)])
        fpr, flags, icc, rec, fdp = res.T
        fprs.append(fpr)
        assert 0.05 < np.median(icc) < 0.4               # the null rows' within-image correlation is modelled
        if pi1 == 0:                                     # no member: FDR = P(any flag) <= 0.1
            n0 = len(flags)
            assert np.mean(flags > 0) <= 0.1 + 2 * np.sqrt(0.1 * 0.9 / n0), flags
            assert flags.mean() <= 0.6, flags
        else:                                            # FDR = E[false share among the flags] <= 0.1
            assert fdp.mean() <= 0.1 + 2 * fdp.std() / np.sqrt(len(fdp)), (pi1, fdp)
    fpr = np.concatenate(fprs)
    assert fpr.mean() <= 0.01 + mc, fpr.mean()
    assert np.mean(fpr > 0.02) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / len(fpr)), np.sort(fpr)[-5:]
    if case == "exchangeable" and empirical == "widen":
        raw = np.array([_null_model_fpr(rng, loc=loc, scale=scale, empirical=False)[0] for _ in range(40)])
        assert np.mean(raw > 0.01) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 40), np.sort(raw)[-5:]
    if case == "closer" and empirical == "widen":      # the real-to-real null alone fails here
        raw = np.array([_null_model_fpr(rng, loc=loc, scale=scale, empirical=False)[0] for _ in range(10)])
        assert raw.mean() > 0.01 and raw.mean() > 2 * fpr.mean(), (raw.mean(), fpr.mean())


@pytest.mark.parametrize("case", list(SIM_CASES))
def test_unsupervised_conformal_fpr_threshold_by_simulation(case):
    """The opt-in fpr threshold of the unsupervised mode (decide.PAIR_NULL_FPR = "conformal", branch uns13: the
    floor(alpha (K + 1))-th largest of the empirical null instead of its 95% order statistic) on the simulated
    folders above (members 0, 25%, 50%; the default "widen" empirical null).  Its stated guarantee, the one the
    unsupervised summary states: the EXPECTED share of non-members flagged by fpr:0.01 is <= 0.01; also measured:
    P(FPR > 0.02) <= 5%.  Planted: where the non-members sit below the real-to-real null ('further', 'narrower',
    gen_e-like) it finds >= 0.1 more of the members than the exact threshold on the same folders."""
    from imprint.engine.membership.decide import conformal_threshold

    loc, scale = SIM_CASES[case]
    rng = np.random.default_rng([list(SIM_CASES).index(case), 13])
    rows = []
    for pi1 in (0.0, 0.0, 0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 0.5):
        ex: dict = {}
        fpr, _, _, rec, _ = _null_model_fpr(rng, loc=loc, scale=scale, empirical="widen", pi1=pi1,
                                            threshold=conformal_threshold, exact_out=ex)
        rows.append((pi1, fpr, rec, ex["fpr"], ex["recall"]))
    res = np.array(rows)
    fpr = res[:, 1]
    mc = 3 * np.sqrt(0.01 / 2000 / len(fpr))
    assert fpr.mean() <= 0.01 + mc, fpr.mean()
    assert np.mean(fpr > 0.02) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / len(fpr)), np.sort(fpr)[-5:]
    assert np.all(res[:, 1] >= res[:, 3])                # never fewer flags than the exact threshold (it is further in)
    if case in ("further", "narrower"):
        half = res[:, 0] == 0.5
        assert res[half, 2].mean() >= res[half, 4].mean() + 0.1, (res[half, 2], res[half, 4])


def test_pi1_lower_bound_is_a_lower_bound_and_finds_strong_members():
    """calibrate._pi1_lower (the upper tail's lower confidence bound on the members' share, branch uns13): with no
    member (candidates drawn like the null) it is 0 in >= 95% of folders and never above 0.1; with half the
    candidates members at +3..8 it is >= 0.3 and never above the truth 0.5."""
    from imprint.engine.membership.calibrate import _pi1_lower

    rng = np.random.default_rng(5)
    none = np.array([_pi1_lower(rng.gumbel(size=120), rng.gumbel(size=720)) for _ in range(400)])
    assert np.mean(none > 0) <= 0.05 and none.max() <= 0.1, (np.mean(none > 0), none.max())
    half = []
    for _ in range(100):
        x = rng.gumbel(size=120)
        x[:60] += rng.uniform(3, 8, 60)
        half.append(_pi1_lower(x, rng.gumbel(size=720)))
    assert min(half) >= 0.3 and max(half) <= 0.5, (min(half), max(half))


def _conformal_rates(rng, loc, scale):
    """:func:`_null_model_fpr` with the conformal fpr threshold on nine simulated folders (members 0 x 4, 25 % x 2,
    50 % x 3): one row (pi1, FPR, fdr:0.1 flags without members, ..., recall, fdr:0.1 false share) per folder."""
    from imprint.engine.membership import decide

    return np.array([(pi1,) + tuple(_null_model_fpr(rng, loc=loc, scale=scale, empirical="widen", pi1=pi1,
                                                    threshold=decide.conformal_threshold))
                     for pi1 in (0.0, 0.0, 0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 0.5)])


def _assert_stated_rates(res):
    """The unsupervised summary's stated rates on :func:`_conformal_rates` rows: the EXPECTED share of non-members
    flagged by fpr:0.01 <= 0.01 (Monte Carlo margin), P(FPR > 0.02) <= 5 %, fdr:0.1 with no member flags <= 0.6 on
    average and its false share with members <= 0.1 on average."""
    fpr = res[:, 1]
    mc = 3 * np.sqrt(0.01 / 2000 / len(fpr))
    assert fpr.mean() <= 0.01 + mc, fpr.mean()
    assert np.mean(fpr > 0.02) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / len(fpr)), np.sort(fpr)[-5:]
    assert res[res[:, 0] == 0, 2].mean() <= 0.6
    assert res[res[:, 0] > 0, 5].mean() <= 0.1 + 2 * res[res[:, 0] > 0, 5].std() / np.sqrt(5)


@pytest.mark.parametrize("case", list(SIM_CASES))
def test_unsupervised_pi1_bound_rates_by_simulation(case, monkeypatch):
    """calibrate.EMPIRICAL_NULL_PI1_BOUND (opt-in, branch uns13) on the simulated folders of the FPR test above, with
    the conformal fpr threshold too (it is never above the exact one, so the exact threshold's rate is covered): the
    EXPECTED share of non-members flagged by fpr:0.01 <= 0.01, P(FPR > 0.02) <= 5%, fdr:0.1 with no member flags
    <= 0.6 on average and its false share with members <= 0.1 on average.  Planted: in the 'further' (gen_e-like)
    case the bound finds >= 0.1 more members at fpr:0.01 than without it, on the same folders."""
    from imprint.engine.membership import calibrate

    loc, scale = SIM_CASES[case]
    out = {}
    for on in (False, True):
        monkeypatch.setattr(calibrate, "EMPIRICAL_NULL_PI1_BOUND", on)
        rng = np.random.default_rng([list(SIM_CASES).index(case), 17])
        out[on] = _conformal_rates(rng, loc, scale) if on or case == "further" else np.array([])
    res = out[True]
    _assert_stated_rates(res)
    if case == "further":
        half = res[:, 0] == 0.5
        assert res[half, 4].mean() >= out[False][half, 4].mean() + 0.1, (res[half, 4], out[False][half, 4])


def test_conformal_fpr_rule_only_in_the_unsupervised_mode_and_off_by_default(tmp_path, monkeypatch):
    """decide.PAIR_NULL_FPR: off by default (the audit's threshold is null_threshold's, as before); "conformal" changes
    only the unsupervised fpr threshold (scores and null identical, flags = score above conformal_threshold's), and an
    audit with a reference is unchanged by it."""
    from imprint.engine.membership import decide

    from imprint.engine.membership import calibrate

    assert decide.PAIR_NULL_FPR == "exact" and calibrate.EMPIRICAL_NULL_PI1_BOUND is False
    rng = np.random.default_rng(31)
    real = phantoms(40, 32)
    gen = np.concatenate([phantoms(60, 33), u8(real[:20] + rng.normal(0, 2, real[:20].shape))])
    ref = phantoms(30, 34)
    off = audit_membership(gen, real, backbone=None, cache_dir=str(tmp_path))
    off_ref = audit_membership(gen, real, reference=ref, backbone=None, cache_dir=str(tmp_path))
    assert off.info["threshold_detail"] == null_threshold(off.null_scores, 0.01)    # 240 null rows: its fallback
    monkeypatch.setattr(decide, "PAIR_NULL_FPR", "conformal")
    on = audit_membership(gen, real, backbone=None, cache_dir=str(tmp_path))
    on_ref = audit_membership(gen, real, reference=ref, backbone=None, cache_dir=str(tmp_path))
    assert np.array_equal(on.score, off.score) and np.array_equal(on.null_scores, off.null_scores)
    th = decide.conformal_threshold(on.null_scores, 0.01)
    assert on.info["threshold_detail"] == th and th["exact"] and on.threshold == th["threshold"] <= off.threshold
    assert np.array_equal(on.used, (on.score > on.threshold).astype(on.used.dtype))
    assert on.used.sum() >= off.used.sum()
    assert on_ref.threshold == off_ref.threshold and np.array_equal(on_ref.used, off_ref.used)
    monkeypatch.setattr(decide, "PAIR_NULL_FPR", "bogus")
    with pytest.raises(Exception, match="PAIR_NULL_FPR"):
        audit_membership(gen, real, backbone=None, cache_dir=str(tmp_path))


# ------------------------------------------------------------------ the median-anchored location (opt-in, uns14)
def test_anchored_empirical_null_reads_a_compressed_lower_half():
    """calibrate.empirical_null(anchor=0.5) (EMPIRICAL_NULL_ANCHOR, branch uns14).  Planted: non-members at
    ``-1 + S'``, ``S'`` a null draw whose LOWER half is compressed to 0.6 (the combined score of a non-member lower in
    every channel, RESULTS.md uns13), a third of the candidates members far above: the anchored fit puts the null's
    median within 0.2 of the non-members' (the default fit, slope 1 through the window, puts it >= 0.25 too high) and
    keeps the proxy's spread (scale 1).  Not compressed (``-1 + 1.2 S``, wider): both fits widen alike.  Compressed
    below the smallest slope (0.2): the anchored location stays on the conservative side of the truth."""
    from imprint.engine.membership.calibrate import ANCHOR_MIN_SLOPE, empirical_null

    rng = np.random.default_rng(14)
    null = rng.standard_t(6, 4000)
    S = rng.standard_t(6, 800)
    non = -1.0 + np.where(S < 0, 0.6 * S, S)
    cand = np.r_[non, rng.uniform(6.0, 12.0, 400)]
    off, on = empirical_null(cand, null), empirical_null(cand, null, anchor=ANCHOR_MIN_SLOPE)
    med = lambda f: f["loc"] + f["scale"] * np.median(null)  # noqa: E731
    assert on["scale"] == 1.0 and abs(med(on) - np.median(non)) <= 0.2, (med(on), np.median(non))
    assert med(off) >= np.median(non) + 0.25, (med(off), np.median(non))
    wide = np.r_[-1.0 + 1.2 * S, rng.uniform(6.0, 12.0, 400)]
    a, b = empirical_null(wide, null), empirical_null(wide, null, anchor=ANCHOR_MIN_SLOPE)
    assert a["scale"] > 1.05 and (b["loc"], b["scale"]) == (a["loc"], a["scale"])
    very = np.r_[-1.0 + np.where(S < 0, 0.2 * S, S), rng.uniform(6.0, 12.0, 400)]
    assert med(empirical_null(very, null, anchor=ANCHOR_MIN_SLOPE)) >= np.median(very[:800]) - 0.05


#: simulated cases where the anchored location keeps the stated rates; not 'further' (below)
ANCHOR_SAFE_CASES = ("exchangeable", "closer", "narrower")


@pytest.mark.parametrize("case", ANCHOR_SAFE_CASES)
def test_unsupervised_anchored_null_rates_by_simulation(case, monkeypatch):
    """calibrate.EMPIRICAL_NULL_ANCHOR (opt-in, branch uns14) on the simulated folders of the FPR test above, with the
    conformal fpr threshold too (never above the exact one, so the exact threshold's rate is covered): the EXPECTED
    share of non-members flagged by fpr:0.01 <= 0.01, P(FPR > 0.02) <= 5%, fdr:0.1 with no member flags <= 0.6 on
    average and its false share with members <= 0.1 on average.  Not claimed for 'further' (every channel moved down
    AND narrowed by 0.8): there the combination stretches the non-members' upper half (next test) and, with the flag
    on, test_unsupervised_decision_false_positive_rate_by_simulation[further-widen] fails (fdr:0.1 flags in 5 of 20
    member-free folders; RESULTS.md uns14)."""
    from imprint.engine.membership import calibrate

    monkeypatch.setattr(calibrate, "EMPIRICAL_NULL_ANCHOR", True)
    loc, scale = SIM_CASES[case]
    rng = np.random.default_rng([list(SIM_CASES).index(case), 14])
    res = _conformal_rates(rng, loc, scale)
    _assert_stated_rates(res)


def test_every_channel_moved_down_stretches_the_combined_upper_half():
    """Why the anchored location is not a default (RESULTS.md uns14): when every channel of a non-member is moved down
    and narrowed a little ('further': -0.8, x 0.8), the combined score -Phi^-1(min_c p_c) compresses the lower half
    (q05 - q50 smaller than the null's) but STRETCHES the upper half (q99 - q50 larger than the null's), so a location
    read at the median with the proxy's upper shape is anti-conservative there: the anchored null's 99% quantile (120
    member-free candidates) falls below the non-members', and >= 0.1 below the default's.  Narrowed more
    ('narrower': -1, x 0.6) both halves are compressed."""
    from imprint.engine.membership.calibrate import ANCHOR_MIN_SLOPE, combined_scores, empirical_null

    w = np.array([DEFAULT_WEIGHTS[n] for n in NAMES])
    mx = np.array([n in MAX_FEATURES for n in NAMES])
    rng = np.random.default_rng(3)
    out = {}
    for case in ("further", "narrower"):
        loc, scale = SIM_CASES[case]
        rows = []
        for _ in range(6):
            img = _channels(rng, 100)
            null = np.concatenate([np.sqrt(0.2) * img + np.sqrt(0.8) * _channels(rng, 100) for _ in range(6)])
            cand = loc + scale * _channels(rng, 2000)
            Z, m = pair_null_matrix({n: cand[:, j] for j, n in enumerate(NAMES)},
                                    {n: null[:, j] for j, n in enumerate(NAMES)}, NAMES)
            sa, _ = combined_scores(Z, w, mx, m, "tail")
            c, n = sa[~m], sa[m]
            q99 = lambda e: e["loc"] + e["scale"] * np.quantile(n, 0.99) - np.quantile(c, 0.99)  # noqa: E731
            rows.append([np.quantile(c, 0.05) - np.median(c), np.quantile(n, 0.05) - np.median(n),
                         np.quantile(c, 0.99) - np.median(c), np.quantile(n, 0.99) - np.median(n),
                         q99(empirical_null(c[:120], n)), q99(empirical_null(c[:120], n, anchor=ANCHOR_MIN_SLOPE))])
        out[case] = np.mean(rows, 0)
    lo_c, lo_n, up_c, up_n, m_off, m_on = out["further"]
    assert lo_c > lo_n + 0.2 and up_c > up_n + 0.1, out["further"]
    assert m_on < min(0.0, m_off - 0.1), out["further"]       # the anchored null's q99 falls below the non-members'
    lo_c, lo_n, up_c, up_n, _, _ = out["narrower"]
    assert lo_c > lo_n + 0.2 and up_c < up_n, out["narrower"]


def test_anchored_null_finds_more_planted_members_where_the_upper_half_is_not_stretched(monkeypatch):
    """Planted: half the candidates members (the simulation's copies, in place and registered) among non-members moved
    down and narrowed by 0.6 ('narrower', gen_e-like lower tail); on the same folders the anchored location finds
    >= 0.1 more of the members at fpr:0.01 than the default, and its mean FPR stays <= 0.01."""
    from imprint.engine.membership import calibrate

    loc, scale = SIM_CASES["narrower"]
    out = {}
    for on in (False, True):
        monkeypatch.setattr(calibrate, "EMPIRICAL_NULL_ANCHOR", on)
        rng = np.random.default_rng([7, 14])
        out[on] = np.array([_null_model_fpr(rng, loc=loc, scale=scale, empirical="widen", pi1=0.5)
                            for _ in range(4)])
    assert out[True][:, 3].mean() >= out[False][:, 3].mean() + 0.1, (out[True][:, 3], out[False][:, 3])
    assert out[True][:, 0].mean() <= 0.01, out[True][:, 0]


def _compressed_lower_tail_folder(rng, *, R=120, reps=6, icc=0.1, loc=-1.0, lower=0.5):
    """A dev-gen_e-like simulated audit (issue 13, branch uns9): ``R`` real images, half of them members copied in
    place (+2..4 on the in-place channels only; the registered channels see nothing, as on gen_e), ``reps`` null rows
    per image.  The non-members' channels are ``loc + S'`` with ``S'`` a null draw whose LOWER half is compressed by
    ``lower`` (their upper half has the null's shape): what dev gen_e's unsupervised audit measured (its non-members'
    lower quarter 0.6-0.7 below the null's, their median 1.2 below, their upper tail the null's shape around their
    median; benchmarks/RESULTS.md, uns9).  Returns (AUC, the default's recall and non-members' flagged share at
    fpr:0.01, the same with the null moved by the non-members' true median offset (an oracle location))."""
    img = _channels(rng, R)
    null = np.concatenate([np.sqrt(icc) * img + np.sqrt(1 - icc) * _channels(rng, R) for _ in range(reps)])
    S = _channels(rng, R)
    cand = loc + np.where(S < 0, lower * S, S)
    nm = R // 2
    cand[:nm, :3] += rng.uniform(2.0, 4.0, (nm, 1))
    Z, null_mask = pair_null_matrix({n: cand[:, j] for j, n in enumerate(NAMES)},
                                    {n: null[:, j] for j, n in enumerate(NAMES)}, NAMES)
    w = np.array([DEFAULT_WEIGHTS[n] for n in NAMES])
    mx = np.array([n in MAX_FEATURES for n in NAMES])
    s, ns, info = pair_null_scores(Z, null_mask, w, mx, null_groups=np.arange(R * reps) % R)
    y = np.r_[np.ones(nm), np.zeros(R - nm)]
    emp = info["empirical_null"]
    assert emp["applied"]
    raw = (ns - emp["loc"]) / emp["scale"]
    oracle = raw + (np.median(s[y == 0]) - np.median(raw))
    out = [roc_auc_score(y, s)]
    for nl in (ns, oracle):
        t = null_threshold(nl, 0.01)["threshold"]
        out += [float(np.mean(s[y == 1] > t)), float(np.mean(s[y == 0] > t))]
    return out


def test_compressed_lower_tail_loses_recall_through_the_location_not_the_ranking():
    """Diagnosis of dev gen_e's unsupervised recall (0.28 at fpr:0.01) pinned on a simulation: the ranking is good
    (AUC >= 0.9) and the real-to-real null's SHAPE is right (moved by the non-members' true median offset, the exact
    fpr:0.01 threshold finds >= 25% of the members and flags <= 5% of the non-members, the issue's bound), but the empirical null's
    location, read from the candidates' lower quarter, is too high when the non-members' lower tail is compressed:
    the default finds at least 0.15 fewer (conservative, not anti-conservative: <= 1% flagged)."""
    rng = np.random.default_rng(2026)
    auc, rec, fp, rec_o, fp_o = np.mean([_compressed_lower_tail_folder(rng) for _ in range(4)], axis=0)
    assert auc >= 0.9
    assert rec_o >= 0.25 and fp_o <= 0.05, (rec_o, fp_o)
    assert fp <= 0.01 and rec <= rec_o - 0.15, (rec, rec_o)


@pytest.mark.xfail(strict=True, reason="issue 13 (uns9): the empirical null's lower-quarter location is conservative "
                   "when the non-members' lower tail is compressed (dev gen_e); no estimator found that fixes it and "
                   "keeps the FPR simulation above")
def test_compressed_lower_tail_in_place_copies_found_without_a_reference():
    """The target of the case above: the default reaches the oracle location's recall (>= 25% at fpr:0.01, <= 5% of
    the non-members flagged).  Main and uns9 find ~10%."""
    rng = np.random.default_rng(2026)
    auc, rec, fp, _, _ = np.mean([_compressed_lower_tail_folder(rng) for _ in range(4)], axis=0)
    assert rec >= 0.25 and fp <= 0.05, (rec, fp)


# ------------------------------------------------------------------------------------- planted copies, no reference
@pytest.fixture(scope="module")
def planted():
    """100 real images, half of them members: each member appears once among the generated images as a strong
    transformed copy (cycling: flip + 5 px shift, a 6.4 px = 10% shift, a 9 deg rotation with a 3 px shift),
    + noise sd 2, among 150 of the generator's own new patients."""
    rng = np.random.default_rng(17)
    real = phantoms(100, 40)
    members = np.arange(0, 100, 2)
    copies = []
    for t, m in enumerate(members):
        a = rng.uniform(0, 2 * np.pi)
        kind = t % 3
        if kind == 0:
            p = dict(flip=1, dy=5 * np.sin(a), dx=5 * np.cos(a))
        elif kind == 1:
            p = dict(dy=6.4 * np.sin(a), dx=6.4 * np.cos(a))
        else:
            p = dict(angle=float(rng.choice([-9.0, 9.0])), dy=3 * np.sin(a), dx=3 * np.cos(a))
        copies.append(u8(transform(real[m], **p) + rng.normal(0, 2, (H, H))))
    gen = np.concatenate([phantoms(150, 41), np.stack(copies)])
    gen = gen[rng.permutation(len(gen))]
    y = np.zeros(len(real), int)
    y[members] = 1
    return real, gen, y


def test_planted_transformed_copies_flagged_without_a_reference(planted, tmp_path):
    """Default decision and fdr:0.1, no --dev, no --reference: >= 80% of the members flagged, <= 5% of the
    non-members; the summary says the registered evidence has its real-to-real null.  The state before
    (``pair_register=False, combine="max"``: no registered evidence without a reference) misses them."""
    real, gen, y = planted
    kw = dict(backbone=None, cache_dir=str(tmp_path))
    res = audit_membership(gen, real, **kw)
    assert res.info["null"] == "real-pairs" and res.info["pair_null"]["registered"]
    assert "reg_ratio" in res.info["weights"] and "registered onto its nearest other reals" in res.summary
    assert roc_auc_score(y, res.score) >= 0.95
    assert res.used[y == 1].mean() >= 0.8, res.used[y == 1]
    assert res.used[y == 0].mean() <= 0.05, res.used[y == 0].sum()
    fdr = audit_membership(gen, real, decision="fdr:0.1", **kw)
    assert fdr.used[y == 1].mean() >= 0.8 and fdr.used[y == 0].mean() <= 0.05
    before = audit_membership(gen, real, pair_register=False, combine="max", **kw)
    assert "reg_ratio" not in before.info["weights"]
    assert before.used[y == 1].mean() < res.used[y == 1].mean() - 0.3


def test_no_copies_no_reference_flags_few(planted, tmp_path):
    """The same generator without its copies (new patients only): default flags <= 5%, fdr:0.1 at most 3."""
    real, _, _ = planted
    gen = phantoms(150, 41)
    kw = dict(backbone=None, cache_dir=str(tmp_path))
    assert audit_membership(gen, real, **kw).used.mean() <= 0.05
    assert audit_membership(gen, real, decision="fdr:0.1", **kw).used.sum() <= 3


# ------------------------------------------------------------------------------------- the anatomy pair null
def test_anatomy_pair_null_equals_brute_force():
    """``anatomy=True``: every row is ``-log((1 - ncc_A + 1e-3) / (1 - ncc_B + 1e-3))`` with ``ncc_A`` / ``ncc_B``
    the best low-pass NCC (in place or mirrored) with any image of part A / part B, here by brute force over all
    pairs (numpy correlation of scipy-filtered, sampled images, self excluded).  One split share, so no size
    correction.  A real image's mirrored twin with re-synthesised texture is its best anatomy match."""
    from test_membership_evidence_anatomy import _ref_features, family, resynth

    rng = np.random.default_rng(8)
    real = family(30, 31)
    real[1] = u8(resynth(real[0][:, ::-1], real[2], 2.0) + rng.normal(0, 2, real[0].shape))
    R = len(real)
    pn = real_pair_null(real, 40, k=R - 1, splits=(0.5,), repeats=3, random_state=6, anatomy=True,
                        anatomy_register=False)
    assert pn["anat_ratio"].shape == (3 * R,) and pn["_theta"]["anat_ratio"] == 0.0
    f, fm = _ref_features(real), _ref_features(real[:, :, ::-1])
    ncc = np.maximum(np.corrcoef(f)[:R, :R], np.corrcoef(np.concatenate([fm, f]))[:R, R:])
    np.fill_diagonal(ncc, -np.inf)
    assert np.argmax(ncc[0]) == 1 and np.argmax(ncc[1]) == 0
    draw = np.random.default_rng(6)
    want = []
    for _ in range(3):
        in_a = draw.random(R) < 0.5
        a = np.where(in_a[None, :], ncc, -np.inf).max(1)
        b = np.where(~in_a[None, :], ncc, -np.inf).max(1)
        want.append(-np.log((np.clip(1 - a, 0, None) + 1e-3) / (np.clip(1 - b, 0, None) + 1e-3)))
    np.testing.assert_allclose(pn["anat_ratio"], np.concatenate(want), rtol=1e-6, atol=1e-6)


def test_registered_anatomy_pair_null_is_the_evidences_rule_on_each_split():
    """With the low-pass registration (the default, as the evidence's ``anatomy.REGISTERED``) each null row is
    :func:`anatomy_pair_values` on its split with the registration's shortlisted real candidates, i.e. the
    evidence's own ``anat_ratio`` with part A playing the generated images (that function is tested against
    :func:`anatomy_evidence` in test_membership_evidence_anatomy.py), up to the per-share size correction.  A real
    image's rotated / shifted / mirrored twin with re-synthesised texture gets a clearly higher value than the
    in-place null gives it where the twin plays a generated image."""
    from test_membership_evidence_anatomy import _transformed, family, resynth

    from imprint.engine.membership import calibrate as cal
    from imprint.engine.membership.anatomy import anatomy_pair_values
    from imprint.engine.membership.common import _hashes
    from imprint.engine.membership.evidence import _knn_self, _zrows

    rng = np.random.default_rng(9)
    real = family(36, 37)
    real[1] = u8(_transformed(resynth(real[0], real[2], 2.0), rng)[0])
    R = len(real)
    shares = (0.25, 0.5, 0.75)
    kw = dict(k=8, splits=shares, repeats=2, random_state=4, anatomy=True)
    pn = real_pair_null(real, 50, **kw)
    flat = real_pair_null(real, 50, anatomy_register=False, **kw)
    _, idx = _knn_self(_zrows(real), R, 8, R)
    cand, _ = cal._pair_reg_candidates(real, idx, _hashes(real), {}, k_reg=6, n_pix=3, k_spec=4, share=0.25)
    from imprint.engine.membership import anatomy as anat_mod
    from imprint.engine.membership.register import lowpass_pair_candidates

    a_only = 0
    if anat_mod.LOWPASS_CANDIDATES:   # the evidence's low-pass candidate source too, in part A only (branch short7)
        lp = lowpass_pair_candidates(real, _hashes(real), {}, share=0.25)
        cand, a_only = np.concatenate([cand, lp], 1), lp.shape[1]
    draw = np.random.default_rng(4)
    raw = np.stack([anatomy_pair_values(real, draw.random(R) < p, cand, a_only=a_only) for p in shares
                    for _ in range(2)])
    assert np.isfinite(raw).all()
    d = pn["anat_ratio"].reshape(6, R) - raw          # the size correction: one constant per split
    assert np.allclose(d, d[:, :1], atol=1e-9), d.std(1)
    rows0 = np.flatnonzero(pn["_images"] == 0)
    assert (pn["anat_ratio"][rows0] - flat["anat_ratio"][rows0]).max() > 0.5

def test_planted_resynthesised_copies_flagged_without_a_reference(tmp_path):
    """No reference: half of 120 look-alike patients have their anatomy copied under another patient's texture
    (sigma 2 px at 64 px) among 240 of the generator's own look-alikes.  With the anatomy evidence in the
    real-to-real null (``pair_anatomy``, default) >= 60% of the members are flagged at fdr:0.1 and fpr:0.01, with
    <= 5% of the other half at fpr:0.01 and a false share <= 0.15 among fdr:0.1's flags; without it (the state before) the in-place and registered channels find far fewer."""
    from test_membership_evidence_anatomy import family, resynth

    rng = np.random.default_rng(33)
    real = family(120, 34)
    gen = family(240, 35)
    donors = family(60, 36)
    members = np.arange(0, 120, 2)
    slots = rng.choice(len(gen), len(members), replace=False)
    for m, t, d in zip(members, slots, donors):
        gen[t] = u8(resynth(real[m], d, 2.0) + rng.normal(0, 2, d.shape))
    y = np.zeros(len(real), int)
    y[members] = 1
    kw = dict(backbone=None, cache_dir=str(tmp_path), pair_register=False)
    res = {}
    for anat in (True, False):
        for dec in ("fpr:0.01", "fdr:0.1"):
            res[anat, dec] = audit_membership(gen, real, decision=dec, pair_anatomy=anat, **kw)
    after = res[True, "fpr:0.01"]
    assert after.info["pair_null"]["anatomy"] and "anat_ratio" in after.info["weights"]
    assert "anat_ratio" not in res[False, "fpr:0.01"].info["weights"]
    assert roc_auc_score(y, after.score) >= 0.95
    for dec in ("fpr:0.01", "fdr:0.1"):
        u = res[True, dec].used
        assert u[y == 1].mean() >= 0.6, (dec, u[y == 1].mean())
        if dec == "fpr:0.01":
            assert u[y == 0].mean() <= 0.05, (dec, u[y == 0].sum())
        else:                                            # fdr:0.1 bounds the false share among the flags
            assert u[y == 0].sum() <= 0.15 * u.sum(), (dec, u[y == 0].sum(), u.sum())
        assert res[False, dec].used[y == 1].mean() <= u[y == 1].mean() - 0.3


# ------------------------------------------------------------------------------------- in-place copies, collapsed generator
def test_in_place_copies_among_a_collapsed_generator_flagged_without_a_reference(tmp_path):
    """No reference: half of 100 real patients copied in place with light noise (sd 3) among 150 new images of a
    generator with little diversity (variations of 6 patients of its own: its images are closer together than
    real patients are, so real non-members score lower and narrower than the real-to-real null, the gen_e
    diagnosis).  Both empirical nulls ("widen", the default, and "channel") flag >= 50% of the members at
    fpr:0.01 and fdr:0.1, and <= 5% of the other half."""
    rng = np.random.default_rng(44)
    real = phantoms(100, 45)
    protos = phantoms(6, 46).astype(np.float64)
    fake = []
    for i in range(150):
        x = protos[i % 6]
        x = transform(x, dy=rng.normal(0, 0.7), dx=rng.normal(0, 0.7))
        fake.append(u8(x + ndimage.gaussian_filter(rng.normal(0, 6, (H, H)), 1.0) + rng.normal(0, 2, (H, H))))
    members = np.arange(0, 100, 2)
    copies = [u8(real[m].astype(np.float64) + rng.normal(0, 3, (H, H))) for m in members]
    gen = np.concatenate([np.stack(fake), np.stack(copies)])
    gen = gen[rng.permutation(len(gen))]
    y = np.zeros(len(real), int)
    y[members] = 1
    kw = dict(backbone=None, cache_dir=str(tmp_path))
    for emp in ("widen", "channel"):
        for dec in ("fpr:0.01", "fdr:0.1"):
            r = audit_membership(gen, real, decision=dec, empirical=emp, **kw)
            assert r.used[y == 1].mean() >= 0.5, (emp, dec, r.used[y == 1].mean())
            assert r.used[y == 0].mean() <= 0.05, (emp, dec, r.used[y == 0].sum())


# ------------------------------------------------------------------------------------- series: several slices per patient
def _distinct_folder_links(seed, n=60, h=32):
    from imprint.engine.membership.calibrate import real_series_groups

    rng = np.random.default_rng([seed, 77])
    return real_series_groups(np.stack([phantom(rng, h) for _ in range(n)]))[1]["n_links"]


def test_series_groups_planted_series_grouped_distinct_patients_not():
    """:func:`calibrate.series_groups`: (1) in folders of planted series (3 slices per patient) no group ever joins two
    patients, and most same-patient pairs are grouped (>= 60%; ~75-80% measured: the bound is strict); (2) the stated
    bound: in folders of distinct patients the probability of ANY false link is <= SERIES_ALPHA (0.05), checked by
    simulation over 120 folders of 60 phantom patients (+ 2 Monte-Carlo standard errors); (3) too few images: nothing
    grouped, with the reason."""
    from imprint.engine.membership.calibrate import SERIES_ALPHA, real_series_groups

    for seed in (0, 1):
        real, pat, _, _ = series_folder(seed)
        g, info = real_series_groups(real)
        same = pat[:, None] == pat[None]
        gg = g[:, None] == g[None]
        off = ~np.eye(len(pat), dtype=bool)
        assert not (gg & ~same).any(), info                  # no group spans two patients
        assert (gg & same & off).sum() >= 0.6 * (same & off).sum(), info
        assert info["n_series"] >= 20 and info["largest"] == 3 and 0 < info["factor"] < 1
    links = np.array([_distinct_folder_links(s) for s in range(120)])
    assert np.mean(links > 0) <= SERIES_ALPHA + 2 * np.sqrt(SERIES_ALPHA * (1 - SERIES_ALPHA) / len(links)), links
    g, info = real_series_groups(phantoms(15, 3, h=32))
    assert (g == np.arange(15)).all() and info["n_series"] == 0 and info["reason"]


def test_pair_null_leaves_out_the_own_series_and_is_unchanged_without_series():
    """``real_pair_null``: with series, no neighbour of a null row is a slice of its own patient (the rows of an image
    whose sibling plays a generated image are no longer the heavy tail: the null's q99 drops); without series (distinct
    patients) ``series=True`` gives the null of ``series=False`` bit for bit."""
    from imprint.engine.membership.calibrate import PAIR_FEATURES

    real, pat, _, _ = series_folder(2)
    kw = dict(splits=(0.25, 0.5, 0.75), repeats=2, anatomy=True, anatomy_register=False)
    on = real_pair_null(real, 100, **kw)
    off = real_pair_null(real, 100, series=False, **kw)
    g = on["_groups"]
    assert len(np.unique(g)) < len(g) and (off["_groups"] == np.arange(len(g))).all()
    for n in PAIR_FEATURES + ("anat_ratio",):
        assert np.quantile(on[n], 0.99) < np.quantile(off[n], 0.99) - 0.3, n
    distinct = phantoms(40, 8, h=48)
    a = real_pair_null(distinct, 50, **kw)
    b = real_pair_null(distinct, 50, series=False, **kw)
    assert (a["_groups"] == np.arange(40)).all()
    for n in PAIR_FEATURES + ("anat_ratio",):
        np.testing.assert_array_equal(a[n], b[n])


def test_planted_series_copies_flagged_without_a_reference(tmp_path):
    """A real folder of series (40 phantom patients x 3 slices, the design of benchmarks/pair_null_same_patient.py),
    every slice of half the patients copied in place with light noise among 150 new patients, no reference: at the default decision (fpr:0.01) >= 50% of the members are
    flagged and <= 5% of the others, and the summary states the series found.  The state before (``pair_series=False``:
    every other slice counts as another patient, so the null's upper tail is same-patient pairs) finds far fewer
    (the benchmark's 40 x 3 folders: 0.20-0.23 recall at AUC 1.000, benchmarks/RESULTS.md uns7)."""
    real, pat, y, gen = series_folder(3, n_pat=40, n_new=150)
    kw = dict(backbone=None, cache_dir=str(tmp_path))
    res = audit_membership(gen, real, **kw)
    ser = res.info["pair_null"]["series"]
    assert ser["n_series"] >= 20 and "Series:" in res.summary
    assert roc_auc_score(y, res.score) >= 0.95
    assert res.used[y == 1].mean() >= 0.5, res.used[y == 1].mean()
    assert res.used[y == 0].mean() <= 0.05, res.used[y == 0].sum()
    assert len(list(tmp_path.glob("series-*.npz"))) == 1      # the grouping is checkpointed with the null
    before = audit_membership(gen, real, pair_series=False, **kw)
    assert before.info["pair_null"]["series"] is None
    assert before.used[y == 1].mean() < res.used[y == 1].mean() - 0.3, (before.used[y == 1].mean(), res.used[y == 1].mean())


@pytest.mark.parametrize("empirical", ["widen", pytest.param("channel", marks=pytest.mark.xfail(
    strict=True, reason="the opt-in per-channel null (which may narrow) breaks fdr:0.1's bound on series folders: "
                        "5 of 20 no-member folders flagged, up to 22 (benchmarks/RESULTS.md, uns7); the default holds"))])
def test_unsupervised_decision_false_positive_rate_with_series_by_simulation(empirical):
    """The simulation above (exchangeable generator) on series folders, with 0, 25% and 50% members: after the
    series-aware null (:func:`calibrate.series_groups` finds 60-80% of the same-patient pairs of the planted series
    folders), 30% of the real images still have a slice of their own patient among their null neighbours, and 80%
    of the candidates have one among the real images.  The stated bounds hold: mean FPR of fpr:0.01 <= 0.01,
    P(FPR > 0.02) <= 5%, fdr:0.1 with no member P(any flag) <= 0.1, with members mean false share <= 0.1 (each with
    its Monte-Carlo slack).  A channel-level model of what series do to the evidence (members' recall is not asserted:
    the model's shifts are arbitrary); the images themselves are checked by the planted series test and
    benchmarks/pair_null_same_patient.py."""
    rng = np.random.default_rng([99, len(empirical)])
    reps = 10
    mc = 3 * np.sqrt(0.01 / 2000 / (4 * reps))
    fprs = []
    for pi1 in (0.0, 0.25, 0.5):
        res = np.array([_null_model_fpr(rng, loc=0.0, scale=1.0, empirical=empirical, pi1=pi1, series_null=0.3,
                                        series_cand=0.8) for _ in range(2 * reps if pi1 == 0 else reps)])
        fpr, flags, icc, rec, fdp = res.T
        fprs.append(fpr)
        if pi1 == 0:
            assert np.mean(flags > 0) <= 0.1 + 2 * np.sqrt(0.1 * 0.9 / len(flags)), flags
        else:
            assert fdp.mean() <= 0.1 + 2 * fdp.std() / np.sqrt(len(fdp)), (pi1, fdp)
    fpr = np.concatenate(fprs)
    assert fpr.mean() <= 0.01 + mc, fpr.mean()
    assert np.mean(fpr > 0.02) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / len(fpr)), np.sort(fpr)[-5:]
