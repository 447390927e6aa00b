"""Ctrl-C / SIGTERM during ``imprint``'s start-up: where does a traceback still come from?

usage: python benchmarks/interrupt_startup_loop.py [--root CHECKOUT] [--n 60] [--max-ms 250] [--signal SIGINT] [--seed 0]

Starts ``python -m imprint --help`` (the console entry, imprint/__main__.py) from ``--root`` ``--n`` times and sends
the signal after a uniform 0..max-ms delay; classifies stderr: the one line (status 130), empty (killed before
Python installed any handler, or finished first), or a traceback, split by where it was raised: after imprint's
entry began (imprint's own files, click, numpy: what the entry must prevent), in an editable install's path finder
run by ``site``, or elsewhere in the interpreter's start-up (runpy, site): before any imprint code runs.
"""
import argparse
import collections
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

MESSAGE = "interrupted; re-run the same command to resume"


def classify(rc: int, err: str, root: str) -> str:
    if "Traceback" in err:
        files = re.findall(r'File "([^"]+)"', err)
        if any(f.startswith(root) or "/click/" in f or "/numpy/" in f for f in files):
            return "traceback after the entry began"
        if any("editable" in f for f in files):
            return "traceback in site's editable finder"
        return "traceback in interpreter start-up"
    if err.strip() == MESSAGE:
        return "one line"
    return "empty" if not err.strip() else "other"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--max-ms", type=float, default=250.0)
    ap.add_argument("--signal", default="SIGINT", choices=["SIGINT", "SIGTERM"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    root = str(Path(a.root).resolve())
    rnd = random.Random(a.seed)
    tally = collections.Counter()
    import time

    for _ in range(a.n):
        p = subprocess.Popen([sys.executable, "-m", "imprint", "--help"], cwd=root, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        time.sleep(rnd.uniform(0, a.max_ms) / 1000)
        p.send_signal(getattr(signal, a.signal))
        _, err = p.communicate()
        tally[(p.returncode, classify(p.returncode, err, root))] += 1
    for (rc, kind), n in sorted(tally.items(), key=lambda kv: -kv[1]):
        print(f"{n:4d}  status {rc:4d}  {kind}")


if __name__ == "__main__":
    main()
