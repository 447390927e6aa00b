"""Where the unsupervised mode's threshold sits against the non-members (issue 13, branch uns13).

Captures, for zoo scenarios (``--setting unsupervised`` draws) and the dev leave-one-generator-out cases, the
audit's unsupervised inputs at the point where they are combined (``audit.pair_null_scores``: the candidates' and
the real-to-real null rows' channel matrix ``Z``, weights, max-rule mask, the real image of every null row) with
the candidates' labels, and saves them (``.npz``, plain arrays) so that every analysis below runs offline:

* per channel and for the combined score: the null's upper quantiles next to the non-members' (robust z);
* the null rows split by whether the real image that plays the non-member is a member or a non-member of the
  candidates (do members, half of the folder, make the null higher?);
* the empirical null's fit (loc, scale, pi0) against an oracle fit on the non-members alone.

Usage::

    python benchmarks/membership_uns_diag.py capture --out /tmp/uns13/zoo_s2.npz --zoo-seed 2 --boot 200 \
        --only "none,identity,resynth sigma:3,..."
    python benchmarks/membership_uns_diag.py capture --out /tmp/uns13/loo.npz --gens gen_e,gen_b,gen_a
    python benchmarks/membership_uns_diag.py report [--table | --anchor] /tmp/uns13/zoo_s2.npz [/tmp/uns13/loo.npz ...]

All dev figures are in-sample for the constants chosen on dev earlier; the zoo is a measurement.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from imprint.engine.membership import audit_membership  # noqa: E402
from imprint.engine.membership import audit as _audit  # noqa: E402


def _hooked(run, label_of):
    """Run ``run()`` with ``audit.pair_null_scores`` wrapped; return the captured inputs (one dict per audit)."""
    got: list = []
    orig = _audit.pair_null_scores

    def pn(Z, null_mask, w, use_max, **kw):
        got.append(dict(Z=np.array(Z), null=np.array(null_mask), w=np.array(w), mx=np.array(use_max),
                        groups=np.array(kw.get("null_groups")), y=np.array(label_of())))
        return orig(Z, null_mask, w, use_max, **kw)

    _audit.pair_null_scores = pn
    try:
        names = run()
    finally:
        _audit.pair_null_scores = orig
    return names, got


def capture_zoo(a) -> tuple[list, list]:
    import membership_zoo as mz

    cur: dict = {}
    orig_build = mz.build_scenario

    def build(*args, **k):
        out = orig_build(*args, **k)
        cur["y"] = out[3]
        return out

    def run():
        mz.build_scenario = build
        try:
            ns = argparse.Namespace(real=mz.DEV, fillers="dev", size=128, n_members=60, n_reference=300, n_gen=1000,
                                    boot=a.boot, seed=a.zoo_seed, quick=False, cache_dir=None, only=a.only,
                                    compare=False, setting="unsupervised")
            rows = mz.run(ns)
        finally:
            mz.build_scenario = orig_build
        return [f"zoo s{a.zoo_seed} {r['transform']} {r['strength']}" for r in rows]

    return _hooked(run, lambda: cur["y"])


def capture_loo(a) -> tuple[list, list]:
    from membership_loo import load

    root = os.path.join(a.corpus, "membership")
    cur: dict = {}

    def run():
        names = []
        for g in a.gens.split(","):
            used, unused = load(f"{root}/{g}/real/used"), load(f"{root}/{g}/real/unused")
            gen = load(f"{root}/{g}/generated")
            cur["y"] = np.r_[np.ones(len(used), int), np.zeros(len(unused), int)]
            audit_membership(gen, np.concatenate([used, unused]), backbone=None, cache_dir=a.cache_dir)
            names.append(f"loo {g}")
            print(names[-1], flush=True)
        return names

    return _hooked(run, lambda: cur["y"])


def save(path, names, got):
    arrs = {f"{i}_{k}": v for i, g in enumerate(got) for k, v in g.items()}
    np.savez(path, names=np.array(names), **arrs)


def load_captures(path: str) -> list[dict]:
    f = np.load(path, allow_pickle=False)
    return [dict(name=str(nm), **{k: f[f"{i}_{k}"] for k in ("Z", "null", "w", "mx", "groups", "y")})
            for i, nm in enumerate(f["names"])]


def main(argv=None):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import membership_zoo as mz

    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capture")
    c.add_argument("--out", required=True)
    c.add_argument("--zoo-seed", type=int, default=None)
    c.add_argument("--boot", type=int, default=200)
    mz.add_draw_flag(c)
    c.add_argument("--only", default=None)
    c.add_argument("--gens", default=None)
    c.add_argument("--corpus", default="/work/shared/corpus/dev")
    c.add_argument("--cache-dir", default=None)
    r = sub.add_parser("report")
    r.add_argument("paths", nargs="+")
    r.add_argument("--table", action="store_true", help="one markdown row per capture instead of the per-channel report")
    r.add_argument("--anchor", action="store_true", help="main's empirical null against the median-anchored one "
                   "(calibrate.EMPIRICAL_NULL_ANCHOR, branch uns14), one markdown row per capture")
    a = ap.parse_args(argv)
    if a.cmd == "capture":
        names, got = capture_zoo(a) if a.zoo_seed is not None else capture_loo(a)
        save(a.out, names, got)
        return
    import uns_report

    (uns_report.anchor_table if a.anchor else uns_report.table if a.table else uns_report.main)(a.paths)


if __name__ == "__main__":
    main()
