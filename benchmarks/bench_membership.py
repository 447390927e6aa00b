"""Membership benchmark: leave-one-generator-out on the labelled dev corpus, plus 1000x1000 timing.

For each dev generator X: candidates = X's used + unused real images, generated = X's images,
dev_sets = the other dev generators, reference = their unused images (exactly what
``imprint membership --dev ...`` passes).  Prints per evidence type and for the combined score:
ROC AUC, TPR at 1% FPR, F1 (threshold = default ``fpr:0.01`` for the combined score, the same
null-quantile rule for single evidence), and the combined score's ``fpr:0.01`` / ``f1`` decisions.

Usage::

    python benchmarks/bench_membership.py [--corpus /work/shared/corpus/dev] [--no-timing]
        [--backbone effnet-lite0|none]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np
from PIL import Image
from sklearn import metrics as skm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from imprint.engine.membership import (DevSet, audit_membership, compute_evidence, null_threshold,  # noqa: E402
                               robust_calibrate)

GENS = ("gen_a", "gen_b", "gen_e")


def load(folder: str) -> np.ndarray:
    files = sorted(glob.glob(os.path.join(folder, "*.png")))
    return np.stack([np.array(Image.open(f).convert("L").resize((128, 128))) for f in files])


def tpr_at(y, s, fpr=0.01):
    f, t, _ = skm.roc_curve(y, s)
    return float(np.max(t[f <= fpr])) if np.any(f <= fpr) else 0.0


def metrics(y, s, used):
    return (skm.roc_auc_score(y, s), tpr_at(y, s), skm.f1_score(y, used, zero_division=0),
            float(np.mean(used[y == 0])))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="/work/shared/corpus/dev")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--backbone", default="none")
    a = ap.parse_args(argv)
    backbone = None if a.backbone == "none" else a.backbone
    root = os.path.join(a.corpus, "membership")
    data = {g: DevSet(g, load(f"{root}/{g}/generated"), load(f"{root}/{g}/real/used"),
                      load(f"{root}/{g}/real/unused")) for g in GENS}
    print(f"backbone={backbone}")
    summary = []
    for g in GENS:
        d = data[g]
        others = [data[o] for o in GENS if o != g]
        real = np.concatenate([d.used, d.unused])
        y = np.r_[np.ones(len(d.used), int), np.zeros(len(d.unused), int)]
        ref = np.concatenate([o.unused for o in others])
        t0 = time.perf_counter()
        res = audit_membership(d.generated, real, dev_sets=others, reference=ref, backbone=backbone)
        t_audit = time.perf_counter() - t0
        res_f1 = audit_membership(d.generated, real, dev_sets=others, reference=ref, decision="f1",
                                  backbone=backbone)
        # single evidence: same null calibration (reference) and threshold rule, evaluated on candidates
        pool = np.concatenate([real, ref])
        ev, _, _ = compute_evidence(d.generated, pool, backbone=backbone)
        nr = len(real)
        print(f"\n== {g}: {len(d.generated)} generated, {len(d.used)} used, {len(d.unused)} unused, "
              f"{len(ref)} reference  (audit {t_audit:.1f}s)")
        print(f"{'evidence':18s} {'AUC':>6s} {'TPR@1%':>7s} {'F1@fpr':>7s} {'FPRunused':>9s}")
        for name in sorted(ev):
            if name.endswith("_dist") or name in ("mse_nn", "ssim_nn"):
                continue
            s = robust_calibrate(ev[name], ev[name][nr:])
            thr = null_threshold(s[nr:], 0.01)["threshold"]
            auc, tpr, f1, fp = metrics(y, s[:nr], (s[:nr] > thr).astype(int))
            print(f"{name:18s} {auc:6.3f} {tpr:7.2f} {f1:7.3f} {fp:9.3f}")
        auc, tpr, f1, fp = metrics(y, res.score, res.used)
        _, _, f1b, fpb = metrics(y, res_f1.score, res_f1.used)
        print(f"{'COMBINED':18s} {auc:6.3f} {tpr:7.2f} {f1:7.3f} {fp:9.3f}   "
              f"| decision f1: F1 {f1b:.3f} (all-used baseline {2 * 0.5 / 1.5:.3f}), flagged "
              f"{int(res_f1.used.sum())}/{nr}, FPR {fpb:.3f}")
        print("  weights:", {k: round(v, 2) for k, v in res.info["weights"].items()})
        print("  summary:", res.summary)
        print("  f1 info:", {k: v for k, v in res_f1.info["f1"].items() if k != "rule"})
        summary.append((g, auc, tpr, f1, fp, f1b))
    print("\nLOGO summary (combined): gen  AUC  TPR@1%FPR  F1(fpr:0.01)  FPR(unused)  F1(f1)")
    for row in summary:
        print("  %s %.3f %.2f %.3f %.3f %.3f" % row)

    if not a.no_timing:
        rng = np.random.default_rng(0)
        pool_r = np.concatenate([data[g].used for g in GENS] + [data[g].unused for g in GENS])
        G = np.concatenate([data[g].generated for g in GENS])[rng.permutation(3000)[:1000]]
        R = pool_r[rng.permutation(len(pool_r))[:1000]] if len(pool_r) >= 1000 else \
            pool_r[rng.integers(0, len(pool_r), 1000)]
        t0 = time.perf_counter()
        res = audit_membership(G, R, backbone=backbone)
        t_plain = time.perf_counter() - t0
        # reference measurement in the same run: one dense numpy L2 distance matrix 1000x1000x16384
        t1 = time.perf_counter()
        A = R.reshape(len(R), -1).astype(np.float32)
        B = G.reshape(len(G), -1).astype(np.float32)
        _ = (A * A).sum(1)[:, None] + (B * B).sum(1)[None] - 2 * A @ B.T
        t_ref = time.perf_counter() - t1
        t0 = time.perf_counter()
        res = audit_membership(G, R, dev_sets=[data[g] for g in GENS],
                               reference=np.concatenate([data[g].unused for g in GENS]), backbone=backbone)
        t_dev = time.perf_counter() - t0
        print(f"\nTiming 1000 real x 1000 generated: no dev/reference {t_plain:.1f}s; "
              f"with 3 dev sets + 460 reference {t_dev:.1f}s; "
              f"reference dense L2 matmul {t_ref:.2f}s (ratio {t_plain / t_ref:.0f}x / {t_dev / t_ref:.0f}x)")
        print("  timings:", {k: round(v, 2) for k, v in res.info["timings"].items()})


if __name__ == "__main__":
    main()
