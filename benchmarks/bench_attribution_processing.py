"""Attribution under release post-processing (issue 19): ARI against JPEG quality, resize factor, both.

Usage::

    nice .venv/bin/python benchmarks/bench_attribution_processing.py [--dev /work/shared/corpus/dev]
        [--quick] [--no-auto] [--baseline] [--timing] [--before] [--alt] [--content-timing]
        [--before-rule pairs-gated|silhouette|main] [--pair-test both|best-split|labels|labels-proc] [--resampling]
        [--paired] [--auto-only] [--cache DIR] [--k1-sim N]

Sets (made from the dev corpus; the attribution folders hold model_1..3, and the membership set gen_e is a
fourth model of a family absent from the attribution folders; gen_a and gen_b are the same models as
model_1 and model_2, so they serve as the dev samples, never as extra models):

* images: model_1 (200), model_2 (200), model_3[100:] (100), gen_e[:200] (200) = 700 images, k = 4;
* ``--dev`` runs: dev_sets = gen_a[:200] (model_1), gen_b[:200] (model_2), model_3[:100]; never processed,
  never clustered; gen_e is absent from dev (an unseen model).

Each condition processes every image the same way (or a seeded mix), then runs
:func:`engine.attribution.attribute` with k = 4 and k = None (auto), without and with dev.  Conditions:

* ``clean``; ``jpeg q`` for q in 95, 70, 50; ``resize f`` (down by f and back, bicubic) for f in 0.9, 0.7,
  0.5; ``resize f + jpeg q`` for (0.7, 70), (0.5, 50);
* ``release mix``: the issue's mix (20 % untouched, 40 % JPEG quality 70-95, 20 % resized 128->96->128
  bilinear, 20 % both);
* ``half jpeg``: half of each model's images JPEG quality 75;
* ``harsh mix`` (with ``--alt``): a quarter each untouched, JPEG quality 50-95, resized by 0.5-0.9 and back
  (bilinear/bicubic/lanczos), both.  ``--alt`` clusters other samples of the same models (gen_a[200:400],
  gen_b[200:400], model_3[100:], gen_e[200:400]) with another mix seed.

``--before`` runs every condition twice in the same run and feature cache: ``before`` and ``after`` (this code).
``before`` is ``--before-rule``: ``pairs-gated`` (default; main before issue 19's second round: the two-way one-model
test alone answers k = 1, pair test "best-split") or ``silhouette`` (the rule before issue 19, dev weights without
processing copies).  ``--pair-test`` picks the after's pair test (engine.attribution.PAIR_TEST).  ``--resampling``
scores the resampling detection (band-limit z alone vs with the p-map periodicity test) on 6 groups of 100 images.  ``--content-timing`` times the feature extraction
with and without the content groups.

``--baseline`` adds k = 4 runs with ``processing_invariant=False`` (the method before issue 19) for the
mix and the strongest settings, as the reference measured in the same run.  ``--detection`` only scores the
JPEG detector on 400 dev images per condition.  ``--timing`` times 1,000
processed images (gen_a 300, gen_b 300, model_3 200, gen_e 200; dev = gen_a[300:500], gen_b[300:500]) with
and without the processing invariance (best of 2).  The JPEG detector (engine.processing.detect, JPEG ghost on the
decoded pixels) is scored on every condition: the share of images flagged JPEG (jpeg%).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _codepath import code_path  # noqa: E402

sys.path.insert(0, os.path.abspath(code_path(sys.argv)))  # --code DIR: another checkout's imprint (seventh round)

from sklearn.metrics import adjusted_rand_score as ari  # noqa: E402

from imprint.engine import attribution as A  # noqa: E402
from _knobs import add_knobs, apply_knobs  # noqa: E402  (this folder is sys.path[0] when run as a script)
from imprint.engine import processing as PR  # noqa: E402


def load(d):
    fs = sorted(glob.glob(os.path.join(d, "*.png")))
    return np.stack([np.array(Image.open(f).convert("L")) for f in fs])


def process(images, kind, seed=0):
    """Apply one condition to every image (uint8 [N,H,W] -> uint8 [N,H,W])."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(images)
    for i, a in enumerate(images):
        if kind == "clean":
            out[i] = a
        elif kind.startswith("jpeg"):
            out[i] = PR.jpeg_roundtrip(a, int(kind.split()[1]))
        elif kind.startswith("resize") and "+" in kind:
            f, q = float(kind.split()[1]), int(kind.split()[-1])
            out[i] = PR.jpeg_roundtrip(PR.resize_roundtrip(a, f, "bicubic"), q)
        elif kind.startswith("resize"):
            out[i] = PR.resize_roundtrip(a, float(kind.split()[1]), "bicubic")
        elif kind == "release mix":
            u = rng.random()
            q = int(rng.integers(70, 96))
            if u < 0.2:
                out[i] = a
            elif u < 0.6:
                out[i] = PR.jpeg_roundtrip(a, q)
            elif u < 0.8:
                out[i] = PR.resize_roundtrip(a, 0.75, "bilinear")
            else:
                out[i] = PR.jpeg_roundtrip(PR.resize_roundtrip(a, 0.75, "bilinear"), q)
        elif kind == "harsh mix":
            u = rng.random()
            q, f = int(rng.integers(50, 96)), float(rng.uniform(0.5, 0.9))
            filt = ("bilinear", "bicubic", "lanczos")[int(rng.integers(3))]
            if u < 0.25:
                out[i] = a
            elif u < 0.5:
                out[i] = PR.jpeg_roundtrip(a, q)
            elif u < 0.75:
                out[i] = PR.resize_roundtrip(a, f, filt)
            else:
                out[i] = PR.jpeg_roundtrip(PR.resize_roundtrip(a, f, filt), q)
        elif kind == "half jpeg":
            out[i] = PR.jpeg_roundtrip(a, 75) if i % 2 else a
        elif kind == "half resize":  # a resize-only history of half of each model (issue 19, seventh round)
            out[i] = PR.resize_roundtrip(a, (0.6, 0.75, 0.5)[(i // 2) % 3],
                                         ("bicubic", "bilinear", "lanczos")[(i // 2) % 3]) if i % 2 else a
        elif kind == "half box":  # an area-filter history of half of each model (issue 19, eighth round)
            out[i] = PR.resize_roundtrip(a, (0.75, 0.9)[(i // 2) % 2], "box") if i % 2 else a
        else:
            raise ValueError(kind)
    return out


CONDITIONS = (["clean"] + [f"jpeg {q}" for q in (95, 70, 50)] + [f"resize {f}" for f in (0.9, 0.7, 0.5)]
              + [f"resize {f} + jpeg {q}" for f, q in ((0.7, 70), (0.5, 50))]
              + ["release mix", "half jpeg", "half resize", "half box"])
QUICK = ["clean", "jpeg 70", "resize 0.7", "resize 0.7 + jpeg 70", "release mix", "half jpeg"]
BASELINE = ["jpeg 50", "resize 0.5", "release mix"]


PAIR0, SEP_WHITEN = A.PAIR_TEST, A.SEPARATION_WHITEN  # this code's defaults (the "after")


def paired_attribute(images, **kw):
    """k auto under main's pair test ("best-split") and this code's ("both") from ONE attribute() run.

    The two rules see the same candidates and consensus partitions at every k (they do not depend on the pair test),
    and "both" fails every pair "best-split" fails, so its scan stops at or before main's.  Each pair test of the
    scan is evaluated under both rules; main's answer drives the run, and this code's k is the largest k that passed
    before its first failure.  Exact for the default k rule ("pairs"); the whitened direction search must be off.
    Returns ``(main_k, main_labels, this_k, this_labels)`` (``this_labels`` is None when this code stops at k = 2,
    whose partition is not recorded: rerun then).
    """
    rec = {}
    orig = A._pair_separation

    def both_rules(V, labels, seed, min_size=10, S_proc=None, early_stop=False):
        A.PAIR_TEST = "both"
        try:
            ok_this = orig(V, labels, seed, min_size, S_proc)[2]
        finally:
            A.PAIR_TEST = "best-split"
        out = orig(V, labels, seed, min_size, S_proc)
        rec[int(labels.max()) + 1] = (labels.copy(), bool(ok_this))
        return out

    A._pair_separation, A.PAIR_TEST, A.SEPARATION_WHITEN, A.K_RULE = both_rules, "best-split", False, "pairs"
    try:
        r = A.attribute(images, None, **kw)
    finally:
        A._pair_separation, A.PAIR_TEST, A.SEPARATION_WHITEN = orig, PAIR0, SEP_WHITEN
    sep, thr = r.info["one_model_test"]["separation"], r.info["one_model_test"]["threshold"]
    passed = [2] if sep is not None and sep >= thr else []
    for kk in sorted(rec):
        if not rec[kk][1]:
            break
        passed.append(kk)
    this_k = max(passed) if passed else 1
    if this_k == r.k:
        return r.k, r.labels, this_k, r.labels
    this_labels = np.zeros(len(images), np.int64) if this_k == 1 else rec[this_k][0] if this_k in rec else None
    return r.k, r.labels, this_k, this_labels


def k1_simulation(n_sets, seed=0):
    """False-split rate of the k = 1 decision on simulated one-model sets (before / after: pair test "best-split" /
    "both").

    The same generator as tests/test_attribution_k1.py (log-concave shapes, n 20-200, 3-8 features, every other set
    released: half the rows moved along 1-2 processing directions that the projection is fitted on), run ``n_sets``
    times; prints the split count with its one-sided 95 % Clopper-Pearson upper bound.
    """
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from scipy.stats import beta
    from threadpoolctl import threadpool_limits

    import test_attribution_k1 as T

    for whiten in (False,):
        A.SEPARATION_WHITEN = whiten
        for pair_test in ("best-split", "both"):
            A.PAIR_TEST = pair_test
            r = np.random.default_rng(seed)
            splits, found, t0 = 0, 0, time.perf_counter()
            with threadpool_limits(1):
                for rep in range(n_sets):
                    shape, processed = T.SHAPES[rep % len(T.SHAPES)], bool(rep % 2)
                    n, d = int(r.choice([20, 30, 48, 80, 140, 200])), int(r.integers(3, 9))
                    X = T._draw(r, shape, (n, d)) * r.uniform(0.3, 3.0, d)
                    V = T._released(r, X) if processed else X
                    splits += T._splits((V - V.mean(axis=0)) / (V.std(axis=0) + 1e-12), rep)
            ub = 1.0 if splits >= n_sets else float(beta.ppf(0.95, splits + 1, n_sets - splits))
            print(f"whiten={whiten} pair_test={pair_test}: one-model sets split {splits}/{n_sets} "
                  f"(95 % upper bound {ub:.4f}; alpha {A.ONE_MODEL_ALPHA}), {time.perf_counter() - t0:.0f} s", flush=True)
    A.SEPARATION_WHITEN, A.PAIR_TEST = SEP_WHITEN, PAIR0


def detection(D):
    """JPEG detection on dev (model_1..3, gen_e: 100 images each): flagged share and quality error per condition."""
    X = np.concatenate([D["model_1"][:100], D["model_2"][:100], D["model_3"][:100], D["gen_e"][:100]])
    print(f"{'condition':22s} {'flagged%':>8s} {'|q est - q| median':>18s} {'ms/img':>7s}", flush=True)
    for cond in ["clean", "resize 0.7", "resize 0.5"] + [f"jpeg {q}" for q in (97, 95, 90, 85, 80, 70, 50)] + [
            "resize 0.7 + jpeg 70"]:
        P = process(X, cond)
        t = time.perf_counter()
        d = PR.detect(P)
        ms = 1000 * (time.perf_counter() - t) / len(P)
        err = "-"
        if "jpeg" in cond:
            q = int(cond.split()[-1])
            e = [abs(v - q) for v in d["jpeg_quality"] if v is not None]
            err = f"{np.median(e):.0f}" if e else "-"
        print(f"{cond:22s} {100 * np.mean(d['jpeg']):8.1f} {err:>18s} {ms:7.1f}", flush=True)


def resampling(D, alpha=None):
    """Resampling detection within groups (engine.processing.detect_resampling): 100 images each of model_1..3,
    gen_e, gen_b (images 100:200) and 100 real images; 40 % of each group resized (factor x filter), per condition.
    'before' = the band-limit z alone (periodic=False), 'after' = band-limit z or the p-map periodicity test."""
    R_ = {name: D[name][100:200] for name in ("model_1", "model_2", "model_3", "gen_e", "gen_b")}
    R_["real"] = D["real"][100:200]
    rng = np.random.default_rng(0)
    kw = {} if alpha is None else {"alpha": alpha}
    print(f"{'group':8s} {'factor':>6s} {'filter':>9s} {'found before':>12s} {'found after':>11s} {'false before':>12s} "
          f"{'false after':>11s}", flush=True)
    tot = {"fb": [], "fa": [], "db": [], "da": []}
    for name, X in R_.items():
        g = np.zeros(len(X), np.int64)
        for fac in (0.9, 0.75, 0.6, 0.5):
            for filt in ("bilinear", "bicubic", "lanczos"):
                pl = np.zeros(len(X), bool)
                pl[rng.choice(len(X), int(0.4 * len(X)), replace=False)] = True
                Y = np.stack([PR.resize_roundtrip(a, fac, filt) if p else a for a, p in zip(X, pl)])
                before = PR.detect_resampling(Y, g, periodic=False)[0]
                after = before | PR.resampling_periodicity(Y, g, **kw)[0]
                row = (before[pl].mean(), after[pl].mean(), before[~pl].mean(), after[~pl].mean())
                for key, v in zip(("db", "da", "fb", "fa"), row):
                    tot[key].append(v)
                print(f"{name:8s} {fac:6.2f} {filt:>9s} {row[0]:12.2f} {row[1]:11.2f} {row[2]:12.3f} {row[3]:11.3f}",
                      flush=True)
        f0 = PR.resampling_periodicity(X, g, **kw)[0]
        print(f"{name:8s} untouched group (no image resized): periodicity flags {f0.mean():.3f}", flush=True)
    print("mean over groups x conditions: found before %.3f after %.3f; false before %.4f after %.4f (max %.3f)"
          % (np.mean(tot["db"]), np.mean(tot["da"]), np.mean(tot["fb"]), np.mean(tot["fa"]), np.max(tot["fa"])),
          flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--code", default=None, help="checkout whose imprint code is measured (default: this one)")
    ap.add_argument("--dev", default="/work/shared/corpus/dev")
    ap.add_argument("--quick", action="store_true", help=f"only {QUICK}")
    ap.add_argument("--no-auto", action="store_true", help="skip k=None runs")
    ap.add_argument("--baseline", action="store_true", help="also run processing_invariant=False")
    ap.add_argument("--timing", action="store_true", help="time 1,000 processed images")
    ap.add_argument("--before", action="store_true", help="each condition twice in the same run: 'before' (the k "
                    "rule and dev weighting of main before issue 19's k-auto fix) and 'after' (this code)")
    ap.add_argument("--before-rule", default="pairs-gated", choices=("pairs-gated", "silhouette", "main"),
                    help="the 'before' of --before: 'pairs-gated' (main before the second issue-19 round: the one-model "
                    "test alone answers k = 1), 'silhouette' (the rule before issue 19, dev weights without copies) or "
                    "'main' (main after the second round: k rule 'pairs', pair test 'best-split', 2-means direction "
                    "search without whitening)")
    ap.add_argument("--mix-seed", type=int, default=None, help="seed of the random mixes (default 1, 5 with --alt)")
    ap.add_argument("--paired", action="store_true", help="k auto only, main's pair test and this code's from one "
                    "run per setting (paired_attribute: exact, the consensus partitions do not depend on the pair "
                    "test)")
    ap.add_argument("--auto-only", action="store_true", help="skip the k = 4 runs (k given does not depend on the k "
                    "rule, the pair test or the direction search)")
    ap.add_argument("--cache", default=None, help="feature cache folder kept between runs (default: a new temp dir)")
    ap.add_argument("--k1-sim", type=int, default=0, help="only simulate the k = 1 decision's false-split rate on this "
                    "many one-model sets (log-concave shapes, unprocessed / released), and the planted two-model "
                    "power, then stop")
    ap.add_argument("--pair-test", default=A.PAIR_TEST, choices=A.PAIR_TESTS,
                    help="the 'after' pair test of the k scan (engine.attribution.PAIR_TEST)")
    ap.add_argument("--only", default=None, help="comma-separated condition names")
    ap.add_argument("--alt", action="store_true", help="other samples: gen_a[200:400], gen_b[200:400], "
                    "model_3[100:], gen_e[200:400]; conditions release mix (seed 5) and harsh mix")
    ap.add_argument("--resampling", action="store_true", help="only score the resampling detection (before: "
                    "band-limit z alone; after: with the p-map periodicity test) at nominal alpha 1e-2, 1e-4 and the "
                    "default, then stop")
    ap.add_argument("--detection", action="store_true", help="only score the JPEG detector, then stop")
    ap.add_argument("--content-timing", action="store_true", help="only time the feature extraction of 700 images "
                    "with and without the content groups (hist, ispec), best of 3 each, then stop")
    knobs = ("floor_waiver", "projected_scale", "k_lookahead", "sample_rule", "processing_sample", "history_min_share",
             "processing_filters", "nuisance_rule", "nuisance_max_share")
    add_knobs(ap, *knobs)
    a = ap.parse_args(argv)
    apply_knobs(ap, a, A, *knobs)
    if a.k1_sim:
        k1_simulation(a.k1_sim)
        return []
    R = a.dev
    D = {f"model_{i}": load(f"{R}/attribution/model_{i}") for i in (1, 2, 3)}
    for g in "abe":
        D[f"gen_{g}"] = load(f"{R}/membership/gen_{g}/generated")
    if a.detection:
        detection(D)
        return []
    if a.resampling:
        D["real"] = load(f"{R}/membership/gen_b/real/unused")
        for alpha in (1e-2, 1e-4, None):
            print(f"--- periodicity alpha = {alpha if alpha is not None else PR.PERIODIC_ALPHA} (nominal)", flush=True)
            resampling(D, alpha)
        return []
    if a.content_timing:
        from imprint.engine import features as F

        X = np.concatenate([D["model_1"], D["model_2"], D["model_3"][100:], D["gen_e"][:200]])
        gen = tuple(g for g in A.DEFAULT_GROUPS if g not in A.CONTENT_GROUPS)
        best = {}
        for _ in range(3):
            for name, groups in (("all groups (before)", A.DEFAULT_GROUPS), ("without hist, ispec (after)", gen)):
                t = time.perf_counter()
                F.extract(X, groups)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
        for name, v in best.items():
            print(f"feature extraction, {len(X)} images, {name}: best of 3 {v:.2f} s", flush=True)
        b, a_ = best.values()
        print(f"saved {b - a_:.2f} s ({100 * (b - a_) / b:.0f} %) per extraction; attribution extracts the images, "
              "up to 300 processed copies and each dev set", flush=True)
        return []
    parts = {"model_1": D["model_1"], "model_2": D["model_2"], "model_3": D["model_3"][100:],
             "gen_e": D["gen_e"][:200]}
    dev3 = {"model_1": D["gen_a"][:200], "model_2": D["gen_b"][:200], "model_3": D["model_3"][:100]}
    if a.alt:
        parts = {"model_1": D["gen_a"][200:400], "model_2": D["gen_b"][200:400], "model_3": D["model_3"][100:],
                 "gen_e": D["gen_e"][200:400]}
    imgs = np.concatenate(list(parts.values()))
    y = np.repeat(np.arange(len(parts)), [len(v) for v in parts.values()])
    conds = a.only.split(",") if a.only else (QUICK if a.quick else CONDITIONS)
    if a.alt and not a.only:
        conds = ["release mix", "harsh mix"]
    cache = a.cache or tempfile.mkdtemp(prefix="bench_attr_proc_")
    os.makedirs(cache, exist_ok=True)
    print(f"{'condition':22s} {'inv':>6s} {'k4':>6s} {'k4 dev':>7s} {'auto':>9s} {'auto dev':>9s} "
          f"{'jpeg%':>6s} {'s/run':>6s}", flush=True)
    rows = []
    for cond in conds:
        P = process(imgs, cond, seed=a.mix_seed if a.mix_seed is not None else 5 if a.alt else 1)
        det = PR.detect(P)
        jp = 100 * np.mean(det["jpeg"])
        if a.paired:
            t = time.perf_counter()
            cells = []
            for dev in (None, dev3):
                mk, ml, tk, tl = paired_attribute(P, dev_sets=dev, random_state=0, cache_dir=cache)
                if tl is None:  # this code stopped at k = 2: run it
                    r = A.attribute(P, None, dev_sets=dev, random_state=0, cache_dir=cache)
                    tk, tl = r.k, r.labels
                cells += [f"{ari(y, ml):.3f}/k{mk}", f"{ari(y, tl):.3f}/k{tk}"]
            print(f"{cond:22s} main/this: auto {cells[0]} -> {cells[1]}   auto dev {cells[2]} -> {cells[3]}   "
                  f"jpeg% {jp:.1f}  {(time.perf_counter() - t) / 2:.0f} s/run", flush=True)
            rows.append((cond, cells))
            continue
        variants = [("yes", True)] + ([("no", False)] if a.baseline and cond in BASELINE else [])
        if a.before:
            variants = [("before", True), ("after", True)]
        for tag, inv in variants:
            res = {}
            t = time.perf_counter()
            runs = 0
            # "before": main's k rule (silhouette scan) and dev weights without processing copies, same run and cache
            brule = "pairs" if a.before_rule == "main" else a.before_rule
            A.K_RULE, A.DEV_PROCESSING_AUGMENT = ((brule, brule != "silhouette") if tag == "before"
                                                  else ("pairs", True))
            A.PAIR_TEST = "best-split" if tag == "before" else a.pair_test
            A.SEPARATION_WHITEN = SEP_WHITEN if tag != "before" else False
            for dev in (None, dev3):
                for k in ((4,) if a.no_auto or not inv else ((None,) if a.auto_only else (4, None))):
                    if tag == "after" and k == 4 and a.before_rule != "silhouette":
                        res[(k, dev is not None)] = rows[-1][2][(k, dev is not None)]  # k given: the rule plays no part
                        continue
                    r = A.attribute(P, k, dev_sets=dev, random_state=0, cache_dir=cache, processing_invariant=inv)
                    res[(k, dev is not None)] = (r.k, ari(y, r.labels))
                    runs += 1
            A.K_RULE, A.DEV_PROCESSING_AUGMENT, A.PAIR_TEST, A.SEPARATION_WHITEN = "pairs", True, PAIR0, SEP_WHITEN
            dt = (time.perf_counter() - t) / max(runs, 1)

            def auto(key):
                return f"{res[key][1]:.3f}/k{res[key][0]}" if key in res else "-"

            def given(key):
                return f"{res[key][1]:.3f}" if key in res else "-"

            print(f"{cond:22s} {tag:>6s} {given((4, False)):>6s} {given((4, True)):>7s} "
                  f"{auto((None, False)):>9s} {auto((None, True)):>9s} {jp:6.1f} {dt:6.1f}", flush=True)
            rows.append((cond, inv, res, jp))
    if a.timing:
        big = np.concatenate([D["gen_a"][:300], D["gen_b"][:300], D["model_3"], D["gen_e"][:200]])
        big = process(big, "release mix", seed=2)
        yb = np.repeat(np.arange(4), [300, 300, 200, 200])
        devb = {"model_1": D["gen_a"][300:500], "model_2": D["gen_b"][300:500]}
        for inv in (False, True):
            best, s = float("inf"), float("nan")
            for _ in range(2):
                t = time.perf_counter()
                r = A.attribute(big, 4, dev_sets=devb, random_state=0, processing_invariant=inv)
                best = min(best, time.perf_counter() - t)
                s = ari(yb, r.labels)
            print(f"1000 images (release mix), k=4, dev=2 models, processing_invariant={inv}: best of 2 "
                  f"{best:.1f} s, ARI {s:.3f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
