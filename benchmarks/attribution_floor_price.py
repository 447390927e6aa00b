"""The price of the pair test's processing floor (issue 19, sixth round): a generator whose only own trace is
high-frequency.

Usage (the same command with ``--code`` pointing at another checkout, e.g. a ``git archive`` of main, gives the
before; the feature cache may be shared, features do not depend on the attribution code)::

    IMPRINT_MODELS_DIR=/work/main/models/onnx nice .venv/bin/python benchmarks/attribution_floor_price.py \
        [--code CHECKOUT] [--traces checker,noise] [--mixes none,release] [--ks 5,auto] [--dev-modes dev,nodev]
        [--pair-test floor|labels] [--cache DIR] [--json OUT]

A simulated held-out generator: gen_b[200:400] (model_2's model, other samples than the clustered model_2 images and
than its dev set gen_b[:200]) with a planted high-frequency trace that resize 0.5 + JPEG 50 (the floor) erases:

* ``checker``: a period-2 checkerboard, +-``--amp`` grey levels (the classic transposed-convolution up-sampling
  artefact at its highest frequency);
* ``noise``: white Gaussian noise of SD ``--amp`` grey levels (a distinct, flat noise spectrum), fixed per image seed.

It is clustered with model_1 (200), model_2 (200), model_3[100:] (100) and gen_e[:200] (200): five models, 900
images; the nearest model to the planted one is model_2, which differs from it *only* in the planted trace.
``--mixes``: ``none`` (as written) or ``release`` (the issue's mix of ``attribution_lomo.release``, seed 21).
Dev (``dev``): gen_a[:200], gen_b[:200], model_3[:100] (the planted generator and gen_e are absent).
Printed per cell: k found, ARI, whether the planted model has a cluster of its own (the share of its images in the
cluster that holds most of them, and that cluster's purity), the scan's pair scores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


from _codepath import code_path  # noqa: E402  (this folder is sys.path[0] when run as a script)

sys.path.insert(0, os.path.abspath(code_path(sys.argv)))
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from sklearn.metrics import adjusted_rand_score as ari  # noqa: E402

from attribution_lomo import load, release  # noqa: E402
from imprint.engine import attribution as A  # noqa: E402
from _knobs import add_knobs, apply_knobs  # noqa: E402  (this folder is sys.path[0] when run as a script)


def plant(images, trace, amp, seed=0):
    """The planted high-frequency trace on uint8 [N,H,W] -> uint8 [N,H,W]."""
    x = images.astype(np.float64)
    h, w = x.shape[1:]
    if trace == "checker":
        x += amp * np.where((np.arange(h)[:, None] + np.arange(w)[None, :]) % 2 == 0, 1.0, -1.0)[None]
    elif trace == "noise":
        x += np.random.default_rng(seed).normal(0.0, amp, x.shape)
    else:
        raise ValueError(trace)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--code", default=None, help="checkout whose imprint code is measured (default: this one)")
    ap.add_argument("--dev", default="/work/shared/corpus/dev")
    ap.add_argument("--traces", default="checker,noise")
    ap.add_argument("--amp", type=float, default=3.0)
    ap.add_argument("--mixes", default="none,release")
    ap.add_argument("--ks", default="auto")
    ap.add_argument("--dev-modes", default="dev")
    ap.add_argument("--pair-test", default=None)
    ap.add_argument("--pair-view", default=None, help="engine.attribution.PAIR_VIEW for this run (sixth round)")
    add_knobs(ap, "floor_waiver")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.pair_test:
        A.PAIR_TEST = a.pair_test
    if a.pair_view:
        A.PAIR_VIEW = a.pair_view
    apply_knobs(ap, a, A, "floor_waiver")
    print(f"code: {os.path.dirname(os.path.dirname(A.__file__))}; pair test {A.PAIR_TEST}, pair view {getattr(A, 'PAIR_VIEW', 'pca90')}, "
          f"floor waiver {getattr(A, 'FLOOR_WAIVER', False)}", flush=True)
    R = a.dev
    D = {f"model_{i}": load(f"{R}/attribution/model_{i}") for i in (1, 2, 3)}
    for g in "abe":
        D[f"gen_{g}"] = load(f"{R}/membership/gen_{g}/generated")
    dev_all = {"model_1": D["gen_a"][:200], "model_2": D["gen_b"][:200], "model_3": D["model_3"][:100]}
    cells = []
    for trace in a.traces.split(","):
        parts = {"model_1": D["model_1"], "model_2": D["model_2"], "model_3": D["model_3"][100:],
                 "gen_e": D["gen_e"][:200], "planted": plant(D["gen_b"][200:400], trace, a.amp, seed=7)}
        imgs = np.concatenate(list(parts.values()))
        y = np.repeat(np.arange(len(parts)), [len(v) for v in parts.values()])
        pl = y == 4
        for mix in a.mixes.split(","):
            P = imgs if mix == "none" else release(imgs, 21)[0]
            for dm in a.dev_modes.split(","):
                for k in [None if kk == "auto" else int(kk) for kk in a.ks.split(",")]:
                    t = time.perf_counter()
                    r = A.attribute(P, k, dev_sets=dev_all if dm == "dev" else None, random_state=0,
                                    cache_dir=a.cache, stability_resamples=0)
                    lab = r.labels
                    c = int(np.bincount(lab[pl]).argmax())
                    cell = {"trace": trace, "amp": a.amp, "mix": mix, "dev": dm, "k": "auto" if k is None else k,
                            "k_found": int(r.k), "ari": round(float(ari(y, lab)), 4),
                            "planted_recall": round(float(np.mean(lab[pl] == c)), 3),
                            "planted_purity": round(float(np.mean(pl[lab == c])), 3),
                            "pairs": r.info.get("k_scan_pairs"), "pairs_floor": r.info.get("k_scan_pairs_floor"),
                            "pairs_history": r.info.get("k_scan_pairs_history"),
                            "seconds": round(time.perf_counter() - t, 1)}
                    cells.append(cell)
                    print(json.dumps(cell), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(cells, f, indent=1)
    return cells


if __name__ == "__main__":
    main()
