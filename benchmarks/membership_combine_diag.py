"""Per-channel diagnosis of the membership channel combination on the dev leave-one-generator-out cases
(issue 13, branch comb8).

For each held-out dev generator and setting (as in ``membership_loo.py``; the evidence comes from its
``--cache-dir`` checkpoints, so a rerun only re-combines), the audit's calibrated channel matrix ``Z`` (candidates +
null rows), weights and max-rule mask are captured at the point where the audit combines them
(``calibrate.combined_scores`` / ``calibrate.pair_null_scores``), and every combination rule in
``calibrate.COMBINE_RULES`` (plus per-channel scores) is re-applied to the same matrix:

* per channel (the weighted sum "sum" and every max-rule channel): its own AUC, TPR@1%FPR among the candidates, and
  how many members / non-members it gives the smallest p-value (which channel "carries" them under ``tail``);
* per rule: AUC, TPR@1%FPR, recall and unused flagged at ``fpr:0.01`` / ``fdr:0.1`` on the rule's own null;
* with ``--members``: for every member that ranks lower under rule B than under rule A, the channel values;
* with ``--decompose`` (meant for ``--settings unsupervised``; issue 13, branch uns9): where the ``fpr:0.01`` recall is
  lost.  Each channel's members / non-members against the null rows (robust z medians, the non-members' and the null's
  upper quantiles), then the recall (and unused flagged) of the audit's own score at: the exact threshold (95%
  order statistic, Gaussian check included), the order statistic alone, the null's point 99% and 95% quantiles, the
  non-members' maximum (an oracle: TPR at the first false flag) and the null moved to the non-members' true median (an
  oracle location: exact threshold and point 99% quantile); and the ``tail-split`` rule with the point mass
  at p = 1 removed (channel p-values continued below each channel's null minimum, :func:`_continuous_below_min`).

All dev figures are in-sample for the constants chosen on dev (gen_e is the only memorising dev generator).

Usage::

    python benchmarks/membership_combine_diag.py --cache-dir /tmp/comb8/loo [--gens gen_e] [--settings dev+reference]
        [--rules max,tail,...] [--members tail:max]
    python benchmarks/membership_combine_diag.py --cache-dir /tmp/loo --gens gen_e,gen_a,gen_b --settings unsupervised \
        --rules tail --decompose
    python benchmarks/membership_combine_diag.py --zoo-capture /tmp/zoo_s0.npz [--zoo-seed 0]   # then load_captures()
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from imprint.engine.membership import DevSet, audit_membership  # noqa: E402
from imprint.engine.membership import audit as _audit  # noqa: E402
from imprint.engine.membership import calibrate as cal  # noqa: E402
from imprint.engine.membership.decide import fdr_decision, null_threshold  # noqa: E402

from membership_loo import GENS, load, tpr_at  # noqa: E402
from sklearn import metrics as skm  # noqa: E402


def capture(d: DevSet, others: list, setting: str, cache: str) -> dict:
    """Run the audit once and return the combination's inputs (Z, w, use_max, null_mask, names)."""
    got: dict = {}
    orig_cs, orig_pn = _audit.combined_scores, _audit.pair_null_scores

    def cs(Z, w, use_max, null_mask, combine="tail", **kw):
        got.update(Z=np.array(Z), w=np.array(w), mx=np.array(use_max), null=np.array(null_mask))
        return orig_cs(Z, w, use_max, null_mask, combine, **kw)

    def pn(Z, null_mask, w, use_max, **kw):
        got.update(Z=np.array(Z), w=np.array(w), mx=np.array(use_max), null=np.array(null_mask), pair=True)
        return orig_pn(Z, null_mask, w, use_max, **kw)

    _audit.combined_scores, _audit.pair_null_scores = cs, pn
    try:
        real = np.concatenate([d.used, d.unused])
        kw = (dict(dev_sets=others, reference=np.concatenate([o.unused for o in others]))
              if setting.startswith("dev+reference") else dict(empirical=True))
        res = audit_membership(d.generated, real, decision="fpr:0.01", backbone=None, cache_dir=cache, **kw)
    finally:
        _audit.combined_scores, _audit.pair_null_scores = orig_cs, orig_pn
    got["names"] = list(res.info["weights"])
    got["n_real"] = len(real)
    return got


def zoo_capture(path: str, seed: int, quick: bool = True) -> None:
    """Run ``membership_zoo.py [--quick]`` (seed ``seed``, its own draws) and save every scenario's combination
    inputs and labels to ``path`` (``.npz``, plain arrays): the zoo's evidence once, the rules offline."""
    import membership_zoo as mz

    got: list = []
    orig_cs, orig_build = _audit.combined_scores, mz.build_scenario
    cur: dict = {}

    def build(*a, **k):
        out = orig_build(*a, **k)
        cur["y"] = out[3]
        return out

    def cs(Z, w, use_max, null_mask, combine="tail", **kw):
        got.append(dict(Z=np.array(Z), w=np.array(w), mx=np.array(use_max), null=np.array(null_mask), y=cur["y"]))
        return orig_cs(Z, w, use_max, null_mask, combine, **kw)

    mz.build_scenario, _audit.combined_scores = build, cs
    names = []
    try:
        ns = argparse.Namespace(real=mz.DEV, fillers="dev", size=128, n_members=40 if quick else 60,
                                n_reference=150 if quick else 300, n_gen=400 if quick else 1000, boot=200 if quick else 500, seed=seed,
                                quick=quick, cache_dir=None, only=None, compare=False)
        rows = mz.run(ns)
        names = [f"{r['transform']} {r['strength']}" for r in rows]
    finally:
        mz.build_scenario, _audit.combined_scores = orig_build, orig_cs
    arrs = {}
    for i, (nm, g) in enumerate(zip(names, got)):
        for k, v in g.items():
            arrs[f"{i}_{k}"] = v
    np.savez(path, names=np.array(names), **arrs)


def load_captures(path: str) -> list[dict]:
    f = np.load(path, allow_pickle=False)
    out = []
    for i, nm in enumerate(f["names"]):
        out.append(dict(name=str(nm), **{k: f[f"{i}_{k}"] for k in ("Z", "w", "mx", "null", "y")}))
    return out


def decisions(sc: np.ndarray, ns: np.ndarray, y: np.ndarray) -> dict:
    th = null_threshold(ns, 0.01)
    thr = th["threshold"] if th["exact"] else th["fallback"]
    u1 = sc > thr
    u2, _ = fdr_decision(sc, ns, 0.1)
    u2 = np.asarray(u2, bool)
    return dict(AUC=skm.roc_auc_score(y, sc), TPR1=tpr_at(y, sc), rec_fpr=u1[y == 1].mean(), fp_fpr=int(u1[y == 0].sum()),
                rec_fdr=u2[y == 1].mean(), fp_fdr=int(u2[y == 0].sum()))


def _continuous_below_min(P: np.ndarray, cols: list, null: np.ndarray) -> np.ndarray:
    """Per-channel p-values (float [n, C]) with the conformal point mass at p = 1 removed: a value below its channel's
    null minimum gets ``1 - exp(-(min - x)) / (K + 1)`` (strictly inside the top bin, decreasing in how far below it
    lies) instead of 1, so the ``tail-split`` score of a generator far from every patient has no tie for the empirical
    null's lower-quarter fit to read (RESULTS.md comb8: gen_a's 78% tied candidates).  Diagnostic only."""
    Q = np.array(P, np.float64)
    K = int(null.sum())
    for k, v in enumerate(cols):
        mn = float(v[null].min())
        below = v < mn
        Q[below, k] = 1.0 - np.exp(-(mn - v[below])) / (K + 1.0)
    return Q


def decompose(Z, w, mx, null, y, names) -> None:
    """``--decompose``: where the unsupervised ``fpr:0.01`` recall is lost (module docstring)."""
    from scipy.special import ndtri

    cand = ~null
    nrm = float(np.linalg.norm(w))
    P, ch, _ = cal.channel_pvalues(Z, w, mx, null)
    cols = [Z @ (w / nrm)] + [Z[:, j] for j in ch[1:]]
    print(f"{'channel':16s} {'z med mem':>9s} {'z med non':>9s} {'non q95':>7s} {'null q95':>8s} {'null q99':>8s} "
          f"{'p<=.01 mem/non':>14s}")
    for k, v in enumerate(cols):
        nm = "sum" if k == 0 else names[ch[k]]
        vc, vn = v[cand], v[null]
        print(f"{nm:16s} {np.median(vc[y == 1]):+9.2f} {np.median(vc[y == 0]):+9.2f} {np.quantile(vc[y == 0], .95):+7.2f} "
              f"{np.quantile(vn, .95):+8.2f} {np.quantile(vn, .99):+8.2f} "
              f"{(P[cand][y == 1, k] <= .01).mean():7.2f}/{(P[cand][y == 0, k] <= .01).mean():.2f}")
    sc, ns, info = cal.pair_null_scores(Z, null, w, mx, combine="tail", empirical=True)
    th = null_threshold(ns, 0.01)
    s1, s0 = sc[y == 1], sc[y == 0]
    cut = {"exact threshold (default)": th["threshold"] if th["exact"] else th["fallback"],
           "order statistic alone": th["empirical"] if th["exact"] else float(np.max(ns)),
           "null point q99": float(np.quantile(ns, .99)), "null point q95": float(np.quantile(ns, .95)),
           "non-members' max (oracle)": float(s0.max())}
    e = info["empirical_null"] or {}
    print(f"tail rule, empirical null loc {e.get('loc', 0):+.2f} scale {e.get('scale', 1):.2f}; "
          f"null rows {len(ns)}, allowed exceedances {th['allowed_exceedances']}")
    # oracle location: the null moved so that its median is the non-members' (the labels, which no audit has)
    raw = (ns - e.get("loc", 0.0)) / e.get("scale", 1.0)
    orc = raw + (np.median(s0) - np.median(raw))
    tho = null_threshold(orc, 0.01)
    cut["oracle location, exact"] = tho["threshold"] if tho["exact"] else tho["fallback"]
    cut["oracle location, point q99"] = float(np.quantile(orc, .99))
    for k, t in cut.items():
        print(f"  fpr:0.01 at {k:27s} {t:+6.2f}: recall {(s1 > t).mean():.2f}, unused flagged {int((s0 > t).sum())}/{len(s0)}")
    print(f"  (oracle location offset {np.median(s0) - np.median(raw):+.2f}; non-members' q95 - q50 "
          f"{np.quantile(s0, .95) - np.median(s0):.2f}, null's {np.quantile(raw, .95) - np.median(raw):.2f}; q99 - q50 "
          f"{np.quantile(s0, .99) - np.median(s0):.2f} / {np.quantile(raw, .99) - np.median(raw):.2f})")
    Q = _continuous_below_min(P, cols, null)
    raw = -ndtri(np.clip(cal.split_pvalue(Q, cal.split_shares(Q)), 1e-300, 1 - 1e-15))
    s = cal.robust_calibrate(raw, raw[null])
    en = cal.empirical_null(s[cand], s[null])
    r = decisions(s[cand], en["loc"] + en["scale"] * s[null], y)
    print(f"tail-split, point mass removed: AUC {r['AUC']:.3f} TPR@1% {r['TPR1']:.3f}  fpr:0.01 recall {r['rec_fpr']:.3f} "
          f"({r['fp_fpr']}/{len(s0)})  fdr:0.1 recall {r['rec_fdr']:.3f} ({r['fp_fdr']}/{len(s0)}); empirical null loc "
          f"{en['loc']:+.2f}")


def main(argv=None):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import membership_zoo as mz

    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="/work/shared/corpus/dev")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--gens", default="gen_e")
    ap.add_argument("--settings", default="dev+reference")
    ap.add_argument("--rules", default=",".join(cal.COMBINE_RULES))
    ap.add_argument("--zoo-capture", default=None,
                    help="run the zoo's --quick scenarios (same draws as membership_zoo.py --quick) and save every "
                         "scenario's combination inputs and labels here (.npz)")
    ap.add_argument("--zoo-seed", type=int, default=0)
    mz.add_draw_flag(ap)
    ap.add_argument("--decompose", action="store_true",
                    help="unsupervised settings: where the fpr:0.01 recall is lost (module docstring)")
    ap.add_argument("--members", default="", help="A:B: list members that rank lower under rule B than under A")
    a = ap.parse_args(argv)
    if a.zoo_capture:
        zoo_capture(a.zoo_capture, a.zoo_seed)
        return
    root = os.path.join(a.corpus, "membership")
    data = {g: DevSet(g, load(f"{root}/{g}/generated"), load(f"{root}/{g}/real/used"),
                      load(f"{root}/{g}/real/unused")) for g in GENS}
    for g in a.gens.split(","):
        d = data[g]
        others = [data[o] for o in GENS if o != g]
        y = np.r_[np.ones(len(d.used), int), np.zeros(len(d.unused), int)]
        for setting in a.settings.split(","):
            c = capture(d, others, setting, a.cache_dir)
            Z, w, mx, null = c["Z"], c["w"], c["mx"], c["null"]
            names = c["names"]
            cand = ~null
            print(f"\n== {g} {setting}: {int(cand.sum())} candidates, {int(null.sum())} null rows, "
                  f"{len(names)} channels")
            # channels of the tail rule: the weighted sum and every max-rule channel with positive weight
            nrm = float(np.linalg.norm(w))
            chans = [("sum", Z @ (w / nrm))] + [(names[j], Z[:, j]) for j in np.flatnonzero(mx & (w > 0))]
            P = np.stack([cal.tail_pvalues(v, v[null]) for _, v in chans], 1)
            for k, (_, v) in enumerate(chans):       # null rows: leave-one-out, as calibrated_max does
                order = np.argsort(v[null], kind="stable")
                pn = np.empty(int(null.sum()))
                pn[order] = cal._loo_tail_p(np.sort(v[null]), cal.TAIL_FRACTION)
                P[np.flatnonzero(null), k] = pn
            arg = P.argmin(1)
            print(f"{'channel':16s} {'weight':>7s} {'AUC':>6s} {'TPR1':>6s} {'xi':>6s} "
                  f"{'carries mem/non/null':>22s} {'med z mem':>9s} {'med z non':>9s} {'null max':>8s}")
            for k, (nm, v) in enumerate(chans):
                info: dict = {}
                cal.tail_pvalues(v[:1], v[null], _info=info)
                vc = v[cand]
                wk = nrm if nm == "sum" else w[names.index(nm)]
                print(f"{nm:16s} {wk:7.3f} {skm.roc_auc_score(y, vc):6.3f} {tpr_at(y, vc):6.3f} {info.get('xi', 0):6.2f} "
                      f"{int((arg[cand][y == 1] == k).sum()):>8d}/{int((arg[cand][y == 0] == k).sum()):>3d}/"
                      f"{int((arg[null] == k).sum()):>4d}     {np.median(vc[y == 1]):9.2f} {np.median(vc[y == 0]):9.2f} "
                      f"{v[null].max():8.2f}")
            out = {}
            for rule in a.rules.split(","):
                if c.get("pair"):
                    sc, ns, _ = cal.pair_null_scores(Z, null, w, mx, combine=rule, empirical=True)
                else:
                    s_all, used = cal.combined_scores(Z, w, mx, null, rule)
                    sc, ns = s_all[cand], s_all[null]
                out[rule] = sc
                r = decisions(sc, ns, y)
                print(f"rule {rule:10s} AUC {r['AUC']:.3f} TPR@1% {r['TPR1']:.3f}  fpr:0.01 recall {r['rec_fpr']:.3f} "
                      f"({r['fp_fpr']}/{int((y == 0).sum())})  fdr:0.1 recall {r['rec_fdr']:.3f} ({r['fp_fdr']}/{int((y == 0).sum())})")
            if a.decompose and c.get("pair"):
                decompose(Z, w, mx, null, y, names)
            if a.members:
                ra, rb = a.members.split(":")
                rank = {r: (-out[r]).argsort().argsort() for r in (ra, rb)}
                worse = np.flatnonzero((y == 1) & (rank[rb] > rank[ra] + 5))
                print(f"members ranked > 5 places lower under {rb} than {ra}: {len(worse)}")
                for i in worse[np.argsort(rank[rb][worse] - rank[ra][worse])[::-1]]:
                    print(f"  cand {i:3d} rank {ra} {rank[ra][i]:3d} -> {rb} {rank[rb][i]:3d}; "
                          + " ".join(f"{nm}={v[cand][i]:.1f}(p={P[cand][i, k]:.1e})" for k, (nm, v) in enumerate(chans)))


if __name__ == "__main__":
    main()
