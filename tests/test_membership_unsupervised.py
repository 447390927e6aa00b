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


def _null_model_fpr(rng, *, loc, scale, empirical, R=100, n_fresh=2000, icc=0.2, reps=6):
    """One simulated audit with no member: ``R`` real images, each with ``reps`` null rows (correlated ``icc``
    within the image, as real_pair_null's splits are), ``R`` non-member candidates whose channels are
    ``loc + scale * S`` (S distributed as a null row), and ``n_fresh`` more non-members scored by the same
    fitted rule without shaping it: their flagged share is the rule's true false-positive rate."""
    img = _channels(rng, R)
    null = np.concatenate([np.sqrt(icc) * img + np.sqrt(1 - icc) * _channels(rng, R) for _ in range(reps)])
    cand = loc + scale * _channels(rng, R + n_fresh)
    Z, null_mask = pair_null_matrix({n: cand[:, j] for j, n in enumerate(NAMES)},
                                    {n: null[:, j] for j, n in enumerate(NAMES)}, NAMES)
    w = np.array([DEFAULT_WEIGHTS[n] for n in NAMES])
    mx = np.array([n in MAX_FEATURES for n in NAMES])
    fit = np.zeros(len(Z), bool)
    fit[:R] = True
    s, ns, info = pair_null_scores(Z, null_mask, w, mx, empirical=empirical, fit_rows=fit,
                                   null_groups=np.arange(R * reps) % R)
    assert info["combine"] == "tail"
    fpr = float(np.mean(s[R:] > null_threshold(ns, 0.01)["threshold"]))
    flags = int(fdr_decision(s[:R], ns, 0.1)[0].sum())
    return fpr, flags, info["null_icc"]


@pytest.mark.parametrize("case", ["exchangeable", "further", "closer"])
def test_unsupervised_decision_false_positive_rate_by_simulation(case):
    """No member planted, 40 simulated folders per case.  'exchangeable': the generator's non-copies relate to a
    patient as another patient does (the real-to-real null's model); 'further' / 'closer': their evidence is
    moved and narrowed / widened (gen_e-like / a generator closer to every patient than patients are to each
    other).  Stated guarantee of the default (empirical null): the EXPECTED share of non-members flagged by
    fpr:0.01 is <= 0.01, and P(FPR > 0.02) <= 5% (its location and scale are estimated, so the 95% confidence of
    the order statistic alone does not carry over; measured with 100 folders: P(FPR > 0.01) 0.10 / 0.04 / 0.03,
    mean FPR 0.0047 / 0.0055 / 0.0025).  Without the empirical null and an exchangeable generator the order
    statistic's own guarantee is checked: P(FPR > 0.01) <= 5% (+ Monte-Carlo slack) with correlated null rows.
    fdr:0.1 with no member: at most 3 flags in every folder, mean <= 0.3."""
    loc, scale = {"exchangeable": (0.0, 1.0), "further": (-0.8, 0.8), "closer": (0.8, 1.3)}[case]
    rng = np.random.default_rng({"exchangeable": 1, "further": 2, "closer": 3}[case])
    reps = 40
    res = np.array([_null_model_fpr(rng, loc=loc, scale=scale, empirical=True) for _ in range(reps)])
    fpr, flags, icc = res[:, 0], res[:, 1], res[:, 2]
    assert 0.05 < np.median(icc) < 0.4                   # the null rows' within-image correlation is modelled
    mc = 3 * np.sqrt(0.01 / 2000 / reps)                 # Monte-Carlo error of a mean FPR
    assert fpr.mean() <= 0.01 + mc, fpr.mean()
    assert np.mean(fpr > 0.02) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / reps), np.sort(fpr)[-5:]
    assert flags.max() <= 3 and flags.mean() <= 0.3, flags
    if case == "exchangeable":
        raw = np.array([_null_model_fpr(rng, loc=loc, scale=scale, empirical=False)[0] for _ in range(reps)])
        assert np.mean(raw > 0.01) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / reps), np.sort(raw)[-5:]
    if case == "closer":                                 # the real-to-real null alone fails here
        raw = np.array([_null_model_fpr(rng, loc=loc, scale=scale, empirical=False)[0] for _ in range(10)])
        assert raw.mean() > 2 * 0.01 and raw.mean() > 2 * fpr.mean(), (raw.mean(), fpr.mean())


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
