"""Candidates that survive elastic deformation (issue 13, branch elsrc13): the opt-in coarse low-pass source.

Elastic copies are PLANTED (a member deformed by a smooth field of RMS 2 px at 64 px, i.e. the zoo's 4 px at 128,
plus noise) among look-alike generated images; the low-pass source before this branch (moment-frame and spectrum
descriptors) misses most of them, the coarse source (``register.LP_K_COARSE``) must bring more of them in, and with
the flow channel (``deform.FLOW_CHANNEL``) more members must get beyond every reference row while non-members do not.
"""

import numpy as np

from imprint.engine.membership import anatomy as A
from imprint.engine.membership import deform as D
from imprint.engine.membership import register as R
from test_membership_elastic import _elastic
from test_membership_evidence_anatomy import family, u8


def _planted(seed=3, n=20, n_gen=200, n_ref=60):
    rng = np.random.default_rng(seed)
    P = family(2 * n + n_ref, seed + 1)                  # members, non-members, reference
    G = family(n_gen, seed + 2)
    for i in range(n):                                   # member i's copy is generated image i
        G[i] = u8(_elastic(P[i], 2.0, rng) + rng.normal(0, 2, P[i].shape))
    return P, G, n


def test_coarse_source_finds_planted_elastic_copies_the_lowpass_source_misses(monkeypatch):
    P, G, n = _planted()
    monkeypatch.setattr(D, "FLOW_CHANNEL", True)
    got = {}
    for kc in (0, R.LP_K_COARSE_ON):
        monkeypatch.setattr(R, "LP_K_COARSE", kc)
        cg, _, cr, _ = R.lowpass_candidates(G, P)
        assert cg.shape[1] == R.LP_K_FRAME + R.LP_K_SPEC + kc
        found = (cg[:n] == np.arange(n)[:, None]).any(1)
        coarse = (cg[:n, cg.shape[1] - kc:] == np.arange(n)[:, None]).any(1) if kc else found & False
        force = np.arange(cg.shape[1]) >= cg.shape[1] - kc if kc else None
        ev = A.anatomy_evidence(G, P, shortlist=(cg, cr[:, :R.LP_K_FRAME + R.LP_K_SPEC]),
                                **({} if force is None else {"force": force}))
        f = ev["anat_flow_ratio"]
        thr = f[2 * n:].max()                            # the reference rows' max
        got[kc > 0] = dict(found=found, coarse=coarse, mem=(f[:n] > thr).mean(), non=int((f[n:2 * n] > thr).sum()))
    off, on = got[False], got[True]
    # the current source misses most planted copies; the coarse columns find copies it missed
    assert off["found"].mean() <= 0.4, off["found"].mean()
    assert on["found"].mean() >= off["found"].mean() + 0.15, (off["found"].mean(), on["found"].mean())
    assert (on["coarse"] & ~off["found"]).sum() >= 3, (on["coarse"] & ~off["found"]).sum()
    # the flow channel: more members beyond every reference row, non-members not lifted
    assert on["mem"] >= off["mem"] + 0.1, (off["mem"], on["mem"])
    assert on["non"] <= off["non"] + 1, (off["non"], on["non"])


def test_coarse_source_off_is_the_lowpass_source_and_on_rekeys(monkeypatch):
    P, G, _ = _planted(n=4, n_gen=30, n_ref=10)
    monkeypatch.setattr(R, "LP_K_COARSE", 0)
    base = R.lowpass_candidates(G, P)
    same = R.lowpass_candidates(G, P, k_coarse=0)
    for a, b in zip(base, same):
        assert a.shape[1] == R.LP_K_FRAME + R.LP_K_SPEC and np.array_equal(a, b)
    ev, pn = A.checkpoint_tag(True, form="evidence"), A.checkpoint_tag(True, form="pairnull")
    assert "lpcoarse" not in ev and "lowpass_coarse" not in pn                   # off: the keys before
    monkeypatch.setattr(R, "LP_K_COARSE", 3)
    on = R.lowpass_candidates(G, P)
    for a, b in zip(base, on):                           # the earlier columns are unchanged, 3 more at the end
        assert np.array_equal(a, b[:, :a.shape[1]]) and b.shape[1] == a.shape[1] + 3
    tag = A.checkpoint_tag(True, form="evidence")
    assert R.coarse_tag() and R.coarse_tag() in tag and tag.replace(R.coarse_tag(), "") == ev
    assert A.checkpoint_tag(True, form="pairnull")["lowpass_coarse"] == R.coarse_tag()
    monkeypatch.setattr(R, "LP_COARSE_SIGMA", 2.0)       # a changed setting, another key
    assert A.checkpoint_tag(True, form="evidence") not in (ev, tag)
