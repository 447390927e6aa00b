"""Does a change alter membership results? Run ``imprint membership`` with a baseline checkout and with this one on
the same small folders and compare the output files byte for byte.

    python benchmarks/compare_membership.py --baseline /work/main [--data /tmp/imprint-compare-membership]

Folders (written once under --data): 200 real and 600 generated 128x128 CT-like phantoms (``tests/conftest.ct_like``;
every 20th generated image a noisy copy of a real one) and 300 reference phantoms. Cases: the real-pair null
(no reference), the same with a tiny memory budget on this checkout only (0.01 GB: 64-image blocks of both sets),
and a reference null. Each run is a fresh ``python -m imprint membership`` in its checkout. Prints one line per case
and exits 1 when any output differs.
"""
from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def make_data(data: Path) -> None:
    from PIL import Image

    from conftest import ct_like

    if (data / "done").exists():
        return
    rng = np.random.default_rng(5)
    sets = {"real": ct_like(rng, 200, 128), "gen": ct_like(rng, 600, 128), "ref": ct_like(rng, 300, 128)}
    for j in range(0, 600, 20):
        src = sets["real"][(j // 20) * 3]
        sets["gen"][j] = np.clip(src.astype(np.int16) + rng.integers(-3, 4, src.shape), 0, 255).astype(np.uint8)
    for name, imgs in sets.items():
        (data / name).mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(imgs):
            Image.fromarray(im).save(data / name / f"{i:04d}.png", compress_level=1)
    (data / "done").write_text("ok")


def run(checkout: Path, data: Path, tag: str, extra: list[str]) -> Path:
    out = data / tag / "scores.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "imprint", "membership", "--generated", str(data / "gen"), "--real",
           str(data / "real"), "--out", str(out), *extra]
    p = subprocess.run(cmd, cwd=str(checkout), capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{tag} failed:\n{p.stderr[-2000:]}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="checkout of the baseline (e.g. /work/main)")
    ap.add_argument("--data", default="/tmp/imprint-compare-membership")
    args = ap.parse_args(argv)
    data = Path(args.data)
    make_data(data)
    base = Path(args.baseline).resolve()
    cases = [("real-pair null", [], []), ("real-pair null, tiny budget here", [], ["--memory-budget", "0.01"]),
             ("reference null", ["--reference", str(data / "ref")], ["--reference", str(data / "ref")])]
    bad = 0
    for i, (name, both, mine) in enumerate(cases):
        a = run(base, data, f"base{i}", both)
        b = run(ROOT, data, f"this{i}", both + mine)
        same = [filecmp.cmp(x, y, shallow=False) for x, y in
                ((a, b), (Path(str(a)[:-4] + ".evidence.csv"), Path(str(b)[:-4] + ".evidence.csv")))]
        bad += not all(same)
        print(f"{name}: scores.csv {'identical' if same[0] else 'DIFFERENT'}, "
              f"evidence.csv {'identical' if same[1] else 'DIFFERENT'}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
