"""Cost of the anatomy evidence (``anat_ratio``, engine/membership/anatomy.py) on the judged speed case.

The case of ``membership_zoo.py --timing``: 1,000 generated (dev gen_b) x 300 real (150 used + 150 unused of
gen_b) with three dev sets (gen_a, gen_b, gen_e) and their unused images as the reference.  The audit is run
with the anatomy evidence on and off (``audit._evidence`` with ``anatomy=False`` = the evidence before the
channel existed), alternating, best of ``--repeat`` each, no evidence cache between runs; on a shared machine
the same-run ratio is the figure to use.

Usage::

    python benchmarks/membership_anatomy_timing.py [--repeat 2] [--registered]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from membership_zoo import DEV, load_folder  # noqa: E402

from imprint.engine.membership import DevSet, audit_membership  # noqa: E402
from imprint.engine.membership import audit as audit_mod  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--registered", action="store_true",
                    help="instead: the anatomy evidence registered on the shortlist (on) vs in place only (off, "
                         "anatomy.REGISTERED = False: the channel before branch resyn6)")
    a = ap.parse_args(argv)
    from imprint.engine.membership import anatomy as anat_mod
    gens = ("gen_a", "gen_b", "gen_e")
    d = {g: {p: load_folder(f"{DEV}/membership/{g}/{p}", 128) for p in ("generated", "real/used", "real/unused")}
         for g in gens}
    devs = [DevSet(g, d[g]["generated"], d[g]["real/used"], d[g]["real/unused"]) for g in gens]
    real = np.concatenate([d["gen_b"]["real/used"][:150], d["gen_b"]["real/unused"][:150]])
    ref = np.concatenate([d[g]["real/unused"] for g in gens])
    orig = audit_mod._evidence
    best = {True: np.inf, False: np.inf}
    try:
        for _ in range(a.repeat):
            for on in (False, True):
                if a.registered:
                    anat_mod.REGISTERED = on
                else:
                    audit_mod._evidence = functools.partial(orig, anatomy=on)
                t0 = time.perf_counter()
                audit_membership(d["gen_b"]["generated"], real, dev_sets=devs, reference=ref)
                dt = time.perf_counter() - t0
                best[on] = min(best[on], dt)
                print(f"anatomy {'on ' if on else 'off'}: {dt:.1f} s", flush=True)
    finally:
        audit_mod._evidence = orig
        anat_mod.REGISTERED = True
    print(f"best of {a.repeat}: anatomy on {best[True]:.1f} s, off {best[False]:.1f} s, ratio on/off "
          f"{best[True] / best[False]:.3f}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
