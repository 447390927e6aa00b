"""Issue 15 (mem11): where the real-to-real pair null's memory goes at 10k real images, and before/after.

Two modes, each running the code of a checkout (``--root``, default this one) in a fresh process:

* ``--splits R`` (with ``--before CHECKOUT``): :func:`anatomy.anatomy_pair_values_splits` alone at the 10k pair null's
  shape: the first R phantom real images of the scaling benchmark (``bench_scaling.py --data DIR``, folder
  ``realR``), 2,000 sampled rows, 52 random candidates each (the pair null's shortlist width at share 0.25: 24 + 12 +
  16), 6 splits.  Prints the peak RSS above the process's RSS before the call (a 0.02 s sampler), the CPU-s, and
  whether the two sides' values are identical bit for bit.
* ``--trace REAL_DIR GEN_DIR OUT``: ``run_membership`` with an RSS tracer (every 0.05 s): at each new peak 25 MB above
  the last one logged, the main thread's imprint frames; every 5 s the RSS and CPU-s.  JSON lines to ``--log``.

    python benchmarks/pair_null_memory.py --splits 10000 --data /tmp/mem11/data --before /tmp/mem11/main
    python benchmarks/pair_null_memory.py --trace REAL GEN OUT.csv --log trace.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# both children: imports, this checkout first on the path, and the resident-memory reader
_PRELUDE = r"""
import json, os, resource, sys, threading, time, traceback
sys.path.insert(0, {root!r})
PG = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PG
"""

_SPLITS_CHILD = _PRELUDE + r"""
import numpy as np
from PIL import Image
peak = [0]
def sampler():
    while True:
        peak[0] = max(peak[0], rss()); time.sleep(0.02)
R = {n}
real = np.stack([np.asarray(Image.open(os.path.join({real_dir!r}, f"{{i:07d}}.png")).convert("L")) for i in range(R)])
from imprint.engine.membership import anatomy as A
assert A.__file__.startswith({root!r}), A.__file__
rng = np.random.default_rng(0)
only = np.zeros(R, bool); only[rng.choice(R, min(R, 2000), replace=False)] = True
cand = np.full((R, 52), -1, np.int64)
for r in np.flatnonzero(only):
    c = rng.choice(R - 1, 52, replace=False); cand[r] = np.where(c >= r, c + 1, c)
inAs = [rng.random(R) < p for p in (0.25, 0.5, 0.75) for _ in range(2)]
threading.Thread(target=sampler, daemon=True).start()
time.sleep(0.2)
base = rss(); peak[0] = base
c0 = time.process_time()
v = A.anatomy_pair_values_splits(real, inAs, cand, only=only)
c1 = time.process_time()
np.save({out!r}, np.stack(v))
print("RESULT " + json.dumps({{"cpu_s": c1 - c0, "base_mb": base / 2**20, "peak_mb": peak[0] / 2**20,
                               "spike_mb": (peak[0] - base) / 2**20, "load": os.getloadavg()[0]}}))
"""

_TRACE_CHILD = _PRELUDE + r"""
log = open({log!r}, "w")
t00 = time.perf_counter()
main_id = threading.main_thread().ident
def frames(fr, n=10):
    return [f"{{os.path.basename(f.filename)}}:{{f.lineno}}:{{f.name}}" for f in traceback.extract_stack(fr)
            if "/engine/" in f.filename][-n:] if fr else []
state = {{"peak": 0, "logged": 0, "last": -5}}
def tracer():
    while True:
        r = rss(); t = time.perf_counter() - t00
        state["peak"] = max(state["peak"], r)
        if r >= state["logged"] + (25 << 20) or t - state["last"] >= 5:
            kind = "peak" if r >= state["logged"] + (25 << 20) else "tick"
            if kind == "peak":
                state["logged"] = r
            else:
                state["last"] = t
            ru = resource.getrusage(resource.RUSAGE_SELF)
            log.write(json.dumps({{"t": round(t, 2), "kind": kind, "rss_mb": round(r / 2**20),
                                   "cpu_s": round(ru.ru_utime + ru.ru_stime, 1),
                                   "main": frames(sys._current_frames().get(main_id))}}) + "\n"); log.flush()
        time.sleep(0.05)
threading.Thread(target=tracer, daemon=True).start()
from imprint.engine.pipeline import run_membership
from imprint.engine.ingest import IngestPolicy
s = run_membership(gen_dir={gen!r}, real_dir={real!r}, out={out!r}, policy=IngestPolicy(size=(128, 128)))
ru = resource.getrusage(resource.RUSAGE_SELF)
res = {{"kind": "result", "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_mb": ru.ru_maxrss / 1024,
       "n_flagged": s["n_flagged"]}}
log.write(json.dumps(res) + "\n"); log.flush()
print("RESULT " + json.dumps(res))
"""


def _child(code: str) -> dict:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode != 0 or not line:
        raise SystemExit(f"child failed:\n{p.stderr[-3000:]}")
    return json.loads(line[0][7:])


def splits(n: int, data: Path, before: str | None) -> list[dict]:
    import numpy as np

    real_dir = data / "real10000"
    if len(list(real_dir.glob("*.png"))) < n:
        raise SystemExit(f"{real_dir} holds fewer than {n} images: run bench_scaling.py --sizes 10000x10000 "
                         f"--data {data} once (it writes the folders)")
    rows, vals = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for side, root in ([("before", before)] if before else []) + [("after", str(ROOT))]:
            out = os.path.join(tmp, f"{side}.npy")
            r = _child(_SPLITS_CHILD.format(root=root, n=n, real_dir=str(real_dir), out=out))
            vals[side] = np.load(out)
            rows.append(dict(side=side, **r))
            print(side, json.dumps(r), flush=True)
        if before:
            print("identical bit for bit:", vals["before"].tobytes() == vals["after"].tobytes())
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--splits", type=int, default=None, metavar="R")
    ap.add_argument("--data", default="/tmp/imprint-bench-scaling")
    ap.add_argument("--before", default=None, metavar="CHECKOUT")
    ap.add_argument("--trace", nargs=3, default=None, metavar=("REAL_DIR", "GEN_DIR", "OUT"))
    ap.add_argument("--log", default="pair_null_trace.jsonl")
    ap.add_argument("--root", default=str(ROOT), help="the checkout whose code --trace runs")
    a = ap.parse_args(argv)
    if a.splits:
        splits(a.splits, Path(a.data), a.before)
    if a.trace:
        real, gen, out = a.trace
        print(json.dumps(_child(_TRACE_CHILD.format(root=a.root, log=a.log, real=real, gen=gen, out=out))))
    if not (a.splits or a.trace):
        ap.error("give --splits R or --trace REAL GEN OUT")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
