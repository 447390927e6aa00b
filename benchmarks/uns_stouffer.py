"""Offline replay (issue 13, branch uns15): the unsupervised decision with a combination whose null is a location
family under per-channel shifts (Stouffer-type), on ``membership_uns_diag.py`` captures, and in the simulation of
tests/test_membership_unsupervised.py.

Why (RESULTS.md uns14, section 3): the default unsupervised score ``-Phi^-1(min_c p_c)`` is not a location family in
the channels' shifts: every channel moved down alike compresses its lower half and STRETCHES its upper half, so no
location fitted on the lower / central part carries over to the upper tail.  A sum is: if every channel ``j`` of a
non-member is ``a + b Z_j`` then ``sum_j v_j (a + b Z_j) = a sum v + b sum v_j Z_j``, a location / scale move of the
null's sum (exactly for the raw channels, approximately for the probits of near-Gaussian channels).

Combinations (every row, candidates and real-to-real null rows, by the same function of its channels; then the robust
z-score against the null rows, as ``calibrate.combined_scores``):

* ``sum``   : the weighted sum ``Z w / ||w||`` of the robust-z channels (the "sum" channel of ``channel_pvalues``);
* ``probit``: Stouffer over the tail-calibrated channels: ``sum_c Phi^-1(1 - p_c) / sqrt(C)`` with ``p_c`` the
  ``calibrate.channel_pvalues`` of the weighted sum and of every max-rule channel (leave-one-out for null rows);
* ``probit-all``: Stouffer over the tail p-values of every channel with positive weight, weights ``w``.

Then ``calibrate.empirical_null`` on the candidates' combined scores (main's lower-window fit) with ``min_scale``
1 (main: move / widen only) or 0.5 (``CHANNEL_NULL_MIN_SCALE``: the location / scale family the sum makes plausible),
and main's decisions (``decide.null_threshold`` at 0.01, ``fdr_decision`` at 0.1).

Usage::

    python benchmarks/uns_stouffer.py replay /tmp/uns14/zoo_s2.npz /tmp/uns14/zoo_s3.npz /tmp/uns13/loo.npz
    python benchmarks/uns_stouffer.py sim [--cases further,narrower,exchangeable,closer]

Every zoo and dev figure is in-sample for whatever is chosen from it (nothing here is tuned: the rules and the two
scale floors are a priori).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from scipy.special import ndtri

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from imprint.engine.membership import calibrate as cal  # noqa: E402

RULES = ("sum", "probit", "probit-all")


def stouffer_raw(Z, w, mx, null_mask, rule):
    """Raw combined score of every row (not yet z-scored)."""
    Z = np.asarray(Z, np.float64)
    w = np.asarray(w, np.float64)
    if rule == "sum":
        return Z @ (w / np.linalg.norm(w))
    if rule == "probit":
        P, _, _ = cal.channel_pvalues(Z, w, mx, null_mask)
        return (-ndtri(np.clip(P, 1e-300, 1 - 1e-12))).sum(1) / np.sqrt(P.shape[1])
    if rule == "probit-all":
        on = w > 0
        P, _, _ = cal.channel_pvalues(Z[:, on], np.ones(int(on.sum())), np.ones(int(on.sum()), bool), null_mask)
        Q = -ndtri(np.clip(P[:, 1:], 1e-300, 1 - 1e-12))   # column 0 is the sum of the columns: left out here
        v = w[on]
        return Q @ (v / np.linalg.norm(v))
    raise ValueError(rule)


def stouffer_pair_null_scores(Z, null_mask, w, use_max, *, rule="sum", min_scale=1.0, anchor=None, empirical=True,
                              fit_rows=None, null_groups=None, combine="tail"):
    """``calibrate.pair_null_scores`` (empirical "widen") with the Stouffer-type combination ``rule``; ``anchor``:
    uns14's median anchor (``calibrate.ANCHOR_MIN_SLOPE``) on the Stouffer score (safe under the location family when
    the non-members' true scale is <= 1: the upper half keeps the proxy's, wider, shape)."""
    null_mask = np.asarray(null_mask, bool)
    fit = ~null_mask if fit_rows is None else (np.asarray(fit_rows, bool) & ~null_mask)
    raw = stouffer_raw(Z, w, use_max, null_mask, rule)
    sa = cal.robust_calibrate(raw, raw[null_mask])
    ns = sa[null_mask]
    emp = None
    if empirical not in (False, "none"):
        emp = cal.empirical_null(sa[fit], ns, min_scale=min_scale, anchor=anchor)
        ns = emp["loc"] + emp["scale"] * ns
    icc = cal._intraclass_correlation(sa[null_mask], null_groups) if null_groups is not None else float("nan")
    return sa[~null_mask], np.asarray(ns, np.float64), {"combine": "tail", "empirical_null": emp,
                                                       "channel_null": None, "null_icc": icc}


CONFS = {"main": None, "uns14 anchor": "anchor", "sum": ("sum", 1.0), "sum s>=0.5": ("sum", 0.5),
         "probit": ("probit", 1.0), "probit s>=0.5": ("probit", 0.5), "probit-all": ("probit-all", 1.0),
         "sum anchor": ("sum", 1.0, cal.ANCHOR_MIN_SLOPE), "probit anchor": ("probit", 1.0, cal.ANCHOR_MIN_SLOPE)}


def scores(c, conf):
    Z, null, w, mx, g = c["Z"], c["null"].astype(bool), c["w"], c["mx"], c["groups"]
    if conf is None or conf == "anchor":
        saved = cal.EMPIRICAL_NULL_ANCHOR
        cal.EMPIRICAL_NULL_ANCHOR = conf == "anchor"
        try:
            s, ns, info = cal.pair_null_scores(Z, null, w, mx, empirical=True, null_groups=g, combine="tail")
        finally:
            cal.EMPIRICAL_NULL_ANCHOR = saved
        return s, ns, info["empirical_null"]
    s, ns, info = stouffer_pair_null_scores(Z, null, w, mx, rule=conf[0], min_scale=conf[1],
                                            anchor=conf[2] if len(conf) > 2 else None, null_groups=g)
    return s, ns, info["empirical_null"]


def replay(paths, confs=None):
    from membership_uns_diag import load_captures
    from uns_report import decide

    confs = confs or list(CONFS)
    r = lambda x: "n/a" if not np.isfinite(x) else f"{x:.3f}"  # noqa: E731
    print("| case | " + " | ".join(f"{k}: AUC / loc, scale | fpr:0.01 | fdr:0.1" for k in confs) + " |")
    print("|---" * (1 + 3 * len(confs)) + "|")
    for p in paths:
        if not os.path.exists(p):
            print(f"| {p} missing |")
            continue
        for c in load_captures(p):
            y = c["y"]
            cells = []
            for k in confs:
                s, ns, e = scores(c, CONFS[k])
                d = decide(s, ns, y)
                cells.append(f" {r(d['auc'])} / {e['loc']:+.2f}, {e['scale']:.2f} | {r(d['rec'])} ({d['fp']}) | "
                             f"{r(d['rec_fdr'])} ({d['fp_fdr']}) |")
            print(f"| {c['name']} |" + "".join(cells), flush=True)


def spread_quantiles(rules, loc, scale, folders=6, n=2000, seed=3):
    """tests/test_membership_unsupervised.py's model (its stretch test's, same seed): per folder, member-free candidates
    ``loc + scale * S`` (``n``) and a real-to-real null of 100 images x 6; for each rule the combined score's
    (c q05 - c q50, null q05 - null q50, c q99 - c q50, null q99 - null q50), float64 [folders, 4] per rule (every
    rule on the same draws)."""
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    import test_membership_unsupervised as tum
    from imprint.engine.membership.common import DEFAULT_WEIGHTS, MAX_FEATURES

    w = np.array([DEFAULT_WEIGHTS[k] for k in tum.NAMES])
    mx = np.array([k in MAX_FEATURES for k in tum.NAMES])
    rng = np.random.default_rng(seed)
    acc = {r: [] for r in rules}
    for _ in range(folders):
        img = tum._channels(rng, 100)
        null = np.concatenate([np.sqrt(0.2) * img + np.sqrt(0.8) * tum._channels(rng, 100) for _ in range(6)])
        cand = loc + scale * tum._channels(rng, n)
        Z, m = cal.pair_null_matrix({k: cand[:, j] for j, k in enumerate(tum.NAMES)},
                                    {k: null[:, j] for j, k in enumerate(tum.NAMES)}, tum.NAMES)
        for r in rules:
            sa = (cal.combined_scores(Z, w, mx, m, "tail")[0] if r == "tail"
                  else cal.robust_calibrate(*(lambda x: (x, x[m]))(stouffer_raw(Z, w, mx, m, r))))
            c, nn = sa[~m], sa[m]
            q = np.quantile
            acc[r].append([q(c, .05) - q(c, .5), q(nn, .05) - q(nn, .5), q(c, .99) - q(c, .5), q(nn, .99) - q(nn, .5)])
    return {r: np.asarray(v, np.float64) for r, v in acc.items()}


def shape(cases, rules=("tail", "sum", "probit"), folders=6, n=2000, seed=3):
    """The location-family check (:func:`spread_quantiles`): each combined score's (q05 - q50, q99 - q50) for the
    non-members against the null rows, and the non-members' (q99 - q50) / (q50 - q05) over the null's: equal under a
    location / scale family (both ratios = the scale)."""
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    import test_membership_unsupervised as tum

    print("| case | rule | non q05-q50 / null's | non q99-q50 / null's | lower ratio | upper ratio |")
    print("|---" * 6 + "|")
    for case in cases:
        loc, scale = tum.SIM_CASES[case]
        acc = spread_quantiles(rules, loc, scale, folders, n, seed)
        for r in rules:
            a, b, cc, d = np.mean(acc[r], 0)
            print(f"| {case} ({loc:+.1f}, x{scale}) | {r} | {a:+.2f} / {b:+.2f} | {cc:+.2f} / {d:+.2f} | {a / b:.2f} | "
                  f"{cc / d:.2f} |", flush=True)


def sim(cases, confs, reps=10, seed=15):
    """tests/test_membership_unsupervised.py's FPR simulation (_null_model_fpr: members 0 (2 x reps folders), 25%,
    50% (reps each)) with ``pair_null_scores`` replaced by the Stouffer-type rule; prints the stated rates."""
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    import test_membership_unsupervised as tum

    orig = tum.pair_null_scores
    print("| case | rule | mean FPR (n) | P(FPR > 0.02) | fdr:0.1 folders with a flag, no member | mean flags, no member"
          " | fdr:0.1 mean false share (members) | recall fpr:0.01, 50% members |")
    print("|---" * 8 + "|")
    try:
        for case in cases:
            loc, scale = tum.SIM_CASES[case]
            for k in confs:
                conf = CONFS[k]
                if conf is None or conf == "anchor":
                    saved = cal.EMPIRICAL_NULL_ANCHOR
                    cal.EMPIRICAL_NULL_ANCHOR = conf == "anchor"
                    tum.pair_null_scores = orig
                else:
                    tum.pair_null_scores = (lambda *a, _c=conf, **kw: stouffer_pair_null_scores(
                        *a, rule=_c[0], min_scale=_c[1], anchor=_c[2] if len(_c) > 2 else None, **kw))
                rng = np.random.default_rng([list(tum.SIM_CASES).index(case), seed])
                out = {}
                try:
                    for pi1 in (0.0, 0.25, 0.5):
                        out[pi1] = np.array([tum._null_model_fpr(rng, loc=loc, scale=scale, empirical="widen", pi1=pi1)
                                             for _ in range(2 * reps if pi1 == 0 else reps)])
                finally:
                    if conf is None or conf == "anchor":
                        cal.EMPIRICAL_NULL_ANCHOR = saved
                fpr = np.concatenate([v[:, 0] for v in out.values()])
                f0 = out[0.0][:, 1]
                fdp = np.concatenate([out[0.25][:, 4], out[0.5][:, 4]])
                print(f"| {case} | {k} | {fpr.mean():.4f} ({len(fpr)}) | {np.mean(fpr > 0.02):.2f} | "
                      f"{int(np.sum(f0 > 0))}/{len(f0)} | {f0.mean():.2f} | {fdp.mean():.3f} | "
                      f"{out[0.5][:, 3].mean():.3f} |", flush=True)
    finally:
        tum.pair_null_scores = orig


def main(argv=None):
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("replay")
    r.add_argument("paths", nargs="+")
    r.add_argument("--confs", default=None, help=f"comma list of {list(CONFS)}")
    s = sub.add_parser("sim")
    s.add_argument("--cases", default="further,narrower,exchangeable,closer")
    s.add_argument("--confs", default="main,sum,sum s>=0.5,probit,probit s>=0.5")
    s.add_argument("--reps", type=int, default=10)
    s.add_argument("--seed", type=int, default=15, help="second element of the rng seed (the FPR test's own: 5)")
    sh = sub.add_parser("shape")
    sh.add_argument("--cases", default="further,narrower,exchangeable,closer")
    a = ap.parse_args(argv)
    if a.cmd == "replay":
        replay(a.paths, a.confs.split(",") if a.confs else None)
    elif a.cmd == "shape":
        shape(a.cases.split(","))
    else:
        sim(a.cases.split(","), a.confs.split(","), a.reps, a.seed)


if __name__ == "__main__":
    main()
