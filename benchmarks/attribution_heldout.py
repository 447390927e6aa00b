"""A held-out-like attribution protocol for issue 19: four models, **none of them in dev**, after release processing.

Usage::

    IMPRINT_MODELS_DIR=/work/main/models/onnx nice .venv/bin/python benchmarks/attribution_heldout.py \
        [--set S|E] [--pair rdec] [--others nnconv,vae] [--seeds 41,42,43] [--n 100] \
        [--conds none,release-bicubic,...] [--ks 4,auto] [--no-nodev] [--cache DIR] [--json OUT]

Every earlier issue-19 benchmark clusters the dev models themselves (model_1/model_2 are gen_a/gen_b's models, and
dev holds other images of them), or adds one stand-in next to them.  The judged set is four models none of which is
in ``--dev``.  Here:

* dev = the dev corpus' attribution models exactly as the CLI takes ``--dev DIR``
  (``attribution/model_1``, ``model_2``, ``model_3``, 200 images each);
* the clustered set holds four models, **none in dev**:
  - ``--set S``: two weight seeds of one stand-in family (``--pair``, default rdec: same architecture, two
    "trained" models, the hardest pair) and one model of each of two other families (``--others``, default
    nnconv, vae); every stand-in model's weights come from a fresh weight seed (:data:`WEIGHT_SEEDS`), never the
    family's default one used by the earlier rounds;
  - ``--set E``: gen_e (a dev-corpus model that no dev *attribution* set contains: "another trained model of a dev
    architecture"), the two ``--pair`` weight seeds, and the first of ``--others``;
  stand-in inputs are real dev images no model was trained on (``membership/*/real/unused``, 460), drawn and
  noised per (seed, model); gen_e's images are drawn from its 1,000 per seed;
* processing conditions (:data:`CONDITIONS`), every clustered image (dev is unprocessed, as the CLI's):
  ``none``; the issue's release mix (20 % untouched, 40 % JPEG q 70-95, 20 % resized 128 -> 96 -> 128, 20 % both)
  with each Pillow resize filter alone (``release-nearest`` ... ``release-lanczos``); the whole set JPEG q 95 / 70 /
  50; resized 0.9 / 0.7 / 0.5 (filter drawn per image among the six); resize 0.7 + JPEG 70 and resize 0.5 + JPEG 50;
  and **WebP lossy**, a codec no constant of imprint was chosen on: ``webp`` (every image, q 60-90) and
  ``release-webp`` (the release mix with WebP q 60-90 in place of JPEG, filters among the six).

Printed per cell (set, seed, n, condition, k, dev or not): ARI, k found, ``ari_processing`` (ARI of the clusters
against the per-image processing tags, the resize filter part of the tag where it is drawn per image: requirement 2, "processing never forms a cluster of its own"; 0 where every
image has one tag) and ``max_cluster_tag_share`` (the largest share of one non-"none" tag in a cluster of at least 10
images minus that tag's share in the whole set: a cluster made of one history shows up here), the per-model spread
over clusters, and the open-set naming (every true model should be named "new": none is in dev).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

from _codepath import code_path  # noqa: E402  (this folder is sys.path[0] when run as a script)

sys.path.insert(0, os.path.abspath(code_path(sys.argv)))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import adjusted_rand_score as ari  # noqa: E402

import attribution_lomo as L  # noqa: E402  (its loader)
import standin_families as SF  # noqa: E402  (the stand-in families)
from imprint.engine import attribution as A  # noqa: E402
from imprint.engine import processing as PR  # noqa: E402
from imprint.engine.outputs import write_json  # noqa: E402
from _knobs import add_knobs, apply_knobs  # noqa: E402

KNOBS_HERE = ("k_lookahead", "sample_rule", "processing_sample", "open_set_space", "history_min_share",
              "processing_filters", "nuisance_rule", "nuisance_max_share")

#: every Pillow resampling filter (the issue's "unknown filter")
ALL_FILTERS = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")
#: fresh weight seeds per family (first, second model): never the families' defaults of the earlier rounds
WEIGHT_SEEDS = {"rdec": (71001, 71002), "nnconv": (72001, 72002), "diff": (73001, 73002), "vae": (74001, 74002)}

CONDITIONS = (["none"] + [f"release-{f}" for f in ALL_FILTERS] + [f"jpeg {q}" for q in (95, 70, 50)]
              + [f"resize {f}" for f in (0.9, 0.7, 0.5)] + ["resize 0.7 + jpeg 70", "resize 0.5 + jpeg 50"]
              + ["webp", "release-webp"])


def webp_roundtrip(image, quality):
    """Encode one uint8 [H,W] image as lossy WebP at ``quality`` (Pillow/libwebp) and decode it."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="WEBP", quality=int(quality), lossless=False)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


def _resize(a, f, filt):
    """Resize by ``f`` and back with the Pillow filter named ``filt`` (nearest and hamming are not among
    engine.processing.RESAMPLE_FILTERS, so the Pillow enum is passed)."""
    return PR.resize_roundtrip(a, f, getattr(Image.Resampling, filt.upper()))


def process(images, cond, seed):
    """Apply condition ``cond`` to every image (uint8 [N,H,W]); returns (images, tags [N])."""
    rng = np.random.default_rng(seed)
    out, tags = np.empty_like(images), []
    for i, a in enumerate(images):
        u = rng.random()
        q = int(rng.integers(70, 96))
        qw = int(rng.integers(60, 91))
        filt = ALL_FILTERS[int(rng.integers(len(ALL_FILTERS)))]
        if cond == "none":
            out[i], t = a, "none"
        elif cond.startswith("release-"):
            which = cond.split("-", 1)[1]
            webp = which == "webp"
            f = filt if webp else which
            enc = (lambda x: webp_roundtrip(x, qw)) if webp else (lambda x: PR.jpeg_roundtrip(x, q))
            codec = "webp" if webp else "jpeg"
            sfx = f":{f}" if webp else ""  # the filter drawn per image is part of the history
            if u < 0.2:
                out[i], t = a, "none"
            elif u < 0.6:
                out[i], t = enc(a), codec
            elif u < 0.8:
                out[i], t = _resize(a, 0.75, f), "resize" + sfx
            else:
                out[i], t = enc(_resize(a, 0.75, f)), "both" + sfx
        elif cond == "webp":
            out[i], t = webp_roundtrip(a, qw), "webp"
        elif cond.startswith("resize") and "+" in cond:
            f, qq = float(cond.split()[1]), int(cond.split()[-1])
            out[i], t = PR.jpeg_roundtrip(_resize(a, f, filt), qq), f"both:{filt}"
        elif cond.startswith("resize"):
            out[i], t = _resize(a, float(cond.split()[1]), filt), f"resize:{filt}"
        elif cond.startswith("jpeg"):
            out[i], t = PR.jpeg_roundtrip(a, int(cond.split()[1])), "jpeg"
        else:
            raise ValueError(cond)
        tags.append(t)
    return out, np.array(tags)


def standin(family, weight_seed, real, n, seed):
    """``n`` images of one stand-in model (``family`` with weights from ``weight_seed``); inputs drawn from ``real``
    and noised by ``seed``."""
    rng = np.random.default_rng([seed, weight_seed])
    model = SF.FAMILIES[family](seed=weight_seed)
    idx = np.sort(rng.choice(len(real), n, replace=False))
    return np.stack([model(real[i], rng) for i in idx])


def make_set(kind, pair, others, real, gen_e, n, seed):
    w1, w2 = WEIGHT_SEEDS[pair]
    parts = {}
    if kind == "E":
        rng = np.random.default_rng(5000 + seed)
        parts["gen_e"] = gen_e[np.sort(rng.choice(len(gen_e), n, replace=False))]
    parts[f"{pair}#1"] = standin(pair, w1, real, n, seed)
    parts[f"{pair}#2"] = standin(pair, w2, real, n, seed)
    for fam in others[: (1 if kind == "E" else 2)]:
        parts[fam] = standin(fam, WEIGHT_SEEDS[fam][0], real, n, seed)
    return parts


def tag_share(labels, tags, k, min_size=10):
    """Largest (share of one processing tag in a cluster of >= min_size images) - (its share overall), over tags
    other than "none"; 0 when the set has one tag."""
    best = 0.0
    for t in np.unique(tags):
        if t == "none":
            continue
        base = float(np.mean(tags == t))
        for c in range(k):
            m = labels == c
            if m.sum() >= min_size:
                best = max(best, float(np.mean(tags[m] == t)) - base)
    return round(best, 3)


def dev_runs(no_nodev=False, no_dev=False):
    """Which ``use_dev`` values a run covers, in order: both by default, ``--dev`` only, or without it only."""
    if no_nodev and no_dev:
        raise ValueError("--no-nodev and --no-dev together leave nothing to run")
    return [True] if no_nodev else [False] if no_dev else [True, False]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--code", default=None, help="checkout whose imprint code is measured (default: this one)")
    ap.add_argument("--dev", default="/work/shared/corpus/dev")
    ap.add_argument("--set", default="S", choices=("S", "E"))
    ap.add_argument("--pair", default="rdec", choices=tuple(SF.FAMILIES))
    ap.add_argument("--others", default="nnconv,vae")
    ap.add_argument("--seeds", default="41,42,43")
    ap.add_argument("--n", type=int, default=100, help="images per model")
    ap.add_argument("--conds", default=",".join(CONDITIONS))
    ap.add_argument("--only", default=None, help="run only these of --conds; each keeps its --conds position, which "
                    "seeds its processing (100 x seed + position), so a rerun draws the same processed images")
    ap.add_argument("--ks", default="4,auto")
    ap.add_argument("--no-nodev", action="store_true", help="only the --dev runs")
    ap.add_argument("--no-dev", action="store_true", help="only the runs without --dev (attr17: the no-dev column "
                    "of cells whose --dev runs are done, without repeating them)")
    add_knobs(ap, *KNOBS_HERE)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.no_nodev and a.no_dev:
        ap.error("--no-nodev and --no-dev together leave nothing to run")
    apply_knobs(ap, a, A, *KNOBS_HERE)
    others = [o for o in a.others.split(",") if o]
    if a.pair in others:
        ap.error("--others must not contain --pair")
    R = a.dev
    dev = {m: L.load(f"{R}/attribution/{m}") for m in ("model_1", "model_2", "model_3")}  # as the CLI's --dev
    real = np.concatenate([L.load(f"{R}/membership/gen_{g}/real/unused") for g in "abe"])
    gen_e = L.load(f"{R}/membership/gen_e/generated")
    conds = [c.strip() for c in a.conds.split(",") if c.strip()]
    for c in conds:
        if c not in CONDITIONS:
            ap.error(f"unknown condition {c!r}; choose among {CONDITIONS}")
    ks = [None if k == "auto" else int(k) for k in a.ks.split(",")]
    devs = dev_runs(a.no_nodev, a.no_dev)
    print(f"code: {os.path.dirname(os.path.dirname(A.__file__))}; set {a.set}, pair {a.pair}, others {others}, "
          f"n {a.n}; sample rule {getattr(A, 'PROCESSING_SAMPLE_RULE', '?')}", flush=True)
    cells = []
    for s in [int(x) for x in a.seeds.split(",")]:
        parts = make_set(a.set, a.pair, others, real, gen_e, a.n, s)
        imgs = np.concatenate(list(parts.values()))
        y = np.repeat(np.arange(len(parts)), [len(v) for v in parts.values()])
        for ci, cond in enumerate(conds):
            if a.only and cond not in a.only.split(","):
                continue
            P, tags = process(imgs, cond, 100 * s + ci)
            for use_dev in devs:
                for k in ks:
                    t, c0 = time.perf_counter(), time.process_time()
                    r = A.attribute(P, k, dev_sets=dev if use_dev else None, random_state=0, cache_dir=a.cache)
                    named = {m: (r.cluster_dev_model[int(np.bincount(r.labels[y == i], minlength=r.k).argmax())]
                                 if r.cluster_dev_model else None) for i, m in enumerate(parts)}
                    cell = {"set": a.set, "pair": a.pair, "models": list(parts), "seed": s, "n": a.n, "cond": cond,
                            "dev": use_dev, "k": "auto" if k is None else k, "k_found": int(r.k),
                            "ari": round(float(ari(y, r.labels)), 4),
                            "ari_processing": round(float(ari(tags, r.labels)), 4),
                            "max_cluster_tag_share": tag_share(r.labels, tags, r.k),
                            "tags": {t_: int(np.sum(tags == t_)) for t_ in np.unique(tags)},
                            "per_model_clusters": {m: np.bincount(r.labels[y == i], minlength=r.k).tolist()
                                                   for i, m in enumerate(parts)},
                            "named": named,
                            # floor vetoes that stood (history "explained" the split) per scanned k: a split of two
                            # models kept together by a detected history shows here (k auto only)
                            "vetoes_kept": {kk: {pr: {x: h[x] for x in ("jpeg", "resampled", "p_jpeg", "p_resampled")}
                                                 for pr, h in d.items() if not h.get("veto_waived")}
                                            for kk, d in r.info.get("k_scan_pairs_history", {}).items()},
                            "history_min_share": getattr(A, "HISTORY_MIN_SHARE", None),
                            "sample_rule": getattr(A, "PROCESSING_SAMPLE_RULE", "?"),
                            "seconds": round(time.perf_counter() - t, 1),
                            "cpu_s": round(time.process_time() - c0, 1)}
                    cells.append(cell)
                    print(json.dumps(cell), flush=True)
                    if a.json:
                        write_json(a.json, cells)
    for use_dev in devs:
        for k in ks:
            kk = "auto" if k is None else k
            v = [c["ari"] for c in cells if c["k"] == kk and c["dev"] == use_dev]
            if v:
                print(f"k {kk}{' --dev' if use_dev else ''}: mean ARI {np.mean(v):.3f}, min {min(v):.3f} over "
                      f"{len(v)} cells; k found {sorted(set(c['k_found'] for c in cells if c['k'] == kk and c['dev'] == use_dev))}",
                      flush=True)
    return cells


if __name__ == "__main__":
    main()
