"""Rebuild the embedded demo sample (engine/data/demo) from the labelled dev corpus.

    .venv/bin/python scripts/make_demo_data.py ../shared/corpus/dev

A seeded random subset (about 5 MB): a memorising generator (dev gen_e) as the membership target with one
mixed real folder and its truth file, a small dev set from another generator (gen_a) for calibration, and
three attribution models mixed in one folder plus a small labelled dev folder of other samples, and a
reference folder of 280 real images no model was trained on (the decision's null).
"""
import csv
import random
import shutil
import sys
from pathlib import Path


def pick(folder: Path, n: int, rng: random.Random) -> list[Path]:
    files = sorted(folder.glob("*.png"))
    return sorted(rng.sample(files, min(n, len(files))))


def main(corpus: str, out: str = "engine/data/demo") -> None:
    src = Path(corpus)
    dst = Path(out)
    if dst.exists():
        shutil.rmtree(dst)
    rng = random.Random(20241)

    # membership target: generator E (memorises its training set)
    t = dst / "membership" / "target"
    (t / "generated").mkdir(parents=True)
    (t / "real").mkdir(parents=True)
    for i, f in enumerate(pick(src / "membership/gen_e/generated", 150, rng)):
        shutil.copy(f, t / "generated" / f"{i:04d}.png")
    reals = [(f, "used") for f in pick(src / "membership/gen_e/real/used", 30, rng)]
    reals += [(f, "unused") for f in pick(src / "membership/gen_e/real/unused", 30, rng)]
    rng.shuffle(reals)
    with open(t / "truth.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["image", "label"])
        for i, (f, lab) in enumerate(reals):
            shutil.copy(f, t / "real" / f"{i:04d}.png")
            w.writerow([f"{i:04d}.png", lab])

    # membership dev set: generator A (leaks little)
    d = dst / "membership" / "dev_a"
    for sub, n in (("generated", 80), ("real/used", 20), ("real/unused", 20)):
        (d / sub).mkdir(parents=True)
        for i, f in enumerate(pick(src / "membership/gen_a" / sub, n, rng)):
            shutil.copy(f, d / sub / f"{i:04d}.png")

    # attribution: 3 models, 40 mixed images each + 20 labelled dev images each (disjoint)
    a = dst / "attribution"
    (a / "images").mkdir(parents=True)
    items = []
    for m in ("model_1", "model_2", "model_3"):
        files = pick(src / "attribution" / m, 60, rng)
        (a / "dev" / m).mkdir(parents=True)
        for i, f in enumerate(files[:20]):
            shutil.copy(f, a / "dev" / m / f"{i:04d}.png")
        items += [(f, m) for f in files[20:]]
    rng.shuffle(items)
    with open(a / "truth.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["image", "label"])
        for i, (f, m) in enumerate(items):
            shutil.copy(f, a / "images" / f"{i:04d}.png")
            w.writerow([f"{i:04d}.png", m])
    # membership reference: real images no model in the corpus was trained on (the null of the decision);
    # a separate generator so the picks above do not change when this folder is rebuilt
    rref = random.Random(20242)
    r = dst / "membership" / "reference"
    r.mkdir(parents=True)
    for i, f in enumerate(pick(src / "membership/gen_b/real/unused", 280, rref)):
        shutil.copy(f, r / f"{i:04d}.png")

    print(f"wrote {sum(1 for _ in dst.rglob('*.png'))} images to {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:])
