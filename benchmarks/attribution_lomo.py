"""Judged-like check of attribution under release processing (issue 19): leave one dev model out.

Usage (run the same command with ``--code`` pointing at another checkout, e.g. a ``git archive`` of main, for the
before; the feature cache may be shared, the features do not depend on the attribution code)::

    IMPRINT_MODELS_DIR=/work/main/models/onnx nice .venv/bin/python benchmarks/attribution_lomo.py \
        [--code CHECKOUT] [--seeds 21,22,23] [--folds none,model_1,model_2,model_3] [--cache DIR] [--json OUT]

Images (four models, 700 images): model_1 (200), model_2 (200), model_3[100:] (100), gen_e (200; a family no dev
set holds).  Each seed draws the image samples (model_1 from attribution/model_1 or gen_a[200:400], model_2 from
attribution/model_2 or gen_b[200:400], gen_e 200 of gen_e[:600]) and the release processing of every image:
20 % untouched, 40 % JPEG quality 70-95, 20 % resized 128 -> 96 -> 128, 20 % resized and then JPEG'd (so about
60 % JPEG, 40 % resized, 20 % untouched, the issue's mix); the resize filter is drawn per image among bilinear,
bicubic and lanczos.

Folds (the ``--dev`` calibration): dev = gen_a[:200] (model_1), gen_b[:200] (model_2), model_3[:100], unprocessed
and never clustered, *minus the held-out model* of the fold (``none`` holds out nothing; gen_e is never in dev).
So in fold ``model_m`` two of the four clustered models are absent from everything fitted on dev.

Each (fold, seed) runs :func:`engine.attribution.attribute` with k = 4 and k = None (auto), both with the fold's dev.
Printed per cell: ARI / k.  Summary per fold and over all cells: mean, min and a 95 % bootstrap interval of the mean
over the cells (seeds x folds resampled with replacement, 2,000 draws).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time


from _codepath import code_path  # noqa: E402  (this folder is sys.path[0] when run as a script)

sys.path.insert(0, os.path.abspath(code_path(sys.argv)))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import adjusted_rand_score as ari  # noqa: E402

from imprint.engine import attribution as A  # noqa: E402
from _knobs import add_knobs, apply_knobs  # noqa: E402  (this folder is sys.path[0] when run as a script)
from imprint.engine import processing as PR  # noqa: E402

FILTERS = ("bilinear", "bicubic", "lanczos")


def load(d):
    fs = sorted(glob.glob(os.path.join(d, "*.png")))
    return np.stack([np.array(Image.open(f).convert("L")) for f in fs])


def release(images, seed, filters=FILTERS):
    """The issue's release mix with a random resize filter per image (uint8 [N,H,W] -> uint8 [N,H,W], tags [N]),
    drawn among ``filters``."""
    rng = np.random.default_rng(seed)
    out, tags = np.empty_like(images), []
    for i, a in enumerate(images):
        u, q, filt = rng.random(), int(rng.integers(70, 96)), filters[int(rng.integers(len(filters)))]
        if u < 0.2:
            out[i], t = a, "none"
        elif u < 0.6:
            out[i], t = PR.jpeg_roundtrip(a, q), "jpeg"
        elif u < 0.8:
            out[i], t = PR.resize_roundtrip(a, 0.75, filt), "resize"
        else:
            out[i], t = PR.jpeg_roundtrip(PR.resize_roundtrip(a, 0.75, filt), q), "both"
        tags.append(t)
    return out, np.array(tags)


def sample(D, seed):
    """The four models' images for a seed (dict name -> uint8 [n,H,W]); never overlaps the dev samples."""
    rng = np.random.default_rng(1000 + seed)
    m1 = D["model_1"] if rng.random() < 0.5 else D["gen_a"][200:400]
    m2 = D["model_2"] if rng.random() < 0.5 else D["gen_b"][200:400]
    ge = D["gen_e"][np.sort(rng.choice(600, 200, replace=False))]
    return {"model_1": m1, "model_2": m2, "model_3": D["model_3"][100:], "gen_e": ge}


def boot_mean(v, n=2000, seed=0):
    v = np.asarray(v, float)
    r = np.random.default_rng(seed)
    m = v[r.integers(0, len(v), (n, len(v)))].mean(axis=1)
    return float(v.mean()), float(v.min()), float(np.quantile(m, 0.025)), float(np.quantile(m, 0.975))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--code", default=None, help="checkout whose imprint code is measured (default: this one)")
    ap.add_argument("--dev", default="/work/shared/corpus/dev")
    ap.add_argument("--seeds", default="21,22,23")
    ap.add_argument("--folds", default="none,model_1,model_2,model_3")
    ap.add_argument("--ks", default="4,auto")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--mix", default="release", choices=("release", "rj", "real"),
                    help="harsher cells (issue 19, fifth round): 'rj' = every image resized 0.5 (bicubic) and JPEG 50; "
                    "'real' = the release mix with 200 real images (gen_b/real/unused[:100] + gen_e/real/unused[:60] + "
                    "gen_a/real/unused[:40]) added as a fifth group (k given = 5)")
    ap.add_argument("--pair-test", default=None, help="engine.attribution.PAIR_TEST for this run ('both' = main before "
                    "the fifth round, 'floor' = after)")
    add_knobs(ap, "floor_waiver", "projected_scale")
    a = ap.parse_args(argv)
    apply_knobs(ap, a, A, "floor_waiver", "projected_scale")
    if a.pair_test:
        A.PAIR_TEST = a.pair_test
    print(f"pair test {A.PAIR_TEST}, mix {a.mix}", flush=True)
    print(f"code: {os.path.dirname(os.path.dirname(A.__file__))}", flush=True)
    R = a.dev
    D = {f"model_{i}": load(f"{R}/attribution/model_{i}") for i in (1, 2, 3)}
    for g in "abe":
        D[f"gen_{g}"] = load(f"{R}/membership/gen_{g}/generated")
    if a.mix == "real":
        D["real"] = np.concatenate([load(f"{R}/membership/gen_b/real/unused")[:100],
                                    load(f"{R}/membership/gen_e/real/unused")[:60],
                                    load(f"{R}/membership/gen_a/real/unused")[:40]])
    dev_all = {"model_1": D["gen_a"][:200], "model_2": D["gen_b"][:200], "model_3": D["model_3"][:100]}
    seeds = [int(s) for s in a.seeds.split(",")]
    folds = a.folds.split(",")
    ks = [None if k == "auto" else int(k) for k in a.ks.split(",")]
    cells = []
    for s in seeds:
        parts = sample(D, s)
        if a.mix == "real":
            parts["real"] = D["real"]
        imgs = np.concatenate(list(parts.values()))
        y = np.repeat(np.arange(len(parts)), [len(v) for v in parts.values()])
        if a.mix == "rj":
            P = np.stack([PR.jpeg_roundtrip(PR.resize_roundtrip(x, 0.5, "bicubic"), 50) for x in imgs])
            tags = np.array(["rj"] * len(imgs))
        else:
            P, tags = release(imgs, s)
        for fold in folds:
            dev = {m: v for m, v in dev_all.items() if m != fold}
            for k in ks:
                if k is not None and a.mix == "real":
                    k = 5
                t = time.perf_counter()
                r = A.attribute(P, k, dev_sets=dev, random_state=0, cache_dir=a.cache)
                # processing must not decide a cluster: ARI between the clusters and the processing tags
                cell = {"seed": s, "fold": fold, "k": "auto" if k is None else k, "k_found": int(r.k),
                        "ari": float(ari(y, r.labels)), "ari_processing": float(ari(tags, r.labels)),
                        "seconds": round(time.perf_counter() - t, 1)}
                cells.append(cell)
                print(json.dumps(cell), flush=True)
    print("\nsummary: mean / min / 95 % bootstrap interval of the mean over cells", flush=True)
    for k in ks:
        kk = "auto" if k is None else (5 if a.mix == "real" else k)
        for fold in folds + ["all"]:
            v = [c["ari"] for c in cells if c["k"] == kk and (fold == "all" or c["fold"] == fold)]
            if v:
                m, mn, lo, hi = boot_mean(v)
                kf = sorted({c["k_found"] for c in cells if c["k"] == kk and (fold == "all" or c["fold"] == fold)})
                print(f"k {kk!s:5s} held out {fold:8s} n {len(v):2d}: mean {m:.3f} min {mn:.3f} "
                      f"[{lo:.3f}, {hi:.3f}]  k found {kf}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(cells, f, indent=1)
    return cells


if __name__ == "__main__":
    main()
