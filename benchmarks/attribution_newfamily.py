"""A check of attribution outside the dev families (issue 19): a generator family that no dev set contains.

Usage::

    IMPRINT_MODELS_DIR=/work/main/models/onnx nice .venv/bin/python benchmarks/attribution_newfamily.py \
        [--code CHECKOUT] [--seeds 31,32,33] [--models m123|m12e] [--mix release|release-box|none] \
        [--source real|gen_e] [--ks 4,auto] [--no-invariance] [--processing-sample N] [--cache DIR] [--json OUT]
        [--n-new N] [--save DIR] [--sample-rule random|stratified|balanced] [--family rdec|nnconv|diff|vae]
        [--open-set-space features|floor]

``--family`` picks the stand-in family (``benchmarks/standin_families.py`` describes each and the trace it leaves):
``rdec`` (default; the ninth round's, same draws for a seed), ``nnconv`` (nearest-neighbour resize-convolution
decoder, weak period-2 trace), ``diff`` (diffusion-like DDIM sampler with a fixed random denoiser, no up-sampling,
no periodic trace), ``vae`` (blurry quarter-size latent decoder with a per-model intensity curve).  The text below
says "rdec" for whichever family is chosen.

The default new family, "rdec": a randomly initialised convolutional auto-decoder (numpy/scipy only, weights fixed by
``DECODER_SEED``).  An image is encoded by averaging 2x2 blocks (128 -> 64) and a random 3x3 conv bank (8 channels,
leaky ReLU); per-pixel noise is injected (as StyleGAN's noise inputs); the decoder up-samples by a stride-2
transposed convolution (4x4 kernels: the bilinear kernel on the diagonal plus random weights, the upsampling layer of
DCGAN-like decoders, which leaves a period-2 phase pattern) and refines with two random 3x3 conv layers (leaky ReLU,
residual), then a 1x1 conv to one channel, matched to the input's mean and standard deviation.  Inputs are real dev
images (``membership/*/real/unused``, 460 images no model was trained on), so the family's content is real-patient
anatomy and its fingerprint is its own decoder's: no dev model up-samples with these weights, and none is a
(random) auto-encoder of real images.  It is a stand-in for the judge's unseen family, not a trained generator: its
images are closer to real anatomy than any dev model's and its trace is a transposed convolution's.  ``--source
gen_e`` feeds it gen_e's images instead (generated-looking anatomy from a dev family that is then neither clustered
nor in dev), so content cannot tell rdec from the dev models as easily.

Sets: three dev models and 200 rdec images (drawn per seed from the 460 real inputs, with per-seed noise):
* ``m123``: model_1, model_2, model_3[100:] as attribution_lomo.sample draws them; dev = gen_a[:200] (model_1),
  gen_b[:200] (model_2), model_3[:100];
* ``m12e``: model_1, model_2 as above, gen_e[:200]; dev = gen_a[:200], gen_b[:200], gen_e[600:800].
rdec never enters dev.  Processing (every clustered image; dev is unprocessed): ``release`` is
attribution_lomo.release (20 % untouched, 40 % JPEG q 70-95, 20 % resized 128 -> 96 -> 128, 20 % both; filter per
image among bilinear / bicubic / lanczos), ``release-box`` the same with box among the filters, ``none`` untouched.

Each (seed, k) runs :func:`engine.attribution.attribute` (k = 4 and k = None) with dev; printed per cell: ARI / k
found, the ARI of the clusters against the processing tags, how the rdec images are spread over clusters, and the
open-set naming of each part's cluster ("naming": dev model or None, right or not).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from _codepath import code_path  # noqa: E402  (this folder is sys.path[0] when run as a script)

sys.path.insert(0, os.path.abspath(code_path(sys.argv)))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import adjusted_rand_score as ari  # noqa: E402

import attribution_lomo as L  # noqa: E402  (its loader, samples and the release mix)
import standin_families as SF  # noqa: E402  (the stand-in families' generators)
from imprint.engine import attribution as A  # noqa: E402
from _knobs import add_knobs, apply_knobs  # noqa: E402  (this folder is sys.path[0] when run as a script)
from imprint.engine.outputs import write_json  # noqa: E402

#: the engine settings this benchmark takes as flags (benchmarks/_knobs.py)
KNOBS_HERE = ("k_lookahead", "sample_rule", "processing_sample", "open_set_space", "history_min_share",
              "processing_filters", "nuisance_rule", "nuisance_max_share")


def rdec_images(real, n, seed):
    """``n`` rdec images from ``real`` (uint8 [M,H,W]), drawn and noised by ``seed``; the decoder is fixed."""
    return SF.family_images("rdec", real, n, seed)


def release(images, seed, mix):
    if mix == "none":
        return images.copy(), np.array(["none"] * len(images))
    return L.release(images, seed, L.FILTERS + (("box",) if mix == "release-box" else ()))


def naming(r, y, parts, dev_names):
    """Open-set naming per true part: the dev model (or None = "new") of the cluster that holds most of the part,
    that cluster's nearest dev model and distance ratio, and "right" (a dev model's part named as itself, the new
    family named None)."""
    oc = r.info.get("open_set", {}).get("clusters", [])
    out = {}
    for i, m in enumerate(parts):
        c = int(np.bincount(r.labels[y == i], minlength=r.k).argmax())
        got = r.cluster_dev_model[c] if c < len(r.cluster_dev_model) else None
        cl = oc[c] if c < len(oc) else {}
        out[m] = {"cluster": c, "dev_model": got, "nearest": cl.get("nearest"),
                  "ratio": None if cl.get("ratio") is None else round(float(cl["ratio"]), 2),
                  "right": bool(got == m if m in dev_names else got is None)}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--code", default=None, help="checkout whose imprint code is measured (default: this one)")
    ap.add_argument("--dev", default="/work/shared/corpus/dev")
    ap.add_argument("--seeds", default="31,32,33")
    ap.add_argument("--models", default="m123", choices=("m123", "m12e"))
    ap.add_argument("--mix", default="release", choices=("release", "release-box", "none"))
    ap.add_argument("--ks", default="4,auto")
    ap.add_argument("--n-new", type=int, default=200)
    ap.add_argument("--source", default="real", choices=("real", "gen_e"),
                    help="rdec's inputs: real dev images (default) or gen_e[200:600] (generated-looking anatomy; "
                    "m123 only, where gen_e is neither clustered nor in dev)")
    ap.add_argument("--family", default="rdec", choices=tuple(SF.FAMILIES),
                    help="the stand-in family (benchmarks/standin_families.py); default rdec")
    ap.add_argument("--no-invariance", action="store_true", help="processing_invariant=False (the method before issue "
                    "19), to see whether this set can tell the two apart")
    add_knobs(ap, *KNOBS_HERE)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--save", default=None, help="write the first seed's rdec images as PNG here, then stop")
    a = ap.parse_args(argv)
    apply_knobs(ap, a, A, *KNOBS_HERE)
    R = a.dev
    D = {f"model_{i}": L.load(f"{R}/attribution/model_{i}") for i in (1, 2, 3)}
    for g in "abe":
        D[f"gen_{g}"] = L.load(f"{R}/membership/gen_{g}/generated")
    real = np.concatenate([L.load(f"{R}/membership/gen_{g}/real/unused") for g in "abe"])
    if a.source == "gen_e":
        if a.models != "m123":
            ap.error("--source gen_e needs --models m123 (gen_e must not be clustered or in dev)")
        real = D["gen_e"][200:600]
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.save:
        os.makedirs(a.save, exist_ok=True)
        for i, v in enumerate(SF.family_images(a.family, real, a.n_new, seeds[0])):
            Image.fromarray(v).save(os.path.join(a.save, f"{i:04d}.png"))
        return []
    if a.models == "m123":
        dev = {"model_1": D["gen_a"][:200], "model_2": D["gen_b"][:200], "model_3": D["model_3"][:100]}
    else:
        dev = {"model_1": D["gen_a"][:200], "model_2": D["gen_b"][:200], "gen_e": D["gen_e"][600:800]}
    ks = [None if k == "auto" else int(k) for k in a.ks.split(",")]
    print(f"code: {os.path.dirname(os.path.dirname(A.__file__))}; models {a.models} + {a.family}({a.source}); "
          f"mix {a.mix}",
          flush=True)
    cells = []
    for s in seeds:
        parts = L.sample(D, s)
        if a.models == "m12e":
            parts = {"model_1": parts["model_1"], "model_2": parts["model_2"], "gen_e": D["gen_e"][:200]}
        else:
            parts.pop("gen_e")
        parts["rdec"] = SF.family_images(a.family, real, a.n_new, s)
        imgs = np.concatenate(list(parts.values()))
        y = np.repeat(np.arange(len(parts)), [len(v) for v in parts.values()])
        P, tags = release(imgs, s, a.mix)
        for k in ks:
            t, c0 = time.perf_counter(), time.process_time()
            r = A.attribute(P, k, dev_sets=dev, random_state=0, cache_dir=a.cache,
                            processing_invariant=not a.no_invariance)
            new = r.labels[y == len(parts) - 1]
            cell = {"seed": s, "family": a.family, "n_new": a.n_new, "models": a.models, "source": a.source, "mix": a.mix, "invariant": not a.no_invariance,
                    "processing_sample": getattr(A, "PROCESSING_SAMPLE", 300),
                    "sample_rule": getattr(A, "PROCESSING_SAMPLE_RULE", "random"),
                    "k": "auto" if k is None else k, "k_found": int(r.k),
                    "ari": round(float(ari(y, r.labels)), 4), "ari_processing": round(float(ari(tags, r.labels)), 4),
                    "rdec_clusters": np.bincount(new, minlength=r.k).tolist(),
                    "per_model_clusters": {m: np.bincount(r.labels[y == i], minlength=r.k).tolist()
                                           for i, m in enumerate(parts)},
                    "naming": naming(r, y, list(parts), set(dev)),
                    "open_set_space": getattr(A, "OPEN_SET_SPACE", "features"),
                    "seconds": round(time.perf_counter() - t, 1), "cpu_s": round(time.process_time() - c0, 1)}
            cells.append(cell)
            print(json.dumps(cell), flush=True)
    for k in ks:
        kk = "auto" if k is None else k
        m, mn, lo, hi = L.boot_mean([c["ari"] for c in cells if c["k"] == kk])
        print(f"k {kk}: mean ARI {m:.3f} (95 % bootstrap over seeds [{lo:.3f}, {hi:.3f}]), min {mn:.3f}, k found "
              f"{[c['k_found'] for c in cells if c['k'] == kk]}", flush=True)
    if a.json:
        write_json(a.json, cells)
    return cells

if __name__ == "__main__":
    main()
