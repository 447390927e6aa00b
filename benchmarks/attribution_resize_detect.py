"""Per-image resize-history flags on a 50/50 group (issue 19, seventh round): the union-median detector
(``processing.detect_resampling``, before) against the cross-cluster one (``processing.resampling_against``, after).

For each image set (synthetic 64 px CT-like slices with white noise SD 3, as in the tests, and 100 dev images of each
generator and of real_b), half the images are processed and half left as they are:

* resized by 0.5 / 0.6 / 0.75 / 0.9 and back with bicubic, bilinear, lanczos or box (Pillow's area filter);
* JPEG'd at quality 90 / 70 (must not be flagged as resized);
* a high-frequency "generator" trace planted on the half (period-2 checkerboard +-3, or white noise SD 3): here the
  *clean* half is judged against the traced half (the cluster with more high frequencies is the reference) and must
  not be flagged.

Printed per set and processing: the share flagged in the processed half / in the untouched half, before | after.
All figures are in-sample for the dev images (they were looked at when the bands were chosen a priori).

Eighth round: the box rows are judged with copied lines too (``processing.duplicate_lines``, on by default in
``resampling_against``); ``--timing`` times the floor waiver's evidence (``attribution._history_explains``) over every
pair of a k = 6 labelling of 600 dev images (half of them processed): the detector inputs recomputed on each pair's
union (the seventh round's path: only the JPEG flags cached) against computed once per image (the shared cache),
best of ``--repeat``, and checks that both give the same answers.

Usage::

    nice .venv/bin/python benchmarks/attribution_resize_detect.py [--dev /work/shared/corpus/dev] [--n 100]
    nice .venv/bin/python benchmarks/attribution_resize_detect.py --timing [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from attribution_floor_price import plant  # noqa: E402
from attribution_lomo import load  # noqa: E402
from conftest import ct_like  # noqa: E402
from imprint.engine import processing as P  # noqa: E402

SETS = {"model_1": "attribution/model_1", "model_2": "attribution/model_2", "model_3": "attribution/model_3",
        "gen_a": "membership/gen_a/generated", "gen_e": "membership/gen_e/generated",
        "real_b": "membership/gen_b/real/unused"}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--dev", default="/work/shared/corpus/dev")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--timing", action="store_true", help="only time the waiver's evidence, per pair vs cached")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    if a.timing:
        return timing(a)
    rng = np.random.default_rng(0)
    D = {"syn64": np.clip(np.rint(ct_like(rng, 40, 64).astype(np.float32) + rng.normal(0, 3, (40, 64, 64))), 0,
                          255).astype(np.uint8)}
    for k, v in SETS.items():
        D[k] = load(os.path.join(a.dev, v))[: a.n]
    procs = [(f"resize {f} {flt}", (lambda b, f=f, flt=flt: np.stack([P.resize_roundtrip(v, f, flt) for v in b])))
             for f in (0.5, 0.6, 0.75, 0.9) for flt in ("bicubic", "bilinear", "lanczos", "box")]
    procs += [(f"jpeg {q}", (lambda b, q=q: np.stack([P.jpeg_roundtrip(v, q) for v in b]))) for q in (90, 70)]
    print("set      processing            processed/untouched flagged: before (union median) | after (against)")
    for name, imgs in D.items():
        n = len(imgs) // 2
        ref = np.arange(len(imgs)) < n
        zero = np.zeros(len(imgs), np.int64)
        for pn, fn in procs:
            b = imgs.copy()
            b[n:] = fn(imgs[n:])
            old = P.detect_resampling(b, zero)[0]
            new = P.resampling_against(b, ref)[0]
            print(f"{name:8s} {pn:22s} {old[~ref].mean():.2f}/{old[ref].mean():.2f} | "
                  f"{new[~ref].mean():.2f}/{new[ref].mean():.2f}", flush=True)
        for tr in ("checker", "noise"):
            b = imgs.copy()
            b[n:] = plant(imgs[n:], tr, 3.0, seed=1)
            old = P.detect_resampling(b, zero)[0]
            new = P.resampling_against(b, ~ref)[0]
            print(f"{name:8s} HF {tr:19s} clean/traced flagged {old[ref].mean():.2f}/{old[~ref].mean():.2f} | "
                  f"{new[ref].mean():.2f}/{new[~ref].mean():.2f}", flush=True)


def timing(a):
    """``_history_explains`` over the 15 pairs of six clusters (100 dev images each, every other image resized 0.6
    bicubic, area-resized 0.8 or JPEG'd at 70): per-pair recomputation vs the shared per-image cache, best of N."""
    import time

    from imprint.engine import attribution as A

    parts = []
    for j, v in enumerate(SETS.values()):
        im = load(os.path.join(a.dev, v))[:100].copy()
        odd = np.arange(1, len(im), 2)
        fn = [lambda x: P.resize_roundtrip(x, 0.6, "bicubic"), lambda x: P.resize_roundtrip(x, 0.8, "box"),
              lambda x: P.jpeg_roundtrip(x, 70)][j % 3]
        im[odd] = np.stack([fn(x) for x in im[odd]])
        parts.append(im)
    imgs = np.concatenate(parts)
    lab = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    pairs = [(np.flatnonzero(lab == x), np.flatnonzero(lab == y)) for x in range(len(parts))
             for y in range(x + 1, len(parts))]

    def run(shared):
        cache, out = {}, []
        for ia, ib in pairs:
            if not shared:  # the seventh round's path: JPEG flags kept, the resampling detectors rerun on the union
                cache.pop("resampling", None), cache.pop("resampling_done", None)
            out.append(A._history_explains(imgs, ia, ib, cache))
        return out

    best, answers = {}, {}
    for _ in range(a.repeat):
        for shared in (False, True):
            t = time.perf_counter()
            answers[shared] = run(shared)
            dt = time.perf_counter() - t
            best[shared] = min(best.get(shared, np.inf), dt)
    same = answers[False] == answers[True]
    print(f"{len(imgs)} images, {len(pairs)} pairs, best of {a.repeat}: per-pair recomputation {best[False]:.2f} s, "
          f"cached per image {best[True]:.2f} s, ratio {best[False] / best[True]:.2f}x; identical answers: {same}")
    print("pairs explained:", sum(h for h, _ in answers[True]), "of", len(pairs))
    return best


if __name__ == "__main__":
    main()
