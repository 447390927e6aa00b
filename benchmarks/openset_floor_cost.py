"""CPU cost of the open set at the processing floor (issue 19, branch name12): ``attribute`` with
``OPEN_SET_SPACE`` "features" (main's rule) and "floor", same images, same dev sets, no feature cache, alternating,
best of ``--reps`` per side; also checks that the labels are identical (the open set runs after the clustering).

Usage::

    IMPRINT_MODELS_DIR=/work/main/models/onnx OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/openset_floor_cost.py \\
        [--dev /work/shared/corpus/dev] [--n 100] [--reps 2] [--k 4]

Set: ``--n`` images each of model_1, model_2, model_3 and gen_e after the release mix (attribution_lomo.release,
seed 31); dev = gen_a, gen_b, model_3 dev halves, ``--n`` images each (gen_e unknown).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import attribution_lomo as L  # noqa: E402
import attribution_newfamily as NF  # noqa: E402
from imprint.engine import attribution as A  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--dev", default="/work/shared/corpus/dev")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--k", type=int, default=4)
    a = ap.parse_args(argv)
    R, n = a.dev, a.n
    D = {f"model_{i}": L.load(f"{R}/attribution/model_{i}") for i in (1, 2, 3)}
    for g in "abe":
        D[f"gen_{g}"] = L.load(f"{R}/membership/gen_{g}/generated")
    imgs = np.concatenate([D["model_1"][:n], D["model_2"][:n], D["model_3"][100:100 + n], D["gen_e"][:n]])
    P, _ = NF.release(imgs, 31, "release")
    dev = {"model_1": D["gen_a"][:n], "model_2": D["gen_b"][:n], "model_3": D["model_3"][:min(n, 100)]}
    best, labels, named = {}, {}, {}
    for _ in range(a.reps):
        for space in ("features", "floor"):
            A.OPEN_SET_SPACE = space
            c0 = time.process_time()
            r = A.attribute(P, a.k, dev_sets=dev, random_state=0)
            dt = time.process_time() - c0
            best[space] = min(best.get(space, np.inf), dt)
            labels.setdefault(space, r.labels)
            named[space] = r.cluster_dev_model
    same = np.array_equal(labels["features"], labels["floor"])
    print(f"{4 * n} images, dev {sum(len(v) for v in dev.values())}, k {a.k}: CPU-s best of {a.reps}: features "
          f"{best['features']:.1f}, floor {best['floor']:.1f} (ratio {best['floor'] / best['features']:.2f}); labels "
          f"identical: {same}; named features {named['features']}, floor {named['floor']}", flush=True)


if __name__ == "__main__":
    main()
