"""benchmarks/uns_stouffer.py (issue 13, branch uns15): a Stouffer-type combination for the unsupervised mode, replayed
offline.  Not an engine path (it loses most transformed and resynthesised copies on the zoo captures, RESULTS.md uns15);
these tests pin what the replay's figures rest on: the weighted sum of the channels is a location / scale family under
a common per-channel move where the default min-p combination is not, and the replay's decision path keeps the FPR in
the simulated case that broke uns14's anchor while finding planted members."""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))

import uns_stouffer as us  # noqa: E402
from imprint.engine.membership import calibrate as cal  # noqa: E402

import test_membership_unsupervised as tum  # noqa: E402


def _ratios(rule, loc, scale, folders=4, n=2000, seed=3):
    """Non-members' (q50 - q05) and (q99 - q50) of the combined score over the null rows' (member-free folders), the
    mean over folders of the per-folder ratios (:func:`uns_stouffer.spread_quantiles`)."""
    a = us.spread_quantiles((rule,), loc, scale, folders, n, seed)[rule]
    return np.mean(np.stack([a[:, 0] / a[:, 1], a[:, 2] / a[:, 3]], 1), 0)


def test_sum_combination_moves_as_a_location_scale_family_min_p_stretches():
    """Every channel of a non-member moved down 0.8 and narrowed to 0.8 ('further'): the weighted sum's lower AND upper
    halves both narrow (ratios < 0.9, within 0.15 of each other: a location / scale move, so a lower-window fit carries
    to the upper tail), while the default min-p score's lower half narrows and its upper half stretches (> 1)."""
    lo_s, up_s = _ratios("sum", -0.8, 0.8)
    assert lo_s < 0.9 and up_s < 0.9 and abs(up_s - lo_s) < 0.15, (lo_s, up_s)
    lo_t, up_t = _ratios("tail", -0.8, 0.8)
    assert lo_t < 0.85 and up_t > 1.0 and up_t - lo_t > 0.25, (lo_t, up_t)
    lo_x, up_x = _ratios("sum", 0.0, 1.0)          # exchangeable: no move
    assert abs(lo_x - 1) < 0.12 and abs(up_x - 1) < 0.12, (lo_x, up_x)


def test_stouffer_sum_anchored_null_keeps_fpr_in_further_case_and_finds_planted_members(monkeypatch):
    """The replay's decision path (sum combination, uns14's median anchor on it, main's fpr:0.01 / fdr:0.1) on the
    simulated 'further' folders of tests/test_membership_unsupervised.py, members planted in half the folders' halves:
    mean FPR <= 0.01, member-free fdr:0.1 flags <= 0.6 on average, and the planted members found (recall >= 0.1 at
    fpr:0.01 with half the candidates members)."""
    monkeypatch.setattr(tum, "pair_null_scores", lambda *a, **kw: us.stouffer_pair_null_scores(
        *a, rule="sum", min_scale=1.0, anchor=cal.ANCHOR_MIN_SLOPE, **kw))
    loc, scale = tum.SIM_CASES["further"]
    rng = np.random.default_rng([1, 15])
    res = np.array([(pi1,) + tuple(tum._null_model_fpr(rng, loc=loc, scale=scale, empirical="widen", pi1=pi1))
                    for pi1 in (0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5)])
    fpr = res[:, 1]
    assert fpr.mean() <= 0.01 + 3 * np.sqrt(0.01 / 2000 / len(fpr)), fpr
    assert res[res[:, 0] == 0, 2].mean() <= 0.6
    assert res[res[:, 0] == 0.5, 4].mean() >= 0.1, res[:, 4]
