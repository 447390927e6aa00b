"""Attribution benchmark on the dev corpus: ARI per protocol, per feature view/algorithm, wall time.

Usage::

    .venv/bin/python benchmarks/bench_attribution.py [--dev /work/shared/corpus/dev] [--views] [--no-auto]
        [--only one,shares,openset,old,time] [--json rows.json] [--open-set-space features|floor]

Issue 16 sections: ``one`` (a single model, also sampled twice or split in random halves: k auto must be 1),
``shares`` (three models 600/300/100, k given and auto), ``openset`` (two dev models + two unknown, 200 each,
k auto with dev: k, ARI and the share of each group's images whose ``dev_model`` is right; plus a dev folder
holding copies of 50 of the images).  ``old`` are the protocols below; ``time`` the 1000-image wall time.

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
from _knobs import add_knobs, apply_knobs  # noqa: E402  (this folder is sys.path[0] when run as a script)
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
        masks = A._group_masks(names, groups, bbs)
        gen = ~np.any([masks[g] for g in A.CONTENT_GROUPS if g in masks], axis=0)
        X = X[:, gen]
        masks = {g: m[gen] for g, m in masks.items() if g not in A.CONTENT_GROUPS}
        mu, sd = X.mean(0), X.std(0)
        sd = np.where(sd > 1e-9, sd, 1.0)
        Z = (X - mu) / sd
        lda = None
        if dev:
            dfe = [A._extract(dev[m], groups, bbs)[0][:, gen] for m in sorted(dev)]
            w = A._dev_weights(dfe, mu, sd)
            Z = Z * w
            lda = A._lda_view(Z, dfe, mu, sd, w, seed, 10)
        views = A._build_views(Z, masks, seed, lda)
        cands = A._candidates(views, k, seed)
    return {c: ari(y, l) for c, l in cands.items()}


def dev_accuracy(r, parts, dev):
    """Per group: share of its images whose cluster's dev_model is right (group name if in dev, else empty)."""
    out = {}
    lab = [r.cluster_dev_model[c] or "" for c in r.labels]
    start = 0
    for g, v in parts.items():
        want = g if g in (dev or {}) else ""
        out[g] = float(np.mean([x == want for x in lab[start:start + len(v)]]))
        start += len(v)
    return out


PAIRED = False


def run_one(name, parts, dev, k, cache, seed=0, one_model=False):
    """attribute() on the concatenated groups; returns a result row (and prints it).

    ``one_model``: the groups are samples of one model; the score is then 1 when k = 1 was returned, else 0."""
    imgs = np.concatenate(list(parts.values()))
    y = np.concatenate([np.full(len(v), i) for i, v in enumerate(parts.values())])
    t = time.perf_counter()
    if PAIRED and k is None:  # main's pair test and this code's from one run (bench_attribution_processing)
        from bench_attribution_processing import paired_attribute

        mk, ml, tk, tl = paired_attribute(imgs, dev_sets=dev, random_state=seed, cache_dir=cache, stability_resamples=0)
        sm = float(mk == 1) if one_model else ari(y, ml)
        st = (float(tk == 1) if one_model else ari(y, tl)) if tl is not None else float("nan")
        print(f"{name:26s} k auto main/this: k {mk} -> {tk}, {'k==1' if one_model else 'ARI'} {sm:.3f} -> {st:.3f} "
              f"{time.perf_counter() - t:.1f}s", flush=True)
        return {"protocol": name, "k_asked": "auto", "k_main": mk, "k_this": tk, "score_main": sm, "score_this": st}
    r = A.attribute(imgs, k, dev_sets=dev, random_state=seed, cache_dir=cache)
    dt = time.perf_counter() - t
    s = float(r.k == 1) if one_model else ari(y, r.labels)
    row = {"protocol": name, "k_true": len(parts), "k_asked": "auto" if k is None else k, "k": r.k, "ari": s,
           "separation": r.info["one_model_test"]["separation"], "stability": r.stability["mean_ari"],
           "min_cluster_conf": float(np.nanmin(r.cluster_confidence)), "time_s": dt}
    if dev:
        acc = dev_accuracy(r, parts, dev)
        row["dev_model_acc_min"] = min(acc.values())
        row["dev_model_acc"] = acc
        row["open_set_threshold"] = r.info["open_set"].get("threshold")
        row["ratios"] = [c.get("ratio") for c in r.info["open_set"].get("clusters", [])]
        row["named_in"] = [c.get("named_in") for c in r.info["open_set"].get("clusters", [])]
        row["floor_ratios"] = [c.get("floor_ratio") for c in r.info["open_set"].get("clusters", [])]
        row["dev_overlap_removed"] = r.info["dev_overlap_removed"]
    sep = row["separation"]
    print(f"{name:26s} k_true={1 if one_model else len(parts)} k_asked={row['k_asked']!s:4s} k={r.k} ARI={s:.3f} "
          f"sep={'-' if sep is None or not np.isfinite(sep) else f'{sep:.3f}'} stab={row['stability']:.3f} "
          f"minconf={row['min_cluster_conf']:.2f}"
          + (f" dev_model_acc={ {g: round(v, 3) for g, v in row['dev_model_acc'].items()} } "
             f"dev_overlap_removed={row['dev_overlap_removed']}" if dev else "")
          + f" {dt:.1f}s", flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--dev", default="/work/shared/corpus/dev")
    ap.add_argument("--views", action="store_true", help="also print ARI of every single candidate")
    ap.add_argument("--no-auto", action="store_true", help="skip k=None runs of the old protocols")
    ap.add_argument("--only", default="", help="comma list of sections: one,shares,openset,old,time")
    ap.add_argument("--json", default=None, help="write all rows to this JSON file")
    ap.add_argument("--protocols", default="", help="comma list: only these protocols of the 'old' section "
                    "(e.g. plain3,plain3+dev,4:gen_e-unseen)")
    ap.add_argument("--rule", default="this", choices=("this", "main"), help="'main': the k scan of main after issue "
                    "19's second round (pair test 'best-split', 2-means direction search without whitening), for a "
                    "before/after with the same command")
    ap.add_argument("--cache", default=None, help="feature cache folder kept between runs (default: a new temp dir)")
    ap.add_argument("--paired", action="store_true", help="k auto runs give main's and this code's pair test from one "
                    "run (bench_attribution_processing.paired_attribute; no stability resamples)")
    knobs = ("floor_waiver", "projected_scale", "k_lookahead", "sample_rule", "processing_sample", "open_set_space",
             "history_min_share")
    add_knobs(ap, *knobs)
    a = ap.parse_args(argv)
    apply_knobs(ap, a, A, *knobs)
    global PAIRED
    PAIRED = a.paired
    if a.rule == "main":
        A.PAIR_TEST, A.SEPARATION_WHITEN = "best-split", False
    only = set(filter(None, a.only.split(","))) or {"one", "shares", "openset", "old", "time"}
    R = a.dev
    t = time.perf_counter()
    D = {f"model_{i}": load(f"{R}/attribution/model_{i}") for i in (1, 2, 3)}
    for g in "abe":
        D[f"gen_{g}"] = load(f"{R}/membership/gen_{g}/generated")
    D["real_b"] = load(f"{R}/membership/gen_b/real/unused")
    print(f"loaded dev corpus in {time.perf_counter() - t:.1f}s")
    import tempfile

    cache = a.cache or tempfile.mkdtemp(prefix="bench_attr_")
    os.makedirs(cache, exist_ok=True)
    rows = []
    rng = np.random.default_rng(0)

    if "one" in only:  # issue 16: one model -> k = 1 (k auto); a model sampled twice / split in halves
        half = rng.permutation(1000)
        P1 = {
            "1: gen_a 400": {"gen_a": D["gen_a"][:400]},
            "1: gen_b 400": {"gen_b": D["gen_b"][:400]},
            "1: gen_e 400": {"gen_e": D["gen_e"][:400]},
            "1: model_3 200": {"model_3": D["model_3"]},
            "1: gen_a 1000": {"gen_a": D["gen_a"]},
            "1: model_1 + gen_a (same)": {"model_1": D["model_1"], "gen_a": D["gen_a"][:200]},
            "1: model_2 + gen_b (same)": {"model_2": D["model_2"], "gen_b": D["gen_b"][:200]},
            "1: gen_e halves 300+300": {"h1": D["gen_e"][half[:300]], "h2": D["gen_e"][half[300:600]]},
        }
        for name, parts in P1.items():
            r = run_one(name, parts, None, None, cache, one_model=True)
            r["k_true"] = 1
            rows.append(r)

    if "shares" in only:  # three models in shares 600/300/100
        parts = {"gen_a": D["gen_a"][:600], "gen_b": D["gen_b"][:300], "gen_e": D["gen_e"][:100]}
        for k in (3, None):
            rows.append(run_one("3: 600/300/100", parts, None, k, cache))
        parts = {"gen_e": D["gen_e"][:600], "gen_b": D["gen_b"][:300], "model_3": D["model_3"][:100]}
        for k in (3, None):
            rows.append(run_one("3: 600/300/100 (e,b,m3)", parts, None, k, cache))

    if "openset" in only:  # two dev models + two unknown, 200 each, k auto with dev
        four = {"model_1": D["model_1"], "model_2": D["model_2"], "model_3": D["model_3"], "gen_e": D["gen_e"][:200]}
        devs = {"model_1": D["gen_a"][200:400], "model_2": D["gen_b"][200:400], "gen_e": D["gen_e"][200:400]}
        for known in (("model_1", "model_2"), ("model_1", "gen_e"), ("model_2", "gen_e")):
            dev = {m: devs[m] for m in known}
            rows.append(run_one(f"4: dev={'+'.join(known)}", four, dev, None, cache))
        # a dev folder that also holds copies of 50 of the images: they must be filtered out
        dev = {"model_1": np.concatenate([devs["model_1"], D["model_1"][:50]]), "model_2": devs["model_2"]}
        rows.append(run_one("4: dev with 50 copies", four, dev, None, cache))

    if "old" in only:  # the protocols of the first attribution benchmark
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
        keep = set(filter(None, a.protocols.split(",")))
        for name, (parts, dev) in P.items():
            if keep and name not in keep:
                continue
            for k in ((len(parts),) if a.no_auto else (len(parts), None)):
                row = run_one(name, parts, dev, k, cache)
                if k is not None and "ari" in row:
                    imgs = np.concatenate(list(parts.values()))
                    y = np.concatenate([np.full(len(v), i) for i, v in enumerate(parts.values())])
                    row["ari_ref"] = ari(y, baseline(imgs, len(parts)))
                rows.append(row)
            if a.views and name in ("plain3", "4:gen_e-unseen", "4:lomo-model_3", "5:+real"):
                imgs = np.concatenate(list(parts.values()))
                y = np.concatenate([np.full(len(v), i) for i, v in enumerate(parts.values())])
                pv = per_view(imgs, y, len(parts), dev)
                print("    per candidate: " + " ".join(f"{c}={v:.2f}" for c, v in pv.items()), flush=True)

    if "time" in only:  # 1000 images, features included (no cache)
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
                  f"ratio {dt / dref:.1f}x); k={r.k} ARI={ari(yb, r.labels):.3f} stability={r.stability['mean_ari']:.3f} "
                  f"known={r.info['known_models']} new={r.info['new_clusters']}", flush=True)
            rows.append({"protocol": "time 1000", "k_asked": "auto" if kk is None else kk, "k": r.k,
                         "ari": ari(yb, r.labels), "time_s": dt, "baseline_s": dref})
    import shutil

    if not a.cache:
        shutil.rmtree(cache, ignore_errors=True)
    if a.json:
        import json

        with open(a.json, "w") as f:
            json.dump(A._jsonable(rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
