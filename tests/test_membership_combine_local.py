"""The opt-in ``calibrate.ENRICH_MODE = "local"`` of the tail-split rule (issue 13, branch comb13): every channel's
p-values divided by the channel's enrichment at the row's own level, then the a-priori split.

Its definition, that it is a symmetric function of the rows (so the fpr / fdr guarantees hold, verified by simulation
with a channel enriched by many members just past its null tail), that planted copies are found and non-members are
not flagged, and that the default (off) is comb8's rule."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ndtri

from imprint.engine.errors import ImprintError
from imprint.engine.membership import calibrate as C
from imprint.engine.membership import fdr_decision, null_threshold


@pytest.fixture
def local_mode(monkeypatch):
    monkeypatch.setattr(C, "ENRICH_MODE", "local")


def _brute(P, max_level):
    n = len(P)
    out = np.empty_like(P)
    for c in range(P.shape[1]):
        for i in range(n):
            # min over rows j of the channel with p_j >= p_i of p_j / max(1, E(p_j)) (E = 1 above max_level)
            cands = []
            for j in range(n):
                pj = P[j, c]
                if pj >= P[i, c]:
                    cnt = np.sum(P[:, c] <= pj)
                    e = max(1.0, cnt / (1.0 + n * pj)) if pj <= max_level else 1.0
                    cands.append(pj / e)
            out[i, c] = min(cands)
    return out


def test_local_enrichment_pvalues_match_the_definition_and_ignore_row_order():
    """Against a brute force of the definition (with ties); never above p; the same for any order of the rows; a channel
    with no excess (the exact uniform grid) unchanged; p above max_level unchanged."""
    rng = np.random.default_rng(2)
    n = 120
    P = rng.random((n, 4))
    P[:25, 1] = rng.uniform(1e-4, 4e-3, 25)                 # channel 1: many rows a little past the tail
    P[:3, 2] = 1e-9                                          # channel 2: a few far rows
    P[10:14, 1] = P[10, 1]                                   # ties
    P[:, 3] = np.arange(1, n + 1) / (n + 1.0)                # channel 3: exactly uniform
    Q = C.local_enrichment_pvalues(P, 0.1)
    np.testing.assert_allclose(Q, np.clip(_brute(P, 0.1), 1e-300, 1), rtol=1e-12)
    assert np.all(Q <= P + 1e-15)
    np.testing.assert_array_equal(Q[:, 3], P[:, 3])
    near = P[:25, 1] >= 1e-3
    assert near.sum() >= 15 and np.all(Q[:25, 1][near] < P[:25, 1][near] / 3)   # the enriched channel is credited
    hi = P > 0.1
    np.testing.assert_array_equal(Q[hi], P[hi])
    perm = rng.permutation(n)
    np.testing.assert_array_equal(C.local_enrichment_pvalues(P[perm], 0.1), Q[perm])
    assert np.array_equal(Q[10:14, 1], np.full(4, Q[10, 1]))


def test_enrich_mode_off_is_comb8_and_a_bad_mode_is_an_error(monkeypatch):
    rng = np.random.default_rng(4)
    Z = rng.standard_normal((200, 5))
    w = np.array([1.0, 1.0, 0.5, 0.1, 0.1])
    mx = np.array([True, True, False, True, True])
    nm = np.r_[np.ones(150, bool), np.zeros(50, bool)]
    P, _, _ = C.channel_pvalues(Z, w, mx, nm)
    ref = -ndtri(np.clip(C.split_pvalue(P, C.split_shares(P)), 1e-300, 1 - 1e-12))
    np.testing.assert_array_equal(C.calibrated_max(Z, w, mx, nm, sum_share=C.SUM_SHARE)[0], ref)
    monkeypatch.setattr(C, "ENRICH_MODE", "local")
    loc = -ndtri(np.clip(C.split_pvalue(C.local_enrichment_pvalues(P), C.split_shares(P, C.SUM_SHARE, None)),
                         1e-300, 1 - 1e-12))
    np.testing.assert_array_equal(C.calibrated_max(Z, w, mx, nm, sum_share=C.SUM_SHARE)[0], loc)
    monkeypatch.setattr(C, "ENRICH_MODE", "global")
    with pytest.raises(ImprintError):
        C.calibrated_max(Z, w, mx, nm, sum_share=C.SUM_SHARE)


# five channels as in test_membership_decide (imported: the same construction)
from test_membership_decide import _MX, _W, _channels  # noqa: E402


def test_local_mode_keeps_the_fpr_and_fdr_guarantees_with_an_enriched_channel(local_mode):
    """Exchangeable null (K = 300), 2,000 fresh non-members, and 150 members a little past the registration channel's
    null tail (+2.5 to +4.5 robust z: the channel strongly enriched, as elastic copies would make ``anat_flow_ratio``)
    among 250 candidates; every row, the fresh ones included, shapes the local enrichment (a symmetric function of the
    rows).  fpr:0.01: P(true FPR on the fresh rows > 0.01) <= 5% (+3 s.e.); BH at 0.1 on the candidates: mean FDP
    <= 0.1 (+3 s.e.)."""
    rng = np.random.default_rng(29)
    reps, K, nf, n1, n0 = 120, 300, 2000, 150, 100
    viol, fdp, credited = 0, [], []
    for _ in range(reps):
        Z = _channels(rng, K + nf + n1 + n0)
        Z[K + nf:K + nf + n1, 4] += rng.uniform(2.5, 4.5, n1)
        null_mask = np.r_[np.ones(K, bool), np.zeros(nf + n1 + n0, bool)]
        raw = C.calibrated_max(Z, _W, _MX, null_mask, sum_share=C.SUM_SHARE)[0]
        sc = C.robust_calibrate(raw, raw[null_mask])
        s, ns = sc[~null_mask], sc[null_mask]
        th = null_threshold(ns, 0.01)
        assert th["exact"]
        viol += np.mean(s[:nf] > th["threshold"]) > 0.01
        used, _ = fdr_decision(s[nf:], ns, 0.1)
        fdp.append(used[n1:].sum() / max(used.sum(), 1))
        credited.append(used[:n1].mean())
    assert viol / reps <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / reps), viol / reps
    assert np.mean(fdp) <= 0.1 + 3 * np.std(fdp) / np.sqrt(reps) + 1e-9, np.mean(fdp)
    assert np.mean(credited) >= 0.5, np.mean(credited)        # the enriched channel's members are found


def test_local_mode_finds_planted_copies_and_leaves_non_members(monkeypatch):
    """60 members strong in the registration channel only (robust z +6 to +12, beyond its null), 60 non-members, a
    300-image null with a rare extreme outlier channel, 4 draws: with the local mode >= 90% of members flagged at
    fpr:0.01, at most 2 non-members per draw, and no fewer members than the default rule (scratch: 1.00 and 1.00)."""
    out = {None: [], "local": []}
    for seed in range(4):
        rng = np.random.default_rng(500 + seed)
        K, n1, n0 = 300, 60, 60
        Z = _channels(rng, K + n1 + n0)
        Z[K:K + n1, 4] += rng.uniform(6, 12, n1)
        null_mask = np.r_[np.ones(K, bool), np.zeros(n1 + n0, bool)]
        for mode in out:
            monkeypatch.setattr(C, "ENRICH_MODE", mode)
            raw = C.calibrated_max(Z, _W, _MX, null_mask, sum_share=C.SUM_SHARE)[0]
            sc = C.robust_calibrate(raw, raw[null_mask])
            s, ns = sc[~null_mask], sc[null_mask]
            used = s > null_threshold(ns, 0.01)["threshold"]
            out[mode].append((used[:n1].mean(), used[n1:].sum()))
    loc, off = np.array(out["local"]), np.array(out[None])
    assert loc[:, 0].mean() >= 0.9 and loc[:, 1].max() <= 2, out
    assert loc[:, 0].mean() >= off[:, 0].mean() - 1e-12, out
