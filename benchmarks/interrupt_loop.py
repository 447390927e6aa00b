"""Failure rate of SIGTERM / Ctrl-C on ``imprint membership`` at random delays (tests/test_reliability.py's data).

usage: python benchmarks/interrupt_loop.py [--root CHECKOUT] [--n 25] [--signal SIGTERM|SIGINT] [--seed 1]

Each run is started like ``python -m imprint.engine.cli membership ...`` (under ``nice``) from ``--root`` and sent the
signal after a delay drawn uniformly from 0.2-6 s. A run is clean when it exits 130 with exactly the one line
``interrupted; re-run the same command to resume`` on stderr (or 0: finished first; or -15 with empty stderr:
SIGTERM before the interpreter reached imprint), shows no traceback, and leaves the output absent or identical to
an uninterrupted run's. Prints one line per run and a tally.
"""
import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tests"))
from conftest import ct_like, save_png  # noqa: E402

MESSAGE = "interrupted; re-run the same command to resume"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(HERE))
    ap.add_argument("--n", type=int, default=25)
    ap.add_argument("--signal", default="SIGTERM", choices=["SIGTERM", "SIGINT"])
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    sig = getattr(signal, a.signal)
    rnd = random.Random(a.seed)
    with tempfile.TemporaryDirectory() as w:
        d = Path(w)
        rng = np.random.default_rng(21)  # the fixture of tests/test_reliability.py
        real = ct_like(rng, 24)
        gen = ct_like(rng, 40)
        gen[:12] = np.clip(real[:12].astype(int) + rng.integers(-3, 4, real[:12].shape), 0, 255)
        for sub, arr in (("real", real), ("gen", gen)):
            (d / sub).mkdir()
            for i, im in enumerate(arr):
                save_png(d / sub / f"{i:03d}.png", im)

        def cmd(out):
            return ["nice", sys.executable, "-m", "imprint.engine.cli", "membership", "--generated", str(d / "gen"),
                    "--real", str(d / "real"), "--out", str(out), "--size", "64", "--seed", "3"]

        r = subprocess.run(cmd(d / "ref.csv"), cwd=a.root, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        ref = (d / "ref.csv").read_bytes()
        tally, bad = collections.Counter(), []
        for i in range(a.n):
            delay = rnd.uniform(0.2, 6.0)
            out = d / f"o{i}.csv"
            p = subprocess.Popen(cmd(out), cwd=a.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(delay)
            p.send_signal(sig)
            _, err = p.communicate(timeout=300)
            state = "absent" if not out.exists() else ("complete" if out.read_bytes() == ref else "PARTIAL")
            ok = ((p.returncode == 130 and err.strip() == MESSAGE) or (p.returncode == -sig == -signal.SIGTERM
                  and err == "") or (p.returncode == 0 and "Traceback" not in err)) and state != "PARTIAL"
            tally[f"rc={p.returncode} {'clean' if ok else 'FAIL'}"] += 1
            if not ok:
                bad.append((i, round(delay, 2), p.returncode, err[-300:]))
            print(f"{i:2d} delay={delay:4.2f}s rc={p.returncode} out={state} {'clean' if ok else 'FAIL'}", flush=True)
        print(dict(tally))
        for b in bad:
            print("FAIL", b)
        print(f"failures: {len(bad)}/{a.n}")


if __name__ == "__main__":
    main()
