"""Where an elastic / combined copy drops out of the registered anatomy evidence's candidates (issue 13, elsrc13).

For the zoo's scenarios **with the zoo's own draws** (the full scenario sequence is drawn, ``--boot`` bootstrap
draws skipped after each, exactly as ``membership_zoo.py --only`` does), every member's copy is followed through the
registered anatomy evidence's stages on the generated side:

* ``shortlist``: the copy is among the registration shortlist's candidates (:func:`register.shortlists`);
* ``low-pass``: among the low-pass source's (:func:`register.lowpass_candidates`, generated side);
* ``union``: among the candidates the anatomy evidence registers;
* ``polished``: among the row's ``anatomy.N_POLISH`` coarse-best candidates (only those are polished), plus, with the
  coarse source on, its first candidate (forced, ``register.LP_COARSE_FORCE``);
* ``flow top``: among the row's ``deform.FLOW_TOP`` best polished candidates (those get the flow channel) or the
  coarse source's forced candidate (``register.LP_COARSE_FORCE``);
* ``best``: the rigid registered best candidate;
* ``coarse top K``: among the row's ``deform.FLOW_PICK_K`` coarse-best candidates (branch elas14);
* ``picked``: among the ``deform.FLOW_TOP`` best of those by the cheap non-rigid score
  (``deform.cheap_flow_ncc``), or the forced one: the candidates that get the flow with ``deform.FLOW_PICK`` on.

No audit is run (fast).  ``--coarse`` turns the opt-in coarse low-pass source (``register.LP_K_COARSE``) on;
``--both`` prints both rows.  A measurement: nothing is tuned on it.

    python benchmarks/elastic_candidates.py --seed 2 --boot 200 --only "elastic,resynth 3 + geom,identity,rotate"
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import membership_zoo as mz  # noqa: E402
from imprint.engine.membership import anatomy as anat  # noqa: E402
from imprint.engine.membership import deform  # noqa: E402
from imprint.engine.membership import register as reg  # noqa: E402


def stages(gen, cand, ref, copy, nm):
    P, iG, iR = mz._pool_pixel_neighbours(gen, cand, ref)
    cg = reg.shortlists(gen, P, iG, iR)[0][:nm]
    lg = reg.lowpass_candidates(gen, P[:nm], control=False)[0]
    un = np.concatenate([cg, lg], 1)
    m = np.arange(nm)
    ins, inl = (cg == copy[:, None]).any(1), (lg == copy[:, None]).any(1)
    lowP, lowG = anat._lowpass_rows(P[:nm]), anat._lowpass_rows(gen)
    pol = np.zeros(nm, bool)
    ftop = np.zeros(nm, bool)
    best = np.zeros(nm, bool)
    topk = np.zeros(nm, bool)
    picked = np.zeros(nm, bool)
    for i in np.flatnonzero(ins | inl):
        u = []
        for v in un[i]:                                   # registered_anatomy's order: first occurrence kept
            if v >= 0 and v not in u:
                u.append(int(v))
        u = np.asarray(u, np.int64)
        pairs = np.stack([np.full(len(u), i), u], 1)
        co = anat._coarse_in_blocks(lowP, lowG, pairs)
        sc = np.asarray(co["coarse"], np.float64).copy()
        forced = -1
        kc = reg.LP_K_COARSE if reg.LP_COARSE_FORCE else 0
        if kc:                      # the coarse source's first candidate: always polished and flowed
            fc = [v for v in lg[i, lg.shape[1] - kc:] if v >= 0]
            if fc:
                forced = int(fc[0])
                sc[np.flatnonzero(u == forced)[0]] = anat._FORCED
        tk = np.argsort(-sc, kind="stable")[:anat._pick_k(len(u))]     # deform.FLOW_PICK's candidates (elas14)
        if copy[i] in u[tk]:
            topk[i] = True
            cv = anat._cheap_pairs(lowP, lowG, pairs[tk], {k: np.asarray(co[k])[tk] for k in anat._CO_KEYS})["cflow"]
            oc = np.argsort(-cv, kind="stable")
            picked[i] = copy[i] in u[tk][oc[:deform.FLOW_TOP]] or copy[i] == forced
        top = np.argsort(-sc, kind="stable")[:anat.N_POLISH + (forced >= 0)]
        if copy[i] not in u[top]:
            continue
        pol[i] = True
        po = anat._polished_pairs(lowP, lowG, pairs, co, top, anat.POLISH_ROUNDS)
        order = np.argsort(-np.asarray(po["ncc"]), kind="stable")
        ftop[i] = copy[i] in u[top][order[:deform.FLOW_TOP]] or copy[i] == forced
        best[i] = u[top][order[0]] == copy[i]
    ncand = np.mean([len(set(r[r >= 0].tolist())) for r in un])
    return ins, inl, ins | inl, pol, ftop, best, topk, picked, ncand


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mz.add_draw_args(ap, seed=2)
    ap.add_argument("--only", required=True)
    ap.add_argument("--coarse", action="store_true", help="the coarse low-pass source on (register.LP_K_COARSE)")
    ap.add_argument("--both", action="store_true", help="off and on, one row each")
    ap.add_argument("--mode", default=None, help="register.LP_COARSE_MODE (frame / grid)")
    ap.add_argument("--sigma", type=float, default=None, help="register.LP_COARSE_SIGMA")
    ap.add_argument("--k", type=int, default=None, help="register.LP_K_COARSE_ON")
    a = ap.parse_args(argv)
    if a.mode is not None:
        reg.LP_COARSE_MODE = a.mode
    if a.sigma is not None:
        reg.LP_COARSE_SIGMA = a.sigma
    if a.k is not None:
        reg.LP_K_COARSE_ON = a.k
    rng = np.random.default_rng(a.seed)
    real, fill_imgs = mz.load_inputs(a)
    nm, nref = a.n_members, a.n_reference
    confs = [False, True] if a.both else [a.coarse]
    keep = reg.LP_K_COARSE
    print(f"# seed {a.seed}, boot {a.boot}; {nm} members, {nref} reference, {a.n_gen} generated; "
          f"N_POLISH {anat.N_POLISH}, FLOW_TOP {deform.FLOW_TOP}; coarse source (on): {reg.LP_K_COARSE_ON} candidates, "
          f"mode {reg.LP_COARSE_MODE}, sigma {reg.LP_COARSE_SIGMA:g} grid px")
    print("| scenario | strength | coarse source | shortlist | low-pass | union | polished | flow top | best | "
          f"coarse top {deform.FLOW_PICK_K} | picked (cheap flow top {deform.FLOW_TOP}) | candidates per row | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, fn, strength in mz.scenarios(False, real):
        gen, cand, ref, y, copy = mz.build_scenario(real, fn, strength, fill_imgs, nm, nref, a.n_gen, rng)
        for _ in range(a.boot):
            rng.integers(0, len(y), len(y))
        if fn is None or not mz.scenario_wanted(name, strength, a.only.split(",")):
            continue
        for on in confs:
            reg.LP_K_COARSE = reg.LP_K_COARSE_ON if on else 0
            try:
                t0 = time.perf_counter()
                r = stages(gen, cand, ref, copy, nm)
            finally:
                reg.LP_K_COARSE = keep
            cells = " | ".join(f"{v.mean():.2f}" for v in r[:8])
            print(f"| {name} | {strength:g} | {'on' if on else 'off'} | {cells} | {r[8]:.1f} | "
                  f"{time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
