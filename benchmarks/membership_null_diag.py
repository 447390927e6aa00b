"""Diagnostic of the membership zoo's reference null (issue 13, the decision gap of the full zoo).

Rebuilds the zoo's scenarios with the zoo's random stream (same seed, same draw order: build, then the
bootstrap's draws), runs ``audit_membership`` on the chosen scenarios with the target evidence captured,
and prints, per scenario:

* the reference null's top scores: which evidence drives each (the weighted sum or which max-rule
  channel), its per-channel z-scores, its registered / pixel nearest generated image, whether that image
  is a (transformed) copy of a member, and the z-pixel correlation and SSIM (scikit-image) of the
  reference image with that member (a near-twin would show correlation near 1);
* the members' scores, and which channel drives them;
* the flagged non-members, with the same detail.

``--twins`` instead reports near-twins among the zoo's real images: each image's highest z-pixel
correlation (also mirrored) and SSIM with any other real image.

Usage::

    python benchmarks/membership_null_diag.py --only flip,identity,"shift:0.05","resynth sigma:3" [--seed 0]
    python benchmarks/membership_null_diag.py --twins
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import membership_zoo as zoo  # noqa: E402
from imprint.engine.membership import audit as audit_mod  # noqa: E402
from imprint.engine.membership import audit_membership  # noqa: E402
from imprint.engine.membership.common import MAX_FEATURES  # noqa: E402


def _zcorr(a, b):
    a = (a - a.mean()) / (a.std() + 1e-9)
    b = (b - b.mean()) / (b.std() + 1e-9)
    return float((a * b).mean())


def _ssim(a, b):
    from skimage.metrics import structural_similarity
    return float(structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=255.0))


def _driver(zrow, names, w, mx):
    """Which part of the combination gives the raw score: 'sum' or the max-rule channel."""
    nrm = np.linalg.norm(w)
    s = float(zrow @ (w / nrm))
    m = mx & (w > 0)
    j = int(np.argmax(np.where(m, zrow, -np.inf)))
    return ("sum", s) if s >= zrow[j] else (names[j], float(zrow[j]))


def explain(res, ev, pool, ref_idx_in_pool, gen, cand, y, copy, title, top=10):
    names = list(res.info["weights"])
    w = np.array([res.info["weights"][n] for n in names])
    mx = np.array([n in MAX_FEATURES for n in names])
    nR = len(cand)
    # per-channel z of the whole pool against the reference (as in audit: _feature_matrix)
    from imprint.engine.membership.calibrate import _feature_matrix
    null_mask = np.zeros(len(pool), bool)
    null_mask[nR:] = True
    Z = _feature_matrix(ev, null_mask, names)
    member_of_gen = {int(g): j for j, g in enumerate(copy) if g >= 0}
    thr = res.threshold
    print(f"\n## {title}: threshold {thr:.2f} ({res.info['threshold_detail'].get('empirical')} empirical, "
          f"gaussian {res.info['threshold_detail'].get('gaussian'):.2f}); null n={len(res.null_scores)}")
    ns = res.null_scores
    print(f"null quantiles 50/90/99/max: {np.quantile(ns, .5):.2f} {np.quantile(ns, .9):.2f} "
          f"{np.quantile(ns, .99):.2f} {ns.max():.2f}")
    mem = res.score[y == 1]
    non = res.score[y == 0]
    if len(mem) and y.max() > 0:
        print(f"members: min/q10/median {mem.min():.2f} {np.quantile(mem, .1):.2f} {np.median(mem):.2f}; "
              f"flagged {int(res.used[y == 1].sum())}/{len(mem)}")
        drv = [_driver(Z[i], names, w, mx)[0] for i in np.flatnonzero(y == 1)]
        u, c = np.unique(drv, return_counts=True)
        print("members' drivers: " + ", ".join(f"{a} {b}" for a, b in zip(u, c)))
    print(f"non-members: max {non.max():.2f}; flagged {int(res.used[y == 0].sum())}/{len(non)}")

    def row(pi, score, label):
        zr = Z[pi]
        d, dv = _driver(zr, names, w, mx)
        g_reg = int(ev["reg_match"][pi]) if "reg_match" in ev else -1
        g_pix = int(res_nearest_all[pi, 0])
        parts = []
        for tag, g in (("reg", g_reg), ("pix", g_pix)):
            if g in member_of_gen:
                j = member_of_gen[g]
                parts.append(f"{tag}->gen{g}=copy(member {j}) corr {_zcorr(pool[pi], cand[j]):.3f} "
                             f"mirr {_zcorr(pool[pi], cand[j][:, ::-1]):.3f} ssim {_ssim(pool[pi], cand[j]):.3f}")
            else:
                parts.append(f"{tag}->gen{g} (non-copy)")
        # the image's nearest real in the pool and its correlation
        zs = [f"{n}={zr[k]:.1f}" for k, n in enumerate(names) if abs(zr[k]) >= 3]
        print(f"  {label} score {score:.2f} driver {d} ({dv:.1f}); |z|>=3: {' '.join(zs)}; "
              f"pix_nn_dist {ev['pixel_nn_dist'][pi]:.3f} real_nn_dist {ev['real_nn_dist'][pi]:.3f} "
              f"reg_ncc {ev.get('reg_ncc', np.full(len(pool), np.nan))[pi]:.3f} "
              f"reg_real_ncc {ev.get('reg_real_ncc', np.full(len(pool), np.nan))[pi]:.3f}; " + "; ".join(parts))

    res_nearest_all = explain.nearest
    order = np.argsort(-ns)[:top]
    print(f"top {top} reference null scores:")
    for k in order:
        row(ref_idx_in_pool[k], ns[k], f"ref {k}")
    fl = np.flatnonzero((res.used == 1) & (y == 0))
    if len(fl):
        print("flagged non-members:")
        for i in fl:
            row(i, res.score[i], f"non-member {i}")
    if y.max() > 0:
        lo = np.flatnonzero(y == 1)[np.argsort(res.score[y == 1])[:3]]
        print("lowest members:")
        for i in lo:
            row(i, res.score[i], f"member {i}")


def run(args):
    rng = np.random.default_rng(args.seed)
    real, fill = zoo.load_real_and_fillers(args.real, args.fillers, 128)
    only = [w for w in args.only.split(",") if w]
    captured = {}
    orig = audit_mod._evidence

    def cap(G, pool, **kw):
        out = orig(G, pool, **kw)
        captured["ev"], captured["nearest"] = out[0], out[1]
        return out

    for name, fn, strength in zoo.scenarios(False, real):
        gen, cand, ref, y, copy = zoo.build_scenario(real, fn, strength, fill, args.n_members, args.n_reference,
                                                     args.n_gen, rng)
        for _ in range(args.boot):       # the zoo's bootstrap draws, so later scenarios get the same draw
            rng.integers(0, len(y), len(y))
        if not zoo.scenario_wanted(name, strength, only):
            continue
        audit_mod._evidence = cap
        try:
            res = audit_membership(gen, cand, reference=ref, decision=args.decision)
        finally:
            audit_mod._evidence = orig
        pool = np.concatenate([cand, ref])
        explain.nearest = captured["nearest"]
        yy = y if fn is not None else np.zeros_like(y)
        rm = res.info["reference_removed"]
        print(f"\n# {name} {strength:g}: reference removed {rm}")
        explain(res, captured["ev"], pool, np.arange(len(cand), len(pool)), gen, cand, yy, copy,
                f"{name} {strength:g}", args.top)
        if args.save:
            os.makedirs(args.save, exist_ok=True)
            np.savez(os.path.join(args.save, f"{name.split()[0]}_{strength:g}.npz"), score=res.score,
                     null=res.null_scores, y=yy, copy=copy, **{f"ev_{k}": v for k, v in captured["ev"].items()})


def twins(args):
    from imprint.engine.membership.evidence import _knn, zscore_images
    real, _ = zoo.load_real_and_fillers(args.real, "none", 128)
    z = zscore_images(real).reshape(len(real), -1)
    npix = z.shape[1]
    d, i = _knn(z, z, 1, exclude_self=True)
    zm = zscore_images(real[:, :, ::-1]).reshape(len(real), -1)
    dm, im = _knn(z, zm, 2)
    dm = np.where(im[:, 0] == np.arange(len(real)), dm[:, 1], dm[:, 0])
    c = 1 - d[:, 0] / npix / 2
    cm = 1 - dm / npix / 2
    best = np.maximum(c, cm)
    ss = np.array([_ssim(real[a], real[int(i[a, 0])]) for a in range(len(real))])
    print(f"{len(real)} distinct real images; highest z-pixel correlation with another real image "
          f"(also mirrored): quantiles 50/90/99/max {np.quantile(best, .5):.3f} {np.quantile(best, .9):.3f} "
          f"{np.quantile(best, .99):.3f} {best.max():.3f}")
    for t in (0.8, 0.85, 0.9, 0.95, 0.98):
        print(f"  corr > {t}: {int((best > t).sum())} images")
    print(f"SSIM with the nearest (z-pixel) other real image: quantiles 50/90/99/max {np.quantile(ss, .5):.3f} "
          f"{np.quantile(ss, .9):.3f} {np.quantile(ss, .99):.3f} {ss.max():.3f}")
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        print(f"  SSIM > {t}: {int((ss > t).sum())} images")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    zoo.add_draw_args(ap, size=None)
    ap.add_argument("--only", default="none,identity,flip,shift:0.05,resynth sigma:3")
    ap.add_argument("--decision", default="fpr:0.01")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--save", default=None, help="folder: save scores and the pool's evidence per scenario")
    ap.add_argument("--twins", action="store_true")
    a = ap.parse_args()
    if a.twins:
        twins(a)
    else:
        run(a)


if __name__ == "__main__":
    main()
