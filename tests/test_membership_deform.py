"""Elastically deformed copies, non-rigid registration (issue 13, branch elas12): the opt-in flow-refined registered
anatomy NCC (:mod:`engine.membership.deform`, kernel :mod:`kernels.deform`).

The kernel is checked against scikit-image's ``optical_flow_ilk`` on a planted smooth field; copies are PLANTED (a
member deformed by a smooth field of RMS 2 px at 64 px, the zoo's 4 px at 128 px) among look-alikes and must be found
by the flow where the rigid NCC misses them, with the look-alikes not lifted above them.
"""

import numpy as np
import pytest
from scipy import ndimage

from imprint.engine.membership import anatomy as A
from imprint.engine.membership import deform as D
from imprint.kernels.deform import flow_warp
from test_membership_elastic import planted_elastic_rates
from test_membership_evidence_anatomy import family


def _ncc(x, y, v):
    return np.corrcoef(x[v], y[v])[0, 1]


def test_flow_recovers_a_planted_smooth_field_as_skimage_ilk_does():
    """Low-pass anatomy grids (32 x 32) of look-alike CT slices, each moved by a planted smooth field (SD 3 grid px,
    RMS length 1 grid px = 4 px at 128 px): the field's error is below the zero field's and no worse than
    ``optical_flow_ilk``'s (radius 3), the two fields agree, and the NCC after the warp rises to ~1."""
    from skimage.registration import optical_flow_ilk

    rng = np.random.default_rng(0)
    low = A._lowpass_rows(family(6, 1)).astype(np.float64)
    h = low.shape[1]
    yy, xx = np.mgrid[0:h, 0:h].astype(np.float64)
    inner = (slice(3, -3), slice(3, -3))                          # the border, where neither can see the field
    e_ours, e_sk, e_zero, agree, before, after = [], [], [], [], [], []
    for a in low:
        d = np.stack([ndimage.gaussian_filter(rng.standard_normal((h, h)), 3) for _ in range(2)])
        d /= np.sqrt((d ** 2).sum(0).mean())
        b = ndimage.map_coordinates(a, [yy + d[0], xx + d[1]], order=3, mode="nearest")   # b(x) = a(x + d(x))
        warped, valid, U = flow_warp(a, b)
        sk = optical_flow_ilk(b, a, radius=3)                      # (reference, moving): moving(x + flow) = reference
        e_ours.append(np.sqrt(((U[0] - d) ** 2).sum(0))[inner].mean())
        e_sk.append(np.sqrt(((sk - d) ** 2).sum(0))[inner].mean())
        e_zero.append(np.sqrt((d ** 2).sum(0))[inner].mean())
        agree.append(np.corrcoef(U[0].ravel(), sk.ravel())[0, 1])
        before.append(np.corrcoef(a.ravel(), b.ravel())[0, 1])
        after.append(_ncc(warped[0], b, valid[0]))
    e_ours, e_sk, e_zero = map(np.asarray, (e_ours, e_sk, e_zero))
    assert (e_ours < 0.9 * e_zero).all(), (e_ours, e_zero)
    assert (e_ours <= 1.05 * e_sk).all(), (e_ours, e_sk)
    assert min(agree) > 0.8, agree
    assert (1 - np.asarray(after) < 0.25 * (1 - np.asarray(before))).all()


def test_flow_field_is_bounded_and_a_no_move_pair_stays_put():
    rng = np.random.default_rng(1)
    a = ndimage.gaussian_filter(rng.normal(size=(3, 32, 32)), (0, 2, 2))
    b = np.roll(a, 6, axis=2)                                      # a 6 px move, beyond any allowed displacement
    _, _, U = flow_warp(a, b, max_disp=1.5)
    assert np.sqrt((U.astype(np.float64) ** 2).sum(1)).max() <= 1.5 + 1e-5
    warped, valid, U0 = flow_warp(a, a * 3.0 + 7.0)                  # a gain / offset never moves the field
    assert np.abs(U0).max() < 1e-6 and valid.all()
    assert all(np.isclose(_ncc(warped[k], a[k], valid[k]), 1.0) for k in range(3))
    m = np.ones(a.shape, bool)
    m[:, :, :10] = False
    warped, valid, _ = flow_warp(a, b, m)
    assert not valid[:, :, :10].any() and valid.sum(axis=(1, 2)).min() > 200
    assert not flow_warp(np.ones((1, 8, 8)), np.zeros((1, 8, 8)))[1].any()    # constant: nothing valid
    with pytest.raises(ValueError, match="one shape"):
        flow_warp(a, b[:, :16])
    with pytest.raises(ValueError, match="finite"):
        flow_warp(np.full((1, 8, 8), np.nan), np.zeros((1, 8, 8)))


def test_planted_elastic_copies_are_found_by_the_flow_and_look_alikes_not_lifted_above_them(monkeypatch):
    """20 members, each elastically deformed (RMS 2 px at 64 px) among 5 look-alike candidates, and 20 non-members
    with 6 look-alikes each (the construction of test_membership_elastic's planted test).  Rigid: the copy is the best
    match of 85% of the members, a member's best NCC beats every non-member's for 35%.  With :data:`deform.NCC_FLOW`:
    100% and 100% (scratch seeds 0 / 1 of this construction: 1.00 / 1.00 both), the true pair's 1 - NCC falls ~6x
    (0.022 -> 0.003), the non-members' best only ~2x (0.026 -> 0.013)."""
    (hit0, above0, true0, non0), (hit1, above1, true1, non1) = planted_elastic_rates(monkeypatch, D, "NCC_FLOW")
    assert above0 <= 0.5                                        # the rigid NCC misses most (what is planted)
    assert hit1 >= 0.95 and above1 >= 0.95, (hit1, above1)
    assert (true1 >= true0).all() and np.median(1 - true1) < 0.3 * np.median(1 - true0)
    # look-alikes gain, but far less than the copies: not lifted above them
    assert (non1 >= non0).all()
    assert np.median(1 - non1) > 2.0 * np.median(1 - true1)
    assert np.median(np.log((1 - non0) / (1 - non1))) < 0.6 * np.median(np.log((1 - true0) / (1 - true1)))


def test_ncc_flow_off_is_the_rigid_ncc_and_on_rekeys_the_checkpoints(monkeypatch):
    rng = np.random.default_rng(2)
    reg = ndimage.gaussian_filter(rng.normal(size=(4, 32, 32)), (0, 2, 2)).astype(np.float32)
    b = reg + 0.1 * rng.normal(size=reg.shape).astype(np.float32)
    valid = np.ones(reg.shape, np.uint8)
    valid[:, :4] = 0
    assert np.array_equal(A.registered_ncc(reg, b, valid), A._masked_ncc(reg, b, valid != 0))   # off: bit for bit
    ev, pn = A.checkpoint_tag(True, form="evidence"), A.checkpoint_tag(True, form="pairnull")
    assert "flow" not in ev and "anatomy_flow" not in pn["_anatomy"]      # off by default: main's keys
    monkeypatch.setattr(D, "NCC_FLOW", True)
    on = A.registered_ncc(reg, b, valid)
    assert (on >= A._masked_ncc(reg, b, valid != 0)).all()
    assert A.checkpoint_tag(True, form="evidence") == ev + "+" + D.flow_tag()
    assert A.checkpoint_tag(True, form="pairnull")["_anatomy"]["anatomy_flow"] == D.flow_tag()


def test_flow_channel_finds_planted_elastic_copies_and_keeps_resynthesised_ones(monkeypatch):
    """The flow as a ratio channel of its own (``anat_flow_ratio``, :data:`deform.FLOW_CHANNEL`, branch elas13).
    PLANTED: 16 members elastically deformed (RMS 2 px at 64 px = the zoo's 4 px at 128) and 16 members
    re-synthesised (sigma 2 px = the zoo's 4 px) among 160 look-alike generated images; 16 non-members; 80 reference
    rows (the null).  Candidates: each pool row's 6 best in-place low-pass NCCs.  Combined by the engine's
    ``tail-split`` rule (:func:`calibrate.calibrated_max`) over the two anatomy channels against the reference rows.
    Measured here (seed 81): above the null's maximum, elastic members 0.06 with ``anat_ratio`` alone, 0.50 with both
    channels; re-synthesised 0.88 -> 1.00; non-members 0 -> 0 (scratch seed 82: 0.06 -> 0.44, 0.88 -> 0.88, 0 -> 0).
    ``anat_ratio`` itself is unchanged bit for bit by the flag (the channel is added, not mixed in)."""
    from imprint.engine.membership.calibrate import _feature_matrix, calibrated_max
    from test_membership_elastic import _elastic
    from test_membership_evidence_anatomy import resynth, u8

    rng = np.random.default_rng(81)
    n, nref = 16, 80
    P = family(3 * n + nref, 82)               # elastic members, re-synthesised members, non-members, reference
    G = family(160, 83)
    donors = family(n, 84)
    slots = rng.choice(len(G), 2 * n, replace=False)
    for i in range(n):
        G[slots[i]] = u8(_elastic(P[i], 2.0, rng) + rng.normal(0, 2, P[i].shape))
        G[slots[n + i]] = u8(resynth(P[n + i], donors[i], 2.0) + rng.normal(0, 2, P[i].shape))
    fP, fG = A.anatomy_features(P).astype(np.float64), A.anatomy_features(G).astype(np.float64)
    sR = fP @ fP.T
    np.fill_diagonal(sR, -np.inf)
    sl = (np.argsort(-(fP @ fG.T), 1)[:, :6], np.argsort(-sR, 1)[:, :6])
    out = {}
    for flow in (False, True):
        monkeypatch.setattr(D, "FLOW_CHANNEL", flow)
        out[flow] = A.anatomy_evidence(G, P, shortlist=sl)
    assert "anat_flow_ratio" not in out[False] and "anat_flow_ratio" in out[True]
    assert np.array_equal(out[False]["anat_ratio"], out[True]["anat_ratio"])
    null = np.zeros(len(P), bool)
    null[3 * n:] = True
    Z = _feature_matrix(out[True], null, ["anat_ratio", "anat_flow_ratio"])
    E, S, N = slice(0, n), slice(n, 2 * n), slice(2 * n, 3 * n)
    got = {}
    for name, cols in (("rigid", [0]), ("both", [0, 1])):
        sc, _ = calibrated_max(Z[:, cols], np.full(len(cols), 0.1), np.ones(len(cols), bool), null, sum_share=0.5)
        thr = sc[null].max()
        got[name] = ((sc[E] > thr).mean(), (sc[S] > thr).mean(), int((sc[N] > thr).sum()))
    (e0, s0, n0), (e1, s1, n1) = got["rigid"], got["both"]
    assert e0 <= 0.2, got                                    # what is planted: the rigid channel misses them
    assert e1 >= 0.35 and e1 >= e0 + 0.25, got               # found by the flow channel
    assert s1 >= 0.85 and s1 >= s0, got                      # re-synthesised copies kept
    assert n1 <= n0 + 1, got                                 # no more non-members above the null


def test_flow_channel_off_keeps_the_keys_and_on_rekeys_them(monkeypatch):
    ev, pn = A.checkpoint_tag(True, form="evidence"), A.checkpoint_tag(True, form="pairnull")
    assert "flowch" not in ev and "anatomy_flow_channel" not in pn["_anatomy"]       # off: the keys before
    monkeypatch.setattr(D, "FLOW_CHANNEL", True)
    assert A.checkpoint_tag(True, form="evidence") == ev + "+" + D.channel_tag()
    assert A.checkpoint_tag(True, form="pairnull")["_anatomy"]["anatomy_flow_channel"] == D.channel_tag()
    monkeypatch.setattr(D, "FLOW_TOP", 1)                    # a changed setting, another key
    assert A.checkpoint_tag(True, form="evidence") == ev + "+flowchT1" + D.flow_tag()


def test_flow_pick_flows_planted_elastic_copies_the_rigid_cut_drops(monkeypatch):
    """:data:`deform.FLOW_PICK` (branch elas14): which candidates get the flow, by a cheap non-rigid score over the
    :data:`deform.FLOW_PICK_K` coarse-best instead of the rigid polished NCC.  PLANTED: 20 members elastically
    deformed (RMS 2.5 px at 64 px, the zoo's 5 px at 128) among 200 look-alike generated images, the copy put among
    each member's 8 candidates (the 8 best in-place low-pass NCCs); 20 non-members with their 8.  Engine defaults
    (``N_POLISH`` 5, ``FLOW_TOP`` 2).  Here (seed 5) the copy's rigid coarse rank is up to 7 of 8 and its cheap-score
    rank 0; members whose ``flow_ncc`` beats every non-member's: rigid pick 0.20, cheap pick 0.90 (scratch seed 6:
    0.30 -> 0.85); the non-members' median ``1 - flow_ncc`` 0.0122 -> 0.0116 (they gain little)."""
    from test_membership_elastic import _elastic
    from test_membership_evidence_anatomy import u8

    rng = np.random.default_rng(5)
    n = 20
    P = family(2 * n, 6)
    G = family(200, 7)
    slots = rng.choice(len(G), n, replace=False)
    for i in range(n):
        G[slots[i]] = u8(_elastic(P[i], 2.5, rng) + rng.normal(0, 2, P[i].shape))
    fP, fG = A.anatomy_features(P).astype(np.float64), A.anatomy_features(G).astype(np.float64)
    cand = np.argsort(-(fP @ fG.T), 1)[:, :8]
    for i in range(n):
        if slots[i] not in cand[i]:
            cand[i, -1] = slots[i]
    lowP, lowG = A._lowpass_rows(P), A._lowpass_rows(G)
    monkeypatch.setattr(D, "FLOW_CHANNEL", True)
    out = {}
    for pick in (False, True):
        monkeypatch.setattr(D, "FLOW_PICK", pick)
        out[pick] = A.registered_anatomy(lowP, lowG, cand)
    for k in ("ncc", "match", "angle", "dy"):            # the rigid values are not touched by the flag
        assert np.array_equal(out[False][k], out[True][k])
    got = {}
    for pick, r in out.items():
        f = r["flow_ncc"]
        got[pick] = ((f[:n] > f[n:].max()).mean(), np.median(1 - f[n:]))
    (m0, q0), (m1, q1) = got[False], got[True]
    assert m0 <= 0.4, got                                  # what is planted: the rigid cut drops the copies
    assert m1 >= 0.75 and m1 >= m0 + 0.4, got              # the cheap pick flows them
    assert q1 >= 0.8 * q0, got                             # non-members are not lifted with them


def test_flow_pick_off_keeps_the_keys_and_on_rekeys_them(monkeypatch):
    monkeypatch.setattr(D, "FLOW_CHANNEL", True)
    ev, pn = A.checkpoint_tag(True, form="evidence"), A.checkpoint_tag(True, form="pairnull")
    assert D.pick_tag() == "" and "pick" not in ev and ev.endswith("+flowchT2" + D.flow_tag())   # off: elas13's keys
    monkeypatch.setattr(D, "FLOW_PICK", True)
    assert A.checkpoint_tag(True, form="evidence") == ev + "pickK10"
    assert A.checkpoint_tag(True, form="pairnull")["_anatomy"]["anatomy_flow_channel"] == D.channel_tag() != \
        pn["_anatomy"]["anatomy_flow_channel"]
    monkeypatch.setattr(D, "FLOW_PICK_K", 6)               # a changed setting, another key
    assert A.checkpoint_tag(True, form="evidence") == ev + "pickK6"
