"""Leave-one-generator-out evaluation of the membership decisions on the labelled dev corpus.

For each dev generator X (gen_a, gen_b, gen_e): candidates = X's used + unused real images,
generated = X's images, dev_sets = the two other dev generators (the weights are fitted on them
only), reference = their unused images (what ``imprint membership --dev A --dev B`` passes).  X's
labels are used only to score the result ("dev+reference-max": the same with ``combine="max"``, the
combination rule before the tail-calibrated max rule; "dev+reference-tail": ``combine="tail"``, the plain min-p of
the tail-calibrated channels, the default before branch comb8's ``"tail-split"``).  The same audit is also run without dev sets and
reference ("unsupervised": the real-to-real null with the candidates' own location and scale,
``empirical_null``; "unsupervised-pairs": the real-to-real null as it is, the state before the empirical null).  Every decision mode is applied to one
evidence computation per setting (``cache_dir`` checkpoints are shared between modes).

Metrics (sklearn.metrics): F1, accuracy, precision, recall, specificity, ROC AUC, TPR at 1% FPR,
each with a 95% percentile-bootstrap interval (candidates resampled within used / unused,
``--boot`` replicates, seed 0).  Also the number of unused images flagged.

Caveat: constants of the method were chosen on dev sets (see RESULTS.md, "Constants chosen on a
data set"); rows of a generator whose data chose a constant are in-sample for that constant.

Usage::

    python benchmarks/membership_loo.py [--corpus /work/shared/corpus/dev] [--boot 1000]
        [--decisions fpr:0.01,fdr:0.1,f1] [--gens gen_a,gen_b,gen_e] [--markdown]
        [--settings dev+reference,dev+reference-tail,unsupervised,unsupervised-pairs]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image
from sklearn import metrics as skm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from imprint.engine.membership import DevSet, audit_membership  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _membership_knobs import add_membership_knobs, apply_membership_knobs  # noqa: E402

GENS = ("gen_a", "gen_b", "gen_e")
METRICS = ("F1", "accuracy", "precision", "recall", "specificity", "AUC", "TPR@1%FPR")


def load(folder: str) -> np.ndarray:
    files = sorted(glob.glob(os.path.join(folder, "*.png")))
    return np.stack([np.array(Image.open(f).convert("L")) for f in files])


def tpr_at(y, s, fpr=0.01):
    f, t, _ = skm.roc_curve(y, s)
    return float(np.max(t[f <= fpr])) if np.any(f <= fpr) else 0.0


def metric_values(y, s, used) -> dict:
    tn, fp, fn, tp = skm.confusion_matrix(y, used, labels=[0, 1]).ravel()
    return {"F1": skm.f1_score(y, used, zero_division=0), "accuracy": skm.accuracy_score(y, used),
            "precision": skm.precision_score(y, used, zero_division=0),
            "recall": skm.recall_score(y, used, zero_division=0),
            "specificity": tn / max(tn + fp, 1), "AUC": skm.roc_auc_score(y, s), "TPR@1%FPR": tpr_at(y, s)}


def bootstrap(y, s, used, n_boot=1000, seed=0) -> dict:
    """95% percentile intervals, resampling used and unused candidates separately."""
    rng = np.random.default_rng(seed)
    i1, i0 = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    vals = {m: [] for m in METRICS}
    for _ in range(n_boot):
        idx = np.r_[rng.choice(i1, len(i1)), rng.choice(i0, len(i0))]
        for m, v in metric_values(y[idx], s[idx], used[idx]).items():
            vals[m].append(v)
    return {m: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) for m, v in vals.items()}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="/work/shared/corpus/dev")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--decisions", default="fpr:0.01,fdr:0.1,f1")
    ap.add_argument("--gens", default=",".join(GENS))
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    ap.add_argument("--settings", default="dev+reference,unsupervised,unsupervised-pairs",
                    help="comma list of dev+reference, dev+reference-max (the max rule before the tail-calibrated one), "
                         "dev+reference-tail (the plain min-p of the tail-calibrated channels: the default before comb8), "
                         "unsupervised (empirical null), unsupervised-pairs (no empirical null), unsupervised-noreg "
                         "(no registered evidence in the real-to-real null), unsupervised-max (the max rule), "
                         "unsupervised-before (both: the unsupervised mode before branch uns5), unsupervised-uns5 "
                         "(no anatomy evidence in the real-to-real null: main before branch uns6), unsupervised-channel "
                         "(the per-channel empirical null), unsupervised-channel-noanat")
    ap.add_argument("--cache-dir", default=None, help="keep the evidence checkpoints here (a rerun re-decides only)")
    add_membership_knobs(ap)
    a = ap.parse_args(argv)
    for k in apply_membership_knobs(a):
        print(f"# {k}")
    root = os.path.join(a.corpus, "membership")
    data = {g: DevSet(g, load(f"{root}/{g}/generated"), load(f"{root}/{g}/real/used"),
                      load(f"{root}/{g}/real/unused")) for g in GENS}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = a.cache_dir or tmp
        for g in a.gens.split(","):
            d = data[g]
            others = [data[o] for o in GENS if o != g]
            real = np.concatenate([d.used, d.unused])
            y = np.r_[np.ones(len(d.used), int), np.zeros(len(d.unused), int)]
            ref = np.concatenate([o.unused for o in others])
            for setting in a.settings.split(","):
                for dec in a.decisions.split(","):
                    kw = (dict(dev_sets=others, reference=ref) if setting.startswith("dev+reference")
                          else dict(empirical=setting == "unsupervised"))
                    if setting == "dev+reference-max":      # the combination rule before (same evidence, cached)
                        kw["combine"] = "max"
                    if setting == "dev+reference-tail":     # the default before branch comb8 (same evidence, cached)
                        kw["combine"] = "tail"
                    if setting.startswith("unsupervised-"):   # variants of the unsupervised mode (issue 13, uns5)
                        kw["empirical"] = setting != "unsupervised-pairs"
                        kw.update({"unsupervised-channel": dict(empirical="channel"),          # uns6
                                   "unsupervised-uns5": dict(pair_anatomy=False),               # main before uns6
                                   "unsupervised-channel-noanat": dict(empirical="channel", pair_anatomy=False),
                                   "unsupervised-noreg": dict(pair_register=False),
                                   "unsupervised-max": dict(combine="max"),
                                   "unsupervised-before": dict(pair_register=False, combine="max")}.get(setting, {}))
                    t0 = time.perf_counter()
                    res = audit_membership(d.generated, real, decision=dec, backbone=None, cache_dir=cache, **kw)
                    dt = time.perf_counter() - t0
                    used = np.asarray(res.used, int)
                    m = metric_values(y, res.score, used)
                    ci = bootstrap(y, res.score, used, a.boot)
                    ex = res.info.get("exchangeability", {})
                    emp = res.info.get("empirical_null") or {}
                    if emp.get("applied"):
                        print(f"  empirical null: loc {emp['loc']:+.3f} scale {emp['scale']:.3f} pi0 {emp['pi0']:.3f}")
                    rows.append(dict(gen=g, setting=setting, decision=dec, m=m, ci=ci, n_used=int(y.sum()),
                                     n_unused=int((1 - y).sum()), flagged=int(used.sum()),
                                     unused_flagged=int(used[y == 0].sum()), null=res.info["null"],
                                     n_null=res.info["n_null"], time_s=dt,
                                     exch=(ex.get("worst"), ex.get("tests", {}).get(ex.get("worst"), {}).get("p_bonferroni"),
                                           ex.get("warn")) if ex else None,
                                     removed=res.info["reference_removed"]["near_duplicate"]))
                    r = rows[-1]
                    print(f"{g:6s} {setting:14s} {dec:9s} " + " ".join(f"{k}={v:.3f}" for k, v in m.items())
                          + f" flagged={r['flagged']} unused_flagged={r['unused_flagged']}/{r['n_unused']}"
                          f" null={r['null']}(n={r['n_null']}) exch={r['exch']} neardup={r['removed']} {dt:.1f}s",
                          flush=True)
    if a.markdown:
        print("\n| generator | setting | decision | " + " | ".join(METRICS) + " | unused flagged |")
        print("|---" * (len(METRICS) + 4) + "|")
        for r in rows:
            cells = [f"{r['m'][k]:.2f} [{r['ci'][k][0]:.2f}, {r['ci'][k][1]:.2f}]" for k in METRICS]
            print(f"| {r['gen']} | {r['setting']} | {r['decision']} | " + " | ".join(cells)
                  + f" | {r['unused_flagged']}/{r['n_unused']} |")


if __name__ == "__main__":
    main()
