"""The judged speed case before/after, same run: outputs compared bit for bit, registration stages timed.

The judged case (issue 13): 1,000 generated x 300 real with three dev sets (the dev corpus: target = gen_b's
generated images and 150 used + 150 unused of its reals; dev sets = gen_a, gen_b, gen_e; reference = their
unused images), registration on, as ``membership_zoo.py --timing``.  Each side runs in its own process on its
own code (``--before DIR``: a checkout of the code before, e.g. ``git archive main | tar -x -C DIR``; after =
this checkout), alternating, ``--repeat`` rounds; the best total per side is kept.  In each process the
registration's stage functions (``register.shortlists``, ``coarse_scores``, ``polish_lo``, ``refine``) are
wrapped by timers (summed over the target and the three dev pools) and the audit's scores, decisions and
every evidence array are saved; the table says whether the two sides' outputs are identical bit for bit.

Each side also records its process CPU seconds (all threads): on a shared, loaded machine the wall time of a side
that runs more threads gets a larger share of the cores, so the CPU column (work done) is reported beside the wall
ratio.  The stage timers are summed over the pools (with the pools on threads, branch spd8, they overlap in wall
time and their sum can exceed the total).

Usage::

    python benchmarks/bench_register.py --before /tmp/base [--repeat 2] [--write-results benchmarks/RESULTS.md]
        [--block judged-speed-spd8 --title "..."]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV = "/work/shared/corpus/dev"
STAGES = ("shortlists", "coarse_scores", "polish_lo", "refine")


def child(code: str, out: str, corpus: str, fresh: bool = False, knobs=None) -> None:
    """One audit of the judged case on the code in ``code``; arrays to ``out`` (.npz), timings to ``out``.json.
    ``knobs``: parsed arguments whose membership flags (``_membership_knobs``) are applied first."""
    sys.path.insert(0, code)
    import imprint  # noqa: F401  (this checkout's namespace)
    from imprint.engine.membership import DevSet, audit_membership
    from imprint.engine.membership import register as R

    sys.path.insert(0, os.path.join(HERE, "benchmarks"))
    if knobs is not None:
        from _membership_knobs import apply_membership_knobs

        on = apply_membership_knobs(knobs)
        if on:
            print("after side: " + ", ".join(on), flush=True)
    from membership_zoo import load_folder

    import threading

    spent = {s: 0.0 for s in STAGES}
    lock = threading.Lock()

    def timed(name, fn):
        def f(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                with lock:
                    spent[name] += time.perf_counter() - t0
        return f

    for s in STAGES:
        setattr(R, s, timed(s, getattr(R, s)))
    gens = ("gen_a", "gen_b", "gen_e")
    d = {g: {p: load_folder(f"{corpus}/membership/{g}/{p}", 128) for p in ("generated", "real/used", "real/unused")}
         for g in gens}
    devs = [DevSet(g, d[g]["generated"], d[g]["real/used"], d[g]["real/unused"]) for g in gens]
    real = np.concatenate([d["gen_b"]["real/used"][:150], d["gen_b"]["real/unused"][:150]])
    ref = np.concatenate([d[g]["real/unused"] for g in gens])
    target = d["gen_b"]["generated"]
    if fresh:
        # as membership_zoo.py --timing --fresh-target: the target rotated by 90 degrees shares no content with
        # the dev pools or the reference (a held-out audit), so the per-content memos do not flatter it
        target = np.ascontiguousarray(np.rot90(target, 1, axes=(1, 2)))
        real = np.ascontiguousarray(np.rot90(real, 1, axes=(1, 2)))
    l0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    res = audit_membership(target, real, dev_sets=devs, reference=ref)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    arrays = {"score": res.score, "used": res.used, "null_scores": res.null_scores}
    arrays.update({f"ev_{k}": v for k, v in res.evidence.items()})
    np.savez(out, **arrays)
    with open(out + ".json", "w") as fh:
        json.dump({"total_s": total, "cpu_s": cpu, "stages": spent, "register_s": res.info["timings"].get("register_s"),
                   "load": max(l0, os.getloadavg()[0]), "load0": l0, "module": R.__file__}, fh)


def run_side(code: str, tmp: str, tag: str, corpus: str, fresh: bool = False, knob_argv=()) -> tuple[dict, str]:
    out = os.path.join(tmp, f"{tag}.npz")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", code, "--out", out, "--corpus", corpus]
    cmd += ["--fresh-target"] if fresh else []
    cmd += list(knob_argv)
    subprocess.run(cmd, check=True, cwd=tmp)
    with open(out + ".json") as fh:
        return json.load(fh), out


def same(a: str, b: str) -> tuple[bool, list]:
    x, y = np.load(a), np.load(b)
    diff = sorted(set(x.files) ^ set(y.files))
    diff += [k for k in sorted(set(x.files) & set(y.files)) if not np.array_equal(x[k], y[k], equal_nan=True)]
    return not diff, diff


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="checkout of the code before (e.g. git archive main | tar -x -C DIR)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--corpus", default=DEV)
    ap.add_argument("--write-results", default=None, metavar="RESULTS.md")
    ap.add_argument("--block", default="judged-speed-spd6", help="the RESULTS.md block to write")
    ap.add_argument("--title", default="The judged speed case before/after, same run (issue 13, branch spd6)")
    ap.add_argument("--fresh-target", action="store_true",
                    help="the target's generated and real images rotated by 90 degrees (no content shared with the "
                         "dev pools, as in a held-out audit; the honest judged case)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    sys.path.insert(0, os.path.join(HERE, "benchmarks"))
    from _membership_knobs import MEMBERSHIP_KNOBS, add_membership_knobs

    add_membership_knobs(ap)        # opt-in levers: applied to the after side only (the before side: its code as is)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child, a.out, a.corpus, a.fresh_target, knobs=a)
        return
    knob_argv = []
    for dest, (flag, *_rest) in MEMBERSHIP_KNOBS.items():
        v = getattr(a, dest, None)
        if v is True:
            knob_argv.append(flag)
        elif v is not None and v is not False:
            knob_argv += [flag, str(v)]
    if not a.before:
        ap.error("--before DIR is required")
    sides = {"before": os.path.abspath(a.before), "after": HERE}
    best: dict = {}
    allt: dict = {}
    outs: dict = {}
    loads = []
    with tempfile.TemporaryDirectory(prefix="bench_register_") as tmp:
        for r in range(a.repeat):
            for tag, code in sides.items():
                t, out = run_side(code, tmp, f"{tag}{r}", a.corpus, a.fresh_target,
                                  knob_argv if tag == "after" else ())
                loads.append(t["load"])
                print(f"round {r + 1} {tag}: total {t['total_s']:.1f} s, cpu {t.get('cpu_s', float('nan')):.1f} s, register_s {t['register_s']:.1f} s, "
                      + ", ".join(f"{k} {v:.1f}" for k, v in t["stages"].items()) + f"; load {t['load']:.1f}",
                      flush=True)
                allt.setdefault(tag, []).append(t)
                if tag not in best or t["total_s"] < best[tag]["total_s"]:
                    best[tag] = t
                outs.setdefault(tag, []).append(out)
        ok, diff = same(outs["before"][-1], outs["after"][-1])
        # each side against its own first round: a side whose rounds differ is not deterministic (the before /
        # after difference alone, e.g. a change that is meant to change values, is reported as DIFFERENT only)
        ok_all = all(same(outs["after"][0], o)[0] for o in outs["after"][1:])
        ok_all = ok_all and all(same(outs["before"][0], o)[0] for o in outs["before"][1:])
    b, f = best["before"], best["after"]
    cb = min(x["cpu_s"] for x in allt["before"])
    cf = min(x["cpu_s"] for x in allt["after"])
    rows = [("total (audit_membership), wall", b["total_s"], f["total_s"]),
            ("total, process CPU s (all threads; best of the rounds)", cb, cf),
            ("registration (info register_s, target pool)", b["register_s"], f["register_s"])]
    rows += [(f"register.{s} (all four pools)", b["stages"][s], f["stages"][s]) for s in STAGES]
    lines = [f"### {a.title}", "",
             f"Command: `python benchmarks/bench_register.py --before DIR --repeat {a.repeat}"
             + (f" --write-results {os.path.relpath(a.write_results, HERE)}" if a.write_results else "")
             + (" --fresh-target" if a.fresh_target else "") + "".join(" " + x for x in knob_argv)
             + (f" --block {a.block}`" if a.block != "judged-speed-spd6" else "`")
             + ". 1,000 generated x 300 real, three dev sets, registration on; each side in its own process on its own "
             f"code, alternating, best of {a.repeat} totals (the stage columns are that run's). Outputs (scores, "
             f"decisions, null scores, every evidence array): **{'identical bit for bit' if ok else 'DIFFERENT: ' + ', '.join(diff)}**"
             f"{'' if ok_all else ' (a side differed between its own rounds)'}.",
             f"Load average during the runs: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores "
             "(shared machine: absolute seconds are pessimistic; the ratio is the figure; under load a side running "
             "more threads also gets a larger share of the cores, so read the wall ratio with the CPU row).", "",
             "| stage | before s | after s | before / after |", "|---|---|---|---|"]
    for name, x, y in rows:
        lines.append(f"| {name} | {x:.1f} | {y:.1f} | {x / max(y, 1e-9):.2f} |")
    md = "\n".join(lines)
    print(md)
    if a.write_results:
        sys.path.insert(0, HERE)
        from imprint.engine.bench import write_results_block

        write_results_block(a.write_results, a.block, md)


if __name__ == "__main__":
    main()
