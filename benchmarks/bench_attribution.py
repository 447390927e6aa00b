"""Attribution benchmark on the dev corpus: ARI per protocol, per feature view/algorithm, wall time.

Usage::

    .venv/bin/python benchmarks/bench_attribution.py [--dev /work/shared/corpus/dev] [--no-views]

Protocols (images to cluster vs. dev_sets handed to :func:`engine.attribution.attribute`):

* ``plain3``          model_1..3 (600), no dev.
* ``plain3+dev``      model_1, model_2, model_3[100:]; dev = gen_a[:200] (same model as model_1),
                      gen_b[:200] (same model as model_2), model_3[:100]  (disjoint samples).
* ``4:gen_e-unseen``  as plain3+dev plus 200 gen_e images; gen_e is absent from dev.
* ``4:nodev``         the same four groups, no dev.
* ``4:lomo-<m>``      the four groups; dev = the other three models (gen_e dev = gen_e[200:400]),
                      so the left-out model <m> is in the images but not in dev.
* ``5:+real``         stress test: the four groups + 200 real images (real_b) as a fifth "model".

Each protocol runs with the true k and with k=None (auto).  The reference is a plain baseline measured
in the same run: k-means (10 restarts) on a 20-D PCA of the raw pixels; the ratio ARI/ARI_ref is
printed.  ``--views`` prints ARI of every single candidate (feature view x algorithm) vs the truth.
Wall time is measured for 1000 images (gen_a 300, gen_b 300, model_3 200, gen_e 200), k=4 with dev,
and k=None.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sklearn.cluster import KMeans  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.metrics import adjusted_rand_score as ari  # noqa: E402

from imprint.engine import attribution as A  # noqa: E402
from imprint.engine import features as F  # noqa: E402


def load(d):
    fs = sorted(glob.glob(os.path.join(d, "*.png")))
    return np.stack([np.array(Image.open(f).convert("L").resize((128, 128))) for f in fs])


def baseline(images, k, seed=0):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        x = images.reshape(len(images), -1).astype(np.float32) / 255.0
        p = PCA(20, random_state=seed).fit_transform(x)
        return KMeans(k, n_init=10, random_state=seed).fit_predict(p)


def per_view(images, y, k, dev, seed=0):
    """ARI of every candidate (view x algorithm) against the truth, reproducing attribute()'s views."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        groups = tuple(g for g in A.DEFAULT_GROUPS if g != "fingerprint" or F.kernels_available("fingerprint_features"))
        bbs = A.DEFAULT_BACKBONES
        X, names = A._extract(images, groups, bbs)
        mu, sd = X.mean(0), X.std(0)
        sd = np.where(sd > 1e-9, sd, 1.0)
        Z = (X - mu) / sd
        lda = None
        if dev:
            dfe = [A._extract(dev[m], groups, bbs)[0] for m in sorted(dev)]
            w = A._dev_weights(dfe, mu, sd)
            Z = Z * w
            lda = A._lda_view(Z, dfe, mu, sd, w, seed, 10)
        views = A._build_views(Z, A._group_masks(names, groups, bbs), seed, lda)
        cands = A._candidates(views, k, seed)
    return {c: ari(y, l) for c, l in cands.items()}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--dev", default="/work/shared/corpus/dev")
    ap.add_argument("--views", action="store_true", help="also print ARI of every single candidate")
    ap.add_argument("--no-auto", action="store_true", help="skip k=None runs")
    a = ap.parse_args(argv)
    R = a.dev
    t = time.perf_counter()
    D = {f"model_{i}": load(f"{R}/attribution/model_{i}") for i in (1, 2, 3)}
    for g in "abe":
        D[f"gen_{g}"] = load(f"{R}/membership/gen_{g}/generated")
    D["real_b"] = load(f"{R}/membership/gen_b/real/unused")
    print(f"loaded dev corpus in {time.perf_counter() - t:.1f}s")

    m3_img, m3_dev = D["model_3"][100:], D["model_3"][:100]
    four = {"model_1": D["model_1"], "model_2": D["model_2"], "model_3": m3_img, "gen_e": D["gen_e"][:200]}
    dev_all = {"model_1": D["gen_a"][:200], "model_2": D["gen_b"][:200], "model_3": m3_dev,
               "gen_e": D["gen_e"][200:400]}
    dev3 = {m: dev_all[m] for m in ("model_1", "model_2", "model_3")}
    P = {
        "plain3": ({m: D[m] for m in ("model_1", "model_2", "model_3")}, None),
        "plain3+dev": ({m: four[m] for m in ("model_1", "model_2", "model_3")}, dev3),
        "4:gen_e-unseen": (four, dev3),
        "4:nodev": (four, None),
    }
    for lo in ("model_1", "model_2", "model_3"):
        P[f"4:lomo-{lo}"] = (four, {m: v for m, v in dev_all.items() if m != lo})
    P["5:+real"] = ({**four, "real": D["real_b"][:200]}, dev3)

    rows = []
    print(f"{'protocol':16s} {'k':>3s} {'ARI':>6s} {'ARI_ref':>7s} {'ratio':>6s} {'k_auto':>6s} {'ARI_auto':>8s} "
          f"{'time_s':>6s}")
    for name, (parts, dev) in P.items():
        imgs = np.concatenate(list(parts.values()))
        y = np.concatenate([np.full(len(v), i) for i, v in enumerate(parts.values())])
        k = len(parts)
        t = time.perf_counter()
        r = A.attribute(imgs, k, dev_sets=dev, random_state=0)
        dt = time.perf_counter() - t
        s = ari(y, r.labels)
        s_ref = ari(y, baseline(imgs, k))
        ka, sa = "-", float("nan")
        if not a.no_auto:
            ra = A.attribute(imgs, None, dev_sets=dev, random_state=0)
            ka, sa = ra.k, ari(y, ra.labels)
        rows.append((name, k, s, s_ref, ka, sa, dt))
        print(f"{name:16s} {k:3d} {s:6.3f} {s_ref:7.3f} {s / max(s_ref, 1e-9):6.2f} {ka!s:>6s} {sa:8.3f} {dt:6.1f}",
              flush=True)
        if a.views and name in ("plain3", "4:gen_e-unseen", "4:lomo-model_3", "5:+real"):
            pv = per_view(imgs, y, k, dev)
            print("    per candidate: " + " ".join(f"{c}={v:.2f}" for c, v in pv.items()), flush=True)

    big = np.concatenate([D["gen_a"][:300], D["gen_b"][:300], D["model_3"], D["gen_e"][:200]])
    yb = np.repeat(np.arange(4), [300, 300, 200, 200])
    devb = {"model_1": D["gen_a"][300:500], "model_2": D["gen_b"][300:500]}
    for kk in (4, None):
        t = time.perf_counter()
        r = A.attribute(big, kk, dev_sets=devb, random_state=0)
        dt = time.perf_counter() - t
        t = time.perf_counter()
        baseline(big, 4)
        dref = time.perf_counter() - t
        print(f"1000 images, k={kk}, dev=2 models: {dt:.1f}s (baseline pixel-PCA k-means {dref:.1f}s, "
              f"ratio {dt / dref:.1f}x); k={r.k} ARI={ari(yb, r.labels):.3f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
