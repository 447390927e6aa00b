"""Registration shortlist recall, before/after in the same run (issue 13: transformed and re-synthesised copies).

For simulated memorising generators built exactly like :mod:`membership_zoo` (its builders are imported), every
member's true copy is known.  For each shortlist configuration this prints

* ``in shortlist``: share of members whose true copy is among their registration candidates;
* ``best = copy``: share whose registered best match (:func:`register._best_registered`) is the true copy;
* ``cand/row``: mean number of distinct candidates registered per pool image (the coarse stage's cost);
* ``single-evidence`` AUC and TPR at the reference's 99th percentile of ``reg_ratio``, ``reg_lo_ratio``,
  ``reg_lp_ratio`` (members vs non-members);
* the seconds the shortlist + registration took (machine load: see the printed load average).

Configurations: ``before`` = main before issue 13's shortlist work (moment-frame 6-NN +- mirror, Fourier 4-NN,
pixel 3-NN, no coarse blur: ``shortlists(..., n_lp=0, shift_queries=False)``, ``COARSE_BLUR = 0``); ``after`` =
the defaults (``COARSE_BLUR`` off); ``after + blur`` / ``blur only``: with ``COARSE_BLUR = 1``.

Run it on other images and another seed than the zoo's measurement (the zoo: dev reals, seed 0)::

    python benchmarks/shortlist_recall.py --real /work/shared/corpus/dev/attribution --seed 1 \
        --scenarios augment:1,augment:0.5,resynth:3,shift:0.1,flip
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from sklearn import metrics as skm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import membership_zoo as mz  # noqa: E402
from imprint.engine.membership import register as reg  # noqa: E402
from imprint.engine.membership.evidence import _knn, zscore_images  # noqa: E402

# (shortlists keyword arguments, register.COARSE_BLUR)
CONFIGS = {"before": (dict(n_lp=0, shift_queries=False), 0.0), "after": ({}, reg.COARSE_BLUR),
           "after + blur": ({}, 1.0), "blur only": (dict(n_lp=0, shift_queries=False), 1.0),
           "after + lp": (dict(n_lp=3), reg.COARSE_BLUR)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mz.add_draw_args(ap, real="/work/shared/corpus/dev/attribution", n_members=40, n_reference=150, n_gen=400,
                     boot=None, seed=1)
    ap.add_argument("--scenarios", default="augment:1,augment:0.5,resynth:3,shift:0.1,flip")
    ap.add_argument("--configs", default="before,after")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    real, fill = mz.load_inputs(a)
    nm = a.n_members
    want = [w for w in a.scenarios.split(",") if w]
    configs = [c for c in a.configs.split(",") if c]
    print(f"# shortlist recall: real={a.real} seed={a.seed} members={nm} reference={a.n_reference} "
          f"generated={a.n_gen}; load {os.getloadavg()[0]:.1f}")
    print("| transform | strength | config | in shortlist | best = copy | cand/row | reg_ratio AUC / TPR@ref99 "
          "| reg_lo_ratio | reg_lp_ratio | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, fn, strength in mz.scenarios(False, real):
        if fn is None or not mz.scenario_wanted(name, strength, want):
            continue
        gen, cand, ref, y, copy = mz.build_scenario(real, fn, strength, fill, nm, a.n_reference, a.n_gen, rng)
        P = np.concatenate([cand, ref])
        zP = zscore_images(P).reshape(len(P), -1)
        zG = zscore_images(gen).reshape(len(gen), -1)
        _, iG = _knn(zG, zP, 10)
        _, iR = _knn(zP, zP, 10, exclude_self=True)
        m = np.arange(nm)
        for cfg in configs:
            kw, reg.COARSE_BLUR = CONFIGS[cfg]
            t0 = time.perf_counter()
            cg, fcg, cr, fcr = reg.shortlists(gen, P, iG, iR, **kw)
            ins = (cg[m] == copy[:, None]).any(1)
            ncand = np.mean([len(set(r[r >= 0].tolist())) for r in cg])
            ev, best = reg.registered_evidence(gen, P, iG, iR, **kw)
            dt = time.perf_counter() - t0
            hit = best[m] == copy
            cells = []
            for k in ("reg_ratio", "reg_lo_ratio", "reg_lp_ratio"):
                v = ev[k]
                thr = np.quantile(v[2 * nm:], 0.99)
                cells.append(f"{skm.roc_auc_score(y, v[:2 * nm]):.3f} / {np.mean(v[:nm] > thr):.2f}")
            print(f"| {name} | {strength:g} | {cfg} | {ins.mean():.3f} | {hit.mean():.3f} | {ncand:.1f} | "
                  + " | ".join(cells) + f" | {dt:.0f} |", flush=True)
            if a.verbose:
                print(f"    missed (not in shortlist): {np.flatnonzero(~ins).tolist()}")


if __name__ == "__main__":
    main()
