"""Offline analysis of membership_uns_diag.py captures (issue 13, branch uns13).  See that script's docstring."""

from __future__ import annotations

import sys

import numpy as np
from scipy.stats import ks_2samp
from sklearn import metrics as skm

from imprint.engine.membership import calibrate as cal
from imprint.engine.membership.decide import conformal_threshold, fdr_decision, f1_decision, null_threshold


def tpr_at(y, s, fpr=0.01):
    f, t, _ = skm.roc_curve(y, s)
    return float(np.max(t[f <= fpr])) if np.any(f <= fpr) else 0.0


def decide(s, ns, y, rule="exact"):
    th = conformal_threshold(ns, 0.01) if rule == "conformal" else null_threshold(ns, 0.01)
    thr = th["threshold"] if th["exact"] else th["fallback"]
    u1 = s > thr
    u2 = np.asarray(fdr_decision(s, ns, 0.1)[0], bool)
    u3 = np.asarray(f1_decision(s, ns)[0], bool)
    has = y.max() > 0
    return dict(auc=skm.roc_auc_score(y, s) if has else np.nan, tpr1=tpr_at(y, s) if has else np.nan,
                rec=u1[y == 1].mean() if has else np.nan, fp=int(u1[y == 0].sum()),
                rec_fdr=u2[y == 1].mean() if has else np.nan, fp_fdr=int(u2[y == 0].sum()),
                f1=skm.f1_score(y, u3, zero_division=0) if has else float(u3.mean()), fp_f1=int(u3[y == 0].sum()),
                thr=thr)


def rz(x, ref):
    med = np.median(ref)
    mad = 1.4826 * np.median(np.abs(ref - med))
    return (x - med) / max(mad, 1e-9)


def analyse(c: dict, out=print):
    Z, null, w, mx, groups, y = c["Z"], c["null"].astype(bool), c["w"], c["mx"], c["groups"], c["y"]
    Zc, Zn = Z[~null], Z[null]
    ymem = y[groups] if y.max() > 0 else np.zeros(len(groups), int)      # is the null row's image a member?
    s, ns, info = cal.pair_null_scores(Z, null, w, mx, empirical=True, null_groups=groups, combine="tail")
    sa, _ = cal.combined_scores(Z, w, mx, null, "tail")
    raw_null = sa[null]
    emp = info["empirical_null"]
    d = decide(s, ns, y)
    out(f"### {c['name']}  N={len(Zc)} K={len(Zn)} members={int(y.sum())}  emp loc {emp['loc']:+.2f} scale "
        f"{emp['scale']:.2f} pi0 {emp['pi0']:.2f}")
    out(f"default: AUC {d['auc']:.3f} TPR1 {d['tpr1']:.3f} fpr:0.01 rec {d['rec']:.3f} ({d['fp']} unused) "
        f"fdr:0.1 {d['rec_fdr']:.3f} ({d['fp_fdr']}) f1 {d['f1']:.3f} ({d['fp_f1']})  thr {d['thr']:+.2f}")
    non = y == 0
    # per channel: the non-members against the null rows
    out("| channel (w, max) | med z mem / non | non q95-q50 / q99-q50 | null q95-q50 / q99-q50 | null rows: member-x vs "
        "non-member-x med, q95 (KS p) |")
    cols = [("comb", sa[~null], raw_null)] + [(f"c{j} ({w[j]:.2g},{'M' if mx[j] else '-'})", Zc[:, j], Zn[:, j])
                                              for j in range(Z.shape[1])]
    for nm, xc, xn in cols:
        a, b = xc[non], xn
        memz = np.median(xc[y == 1]) if y.max() > 0 else np.nan
        q = lambda v, p: float(np.quantile(v, p))  # noqa: E731
        m1, m0 = xn[ymem == 1], xn[ymem == 0]
        ks = ks_2samp(m1, m0).pvalue if len(m1) and len(m0) else np.nan
        out(f"| {nm} | {memz:+.2f} / {np.median(a):+.2f} | {q(a, .95) - q(a, .5):.2f} / {q(a, .99) - q(a, .5):.2f} | "
            f"{q(b, .95) - q(b, .5):.2f} / {q(b, .99) - q(b, .5):.2f} | "
            + (f"{np.median(m1):+.2f}, {q(m1, .95):+.2f} vs {np.median(m0):+.2f}, {q(m0, .95):+.2f} ({ks:.2g}) |"
               if len(m1) else "n/a |"))
    # location: fitted vs oracle (the non-members' median offset against the raw null)
    orc = float(np.median(s[non]) - np.median(raw_null))
    out(f"location: fitted {emp['loc']:+.2f} (scale {emp['scale']:.2f}) vs oracle median offset {orc:+.2f}; "
        f"non-members' combined q05/q25/q50 {np.quantile(s[non], [.05, .25, .5]).round(2)} vs null+oracle "
        f"{(np.quantile(raw_null, [.05, .25, .5]) + orc).round(2)}")
    dc = decide(s, ns, y, "conformal")
    orc_null = raw_null + orc
    do = decide(s, orc_null, y)
    doc = decide(s, orc_null, y, "conformal")
    out(f"fpr:0.01 recall (unused flagged): exact {d['rec']:.3f} ({d['fp']}) | conformal {dc['rec']:.3f} ({dc['fp']}) | "
        f"oracle location exact {do['rec']:.3f} ({do['fp']}) / conformal {doc['rec']:.3f} ({doc['fp']}) | "
        f"oracle TPR@1%FPR {d['tpr1']:.3f}; fdr:0.1 default {d['rec_fdr']:.3f} ({d['fp_fdr']}), oracle location "
        f"{do['rec_fdr']:.3f} ({do['fp_fdr']})")
    return dict(d=d, dc=dc, do=do, doc=doc, emp=emp, oracle=orc, s=s, ns=ns, raw_null=raw_null, y=y, ymem=ymem, sa=sa)


def main(paths):
    from membership_uns_diag import load_captures

    for p in paths:
        for c in load_captures(p):
            analyse(c)




def table(paths):
    """One markdown row per capture: the combined score's location fit against the oracle and the thresholds."""
    from membership_uns_diag import load_captures

    print("| case | AUC | TPR@1%FPR (oracle) | empirical null loc / pi0 | oracle offset | non-members q50-q05 / "
          "null's | non-members q95-q50 / null's | null rows member-x vs non-member-x (KS p) | fpr:0.01 exact | "
          "conformal | oracle location: exact / conformal | fdr:0.1 / oracle location |")
    print("|---" * 12 + "|")
    for p in paths:
        for c in load_captures(p):
            r = analyse(c, out=lambda *a: None)
            y, s, rn, ymem = r["y"], r["s"], r["raw_null"], r["ymem"]
            non = s[y == 0]
            q = lambda v, a: float(np.quantile(v, a))  # noqa: E731
            ks = ks_2samp(rn[ymem == 1], rn[ymem == 0]).pvalue if ymem.max() > 0 else np.nan
            d, dc, do, doc, e = r["d"], r["dc"], r["do"], r["doc"], r["emp"]
            rec = lambda x: "n/a" if not np.isfinite(x["rec"]) else f"{x['rec']:.3f}"  # noqa: E731
            print(f"| {c['name']} | {d['auc']:.3f} | {d['tpr1']:.3f} | {e['loc']:+.2f} / {e['pi0']:.2f} | "
                  f"{r['oracle']:+.2f} | {q(non, .5) - q(non, .05):.2f} / {q(rn, .5) - q(rn, .05):.2f} | "
                  f"{q(non, .95) - q(non, .5):.2f} / {q(rn, .95) - q(rn, .5):.2f} | {ks:.2g} | "
                  f"{rec(d)} ({d['fp']}) | {rec(dc)} ({dc['fp']}) | {rec(do)} ({do['fp']}) / {rec(doc)} ({doc['fp']}) | "
                  f"{d['rec_fdr']:.3f} ({d['fp_fdr']}) / {do['rec_fdr']:.3f} ({do['fp_fdr']}) |")


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--table":
    table(sys.argv[2:])
elif __name__ == "__main__":
    main(sys.argv[1:])


def anchor_table(paths):
    """One markdown row per capture: main's empirical null against the median-anchored one
    (``calibrate.EMPIRICAL_NULL_ANCHOR``, branch uns14), the latter also with uns13's pi0 bound; each with the exact and
    the conformal ``fpr:0.01`` threshold, ``fdr:0.1`` and ``f1`` (recall or F1, non-members flagged in brackets)."""
    from membership_uns_diag import load_captures

    confs = {"main": (False, False), "anchor": (True, False), "anchor + pi1 bound": (True, True)}
    print("| case | AUC | TPR@1%FPR | oracle offset | "
          + " | ".join(f"{k}: loc / pi0 | fpr exact | fpr conformal | fdr:0.1 | F1 f1" for k in confs) + " |")
    print("|---" * (4 + 5 * len(confs)) + "|")
    r = lambda x: "n/a" if not np.isfinite(x) else f"{x:.3f}"  # noqa: E731
    saved = cal.EMPIRICAL_NULL_ANCHOR, cal.EMPIRICAL_NULL_PI1_BOUND
    try:
        for p in paths:
            for c in load_captures(p):
                Z, null, w, mx, g, y = c["Z"], c["null"].astype(bool), c["w"], c["mx"], c["groups"], c["y"]
                cells, head = [], ""
                for k, (anchor, pi1) in confs.items():
                    cal.EMPIRICAL_NULL_ANCHOR, cal.EMPIRICAL_NULL_PI1_BOUND = anchor, pi1
                    s, ns, info = cal.pair_null_scores(Z, null, w, mx, empirical=True, null_groups=g, combine="tail")
                    e = info["empirical_null"]
                    d, dc = decide(s, ns, y), decide(s, ns, y, "conformal")
                    if not head:
                        sa, _ = cal.combined_scores(Z, w, mx, null, "tail")
                        orc = float(np.median(s[y == 0]) - np.median(sa[null]))
                        head = f"| {c['name']} | {r(d['auc'])} | {r(d['tpr1'])} | {orc:+.2f} |"
                    cells.append(f" {e['loc']:+.2f} / {e['pi0']:.2f} | {r(d['rec'])} ({d['fp']}) | {r(dc['rec'])} "
                                 f"({dc['fp']}) | {r(d['rec_fdr'])} ({d['fp_fdr']}) | {d['f1']:.3f} ({d['fp_f1']}) |")
                print(head + "".join(cells), flush=True)
    finally:
        cal.EMPIRICAL_NULL_ANCHOR, cal.EMPIRICAL_NULL_PI1_BOUND = saved
