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

Usage::

    nice .venv/bin/python benchmarks/attribution_resize_detect.py [--dev /work/shared/corpus/dev] [--n 100]
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
    a = ap.parse_args(argv)
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


if __name__ == "__main__":
    main()
