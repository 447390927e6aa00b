"""Per-member diagnostic of the zoo's combined augmentation (issue 13, branch aug5).

Replays the zoo's random stream (same seed, same draw order as ``membership_zoo.py``: every scenario is built,
then the bootstrap's draws are consumed), records the parameters ``t_augment`` drew for every member's copy
(flip, rotation, scale, shift, gamma; the rng is wrapped, so the draws are the zoo's), runs
``audit_membership`` on the chosen scenario and classifies every member:

* ``not shortlisted``  the true copy is not among the registration candidates;
* ``not picked``       shortlisted, but another candidate was registered as the best match;
* ``mis-registered``   picked, but the transform the audit reported is off (angle > 2 deg, scale > 0.03 or shift > 2 px
                       from the truth) and the oracle NCC (warp with the true transform) beats the achieved one
                       by > 0.01;
* ``weak evidence``    picked and registered, but the score is under the threshold (control / null too close);
* ``flagged``.

Also prints, per member, what :func:`register.register_pairs` (coarse + refine, without the audit's candidate
polish) makes of the true pair, and whether its coarse stage picked the right flip.

Usage::

    python benchmarks/augment_diag.py --only "augment (all):1" [--seed 0] [--verbose]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import membership_zoo as zoo  # noqa: E402
from imprint.engine.membership import audit as audit_mod  # noqa: E402
from imprint.engine.membership import audit_membership  # noqa: E402
from imprint.engine.membership import register as reg  # noqa: E402


class _Recorder:
    """Forwards ``random``, ``choice``, ``uniform`` (and anything else) to a Generator, logging the values."""

    def __init__(self, rng):
        self._rng = rng
        self.log = []

    def __getattr__(self, name):
        f = getattr(self._rng, name)

        def call(*a, **k):
            v = f(*a, **k)
            self.log.append(v)
            return v
        return call


def recording_augment(params: list):
    """A ``t_augment`` that draws exactly the zoo's values and appends (flip, angle, scale, dy, dx, log gamma)."""
    def fn(x, s, rng):
        r = _Recorder(rng)
        y = zoo.t_augment(x, s, r)
        L = r.log
        flip = L[0] < 0.5
        off = 1
        ang = float(L[off] * L[off + 1])
        sc = 1.0 + float(L[off + 2] * L[off + 3])
        th, m = float(L[off + 4]), float(L[off + 5]) * x.shape[0]   # t_shift: fraction of the side
        lg = float(L[off + 6] * L[off + 7])
        params.append((float(flip), ang, sc, m * np.sin(th), m * np.cos(th), lg))
        return y
    return fn


def oracle_ncc(A, B, pairs, p):
    """Full-resolution NCC on the overlap of the pairs warped with parameters ``p`` [K, 5]."""
    Bf = np.asarray(B[pairs[:, 1]], np.float32)
    w, v = reg.warp(A, pairs[:, 0], p[:, 0], p[:, 1], p[:, 2], p[:, 3], p[:, 4])
    return reg._masked_ncc(w, Bf, v)[0]


def run(args):
    rng = np.random.default_rng(args.seed)
    real, fill = zoo.load_real_and_fillers(args.real, args.fillers, 128)
    only = [w for w in args.only.split(",") if w]
    captured = {}
    orig = audit_mod._evidence

    def cap(G, pool, **kw):
        out = orig(G, pool, **kw)
        captured["ev"] = out[0]
        return out

    for name, fn, strength in zoo.scenarios(args.quick, real):
        params: list = []
        want = zoo.scenario_wanted(name, strength, only)
        f = recording_augment(params) if (want and fn is zoo.t_augment) else fn
        nm, nref, ngen, nboot = args.n_members, args.n_reference, args.n_gen, args.boot
        gen, cand, ref, y, copy = zoo.build_scenario(real, f, strength, fill, nm, nref, ngen, rng)
        for _ in range(nboot):
            rng.integers(0, len(y), len(y))
        if not want:
            continue
        t0 = time.perf_counter()
        audit_mod._evidence = cap
        try:
            res = audit_membership(gen, cand, reference=ref)
        finally:
            audit_mod._evidence = orig
        ev = captured["ev"]
        P = np.concatenate([cand, ref])
        m = np.arange(nm)
        pairs = np.stack([m, copy], 1)
        truth = np.asarray(params) if params else None
        # the true pair through the registration, its coarse stage, and with the true transform
        true = reg.register_pairs(P, gen, pairs)
        co = reg.coarse_scores(P, gen, pairs)
        # shortlist membership: the shortlists of the audit (same pixel neighbours as evidence.py)
        from imprint.engine.membership.evidence import _knn, zscore_images
        zP = zscore_images(P).reshape(len(P), -1)
        zG = zscore_images(gen).reshape(len(gen), -1)
        _, iG = _knn(zG, zP, 10)
        _, iR = _knn(zP, zP, 10, exclude_self=True)
        cg, fcg, cr, fcr = reg.shortlists(gen, P, iG, iR)
        ins = (cg[m] == copy[:, None]).any(1)
        picked = ev["reg_match"][m].astype(np.int64) == copy
        flagged = res.used[m].astype(bool)
        cls = np.empty(nm, object)
        print(f"\n# {name} {strength:g} seed {args.seed}: threshold {res.threshold:.2f}; "
              f"flagged {flagged.sum()}/{nm} members, {int(res.used[nm:].sum())}/{nm} non-members; "
              f"{time.perf_counter() - t0:.0f} s")
        if truth is not None:
            # sign conventions: ndi.rotate's positive angle is counter-clockwise as displayed, as in warp
            onc = oracle_ncc(P, gen, pairs, truth)
            err_a = np.abs(true["angle"] - truth[:, 1])
            err_s = np.abs(true["scale"] - truth[:, 2])
            err_t = np.hypot(true["dy"] - truth[:, 3], true["dx"] - truth[:, 4])
            flip_ok = true["flip"] == truth[:, 0]
            coarse_flip_ok = co["flip"] == truth[:, 0]
            # the class uses the transform the audit reported for its registered match (coarse, polish, refine)
            ea = np.abs(ev["reg_angle"][m] - truth[:, 1])
            es = np.abs(ev["reg_scale"][m] - truth[:, 2])
            et = np.hypot(ev["reg_dy"][m] - truth[:, 3], ev["reg_dx"][m] - truth[:, 4])
            off = (ev["reg_flip"][m] != truth[:, 0]) | (ea > 2) | (es > 0.03) | (et > 2)
            misreg = off & (onc > ev["reg_ncc"][m] + 0.01)
        else:
            onc = np.full(nm, np.nan)
            misreg = np.zeros(nm, bool)
            err_a = err_s = err_t = np.full(nm, np.nan)
            flip_ok = coarse_flip_ok = np.ones(nm, bool)
        for j in range(nm):
            cls[j] = ("flagged" if flagged[j] else "not shortlisted" if not ins[j] else "not picked" if not picked[j]
                      else "mis-registered" if misreg[j] else "weak evidence")
        print("| class | members |\n|---|---|")
        for c in ("flagged", "not shortlisted", "not picked", "mis-registered", "weak evidence"):
            print(f"| {c} | {int((cls == c).sum())} |")
        print(f"true pair: coarse flip right {coarse_flip_ok.mean():.2f}, refined flip right {flip_ok.mean():.2f}; "
              f"|angle err| median {np.nanmedian(err_a):.2f} deg (>2: {(err_a > 2).sum()}), |scale err| median "
              f"{np.nanmedian(err_s):.3f} (>0.03: {(err_s > 0.03).sum()}), shift err median {np.nanmedian(err_t):.2f} px "
              f"(>2: {(err_t > 2).sum()}); NCC achieved median {np.median(true['ncc']):.3f}, oracle "
              f"{np.nanmedian(onc):.3f}; audit's transform mis-registered (picked members, incl. flagged) "
              f"{int((misreg & picked).sum())}")
        print(f"picked = copy {picked.mean():.2f}; in shortlist {ins.mean():.2f}")
        if args.verbose or True:
            print("| member | class | score | truth flip/ang/scale/dy/dx/logg | true pair refined flip/ang/scale/dy/dx "
                  "| coarse flip/ang/sc | NCC true pair / oracle | picked NCC / control NCC | reg_lo_ratio |")
            print("|---|---|---|---|---|---|---|---|---|")
            for j in range(nm):
                if cls[j] == "flagged" and not args.verbose:
                    continue
                t = truth[j] if truth is not None else np.full(6, np.nan)
                print(f"| {j} | {cls[j]} | {res.score[j]:.2f} | {t[0]:.0f}/{t[1]:.1f}/{t[2]:.3f}/{t[3]:.1f}/{t[4]:.1f}/"
                      f"{t[5]:.2f} | {true['flip'][j]}/{true['angle'][j]:.1f}/{true['scale'][j]:.3f}/"
                      f"{true['dy'][j]:.1f}/{true['dx'][j]:.1f} | {co['flip'][j]:.0f}/{co['angle'][j]:.0f}/"
                      f"{co['scale'][j]:.2f} | {true['ncc'][j]:.3f} / {onc[j]:.3f} | {ev['reg_ncc'][j]:.3f} / "
                      f"{ev['reg_real_ncc'][j]:.3f} | {ev['reg_lo_ratio'][j]:.2f} |")
        if args.save:
            np.savez(args.save, truth=truth if truth is not None else np.zeros(0), score=res.score,
                     null=res.null_scores, copy=copy, cls=cls.astype(str),
                     **{f"true_{k}": np.asarray(v) for k, v in true.items()})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    zoo.add_draw_args(ap, size=None)
    ap.add_argument("--quick", action="store_true", help="the zoo's --quick draw (40 members, 150 reference, 400 generated)")
    ap.add_argument("--only", default="augment (all):1")
    ap.add_argument("--verbose", action="store_true", help="also list the flagged members")
    ap.add_argument("--save", default=None, help=".npz with the per-member results")
    a = ap.parse_args(argv)
    if a.quick:
        for k, v in dict(n_members=40, n_reference=150, n_gen=400, boot=200).items():
            if getattr(a, k) == ap.get_default(k):
                setattr(a, k, v)
    run(a)


if __name__ == "__main__":
    main()
