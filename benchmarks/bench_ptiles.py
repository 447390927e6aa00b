"""CPU cost of the partial-copy channel (``ptiles.ptile_evidence``, opt-in ``PTILE_CHANNEL``) at the judged speed
case's scale: the four evidence jobs of one judged audit (``bench_register.py --fresh-target``): the target (gen_b's
1,000 generated images rotated 90 deg x the pool of its 300 real rotated alike + the 460 reference images) and the
three dev pools (gen_a / gen_b / gen_e: their pool x their 1,000 generated).  Each job's ``process_time`` (all
threads) and wall time, split into the source (``tile_scores``) and the tile peaks (``pair_values``); best of
``--repeat``.  ``--check DIR``: also run the code of another checkout (e.g. ``git archive main | tar -x -C DIR`` of a
commit with the channel) in a child process on the same jobs and compare the outputs (``ptile_ratio``, ``ptile_val``,
``ptile_real_val``, ``ptile_match``): max abs difference and identical matches.

Usage::

    python benchmarks/bench_ptiles.py [--jobs target,gen_a,gen_b,gen_e] [--repeat 1] [--check DIR] [--save F.npz]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV = "/work/shared/corpus/dev"


def judged_jobs(names):
    sys.path.insert(0, os.path.join(HERE, "benchmarks"))
    from membership_zoo import load_folder
    from imprint.engine.membership import DevSet
    from imprint.engine.membership.audit import _dev_pool

    gens = ("gen_a", "gen_b", "gen_e")
    d = {g: {p: load_folder(f"{DEV}/membership/{g}/{p}", 128) for p in ("generated", "real/used", "real/unused")}
         for g in gens}
    devs = [DevSet(g, d[g]["generated"], d[g]["real/used"], d[g]["real/unused"]) for g in gens]
    real = np.concatenate([d["gen_b"]["real/used"][:150], d["gen_b"]["real/unused"][:150]])
    real = np.ascontiguousarray(np.rot90(real, 1, axes=(1, 2)))
    ref = np.concatenate([d[g]["real/unused"] for g in gens])
    jobs = []
    if "target" in names:
        jobs.append(("target", np.ascontiguousarray(np.rot90(d["gen_b"]["generated"], 1, axes=(1, 2))),
                     np.concatenate([real, ref])))
    for dv in devs:
        if dv.name in names:
            p = _dev_pool(dv, ref, [np.asarray(o.unused) for o in devs if o is not dv])
            jobs.append((dv.name, dv.generated, p[2]))
    return jobs


def run(code, names, repeat, save):
    sys.path.insert(0, code)
    import imprint  # noqa: F401  (this checkout's namespace)
    import imprint.engine.membership.ptiles as M

    clk = {"tile_scores": 0.0, "pair_values": 0.0}
    for name in clk:
        f = getattr(M, name)

        def wrap(*a, _f=f, _n=name, **k):
            t = time.process_time()
            try:
                return _f(*a, **k)
            finally:
                clk[_n] += time.process_time() - t
        setattr(M, name, wrap)
    out = {}
    tot = 0.0
    print(f"code {code}, load {os.getloadavg()[0]:.1f}", flush=True)
    for name, G, P in judged_jobs(names):
        best = None
        for _ in range(repeat):
            for k in clk:
                clk[k] = 0.0
            t0, w0 = time.process_time(), time.perf_counter()
            r = M.ptile_evidence(G, P)
            row = (time.process_time() - t0, time.perf_counter() - w0, clk["tile_scores"], clk["pair_values"])
            best = row if best is None or row[0] < best[0] else best
        tot += best[0]
        for k, v in r.items():
            out[f"{name}/{k}"] = np.asarray(v)
        print(f"{name}: {len(G)} generated x {len(P)} pool: {best[0]:.1f} CPU-s ({best[1]:.1f} s wall); "
              f"source {best[2]:.1f}, tile peaks {best[3]:.1f}", flush=True)
    print(f"total {tot:.1f} CPU-s (load {os.getloadavg()[0]:.1f})", flush=True)
    if save:
        np.savez(save, **out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", default="target,gen_a,gen_b,gen_e")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--check", default=None, help="another checkout whose outputs to compare")
    ap.add_argument("--save", default=None)
    ap.add_argument("--_code", default=HERE, help=argparse.SUPPRESS)
    a = ap.parse_args()
    names = a.jobs.split(",")
    if a.check:
        with tempfile.TemporaryDirectory() as td:
            f = os.path.join(td, "before.npz")
            subprocess.run([sys.executable, os.path.abspath(__file__), "--jobs", a.jobs, "--repeat", str(a.repeat),
                            "--save", f, "--_code", os.path.abspath(a.check)], check=True)
            before = dict(np.load(f))
    out = run(a._code, names, a.repeat, a.save)
    if a.check:
        for k in sorted(out):
            x, y = out[k], before[k]
            if k.endswith("ptile_match"):
                print(f"{k}: {int((x == y).sum())}/{len(x)} identical")
            else:
                print(f"{k}: max |diff| {np.nanmax(np.abs(x - y)):.2e}, identical {bool(np.array_equal(x, y))}")


if __name__ == "__main__":
    main()
