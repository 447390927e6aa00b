"""The full `imprint pairs` path at scale: embed, FAISS k-NN, SSIM/MSE re-ranking, Parquet output.

    .venv/bin/python benchmarks/bench_pairs.py --real 10000 --generated 10000 --k 100   # 1,000,000 pairs

Synthetic CT-like 128x128 PNGs (smooth body/lung/blob phantoms with noise, a tenth of the generated set being
noisy copies of real images) are written once to --data (default /tmp/imprint-bench-pairs) and reused. Prints the
time per stage, pairs/second, the slowest stage and the peak resident memory of the whole run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from conftest import ct_like  # noqa: E402  (the tests' phantom generator)


def make(folder: Path, n: int, seed: int, copies_of: np.ndarray | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.png")))
    if have >= n:
        return
    rng = np.random.default_rng(seed)
    for start in range(0, n, 500):
        imgs = ct_like(rng, min(500, n - start), 128)
        for i, im in enumerate(imgs):
            j = start + i
            if copies_of is not None and j % 10 == 0:
                src = copies_of[(j // 10) % len(copies_of)].astype(np.int16)
                im = np.clip(src + rng.integers(-4, 5, src.shape), 0, 255).astype(np.uint8)
            Image.fromarray(im).save(folder / f"{j:07d}.png")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", type=int, default=10000)
    ap.add_argument("--generated", type=int, default=10000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--data", default="/tmp/imprint-bench-pairs")
    ap.add_argument("--backbone", default="pixel")
    ap.add_argument("--repeats", type=int, default=2, help="whole runs; the fastest is reported (all are printed)")
    ap.add_argument("--write-results", default=None, metavar="RESULTS.md",
                    help="replace this script's table block in RESULTS.md (benchmarks/RESULTS.md)")
    args = ap.parse_args()
    data = Path(args.data)
    t0 = time.perf_counter()
    make(data / "real", args.real, 1)
    real_sample = ct_like(np.random.default_rng(1), 100, 128)
    make(data / "gen", args.generated, 2, copies_of=real_sample)
    t_make = time.perf_counter() - t0

    from imprint.engine.ingest import IngestPolicy
    from imprint.engine.pairs import run_pairs

    out = data / "pairs.parquet"
    runs = []
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(max(1, args.repeats)):  # whole runs (no checkpoint is reused: the output is complete)
        runs.append(run_pairs(real_dir=str(data / "real"), gen_dir=str(data / "gen"), k=args.k, out=str(out),
                              backbone=args.backbone, policy=IngestPolicy(size=(128, 128))))
    s = min(runs, key=lambda r: r["seconds"])
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu_all = ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime  # all runs together (no data generation); less sensitive to other processes than wall time
    s["all_runs_s"] = [round(r["seconds"], 2) for r in runs]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s["peak_rss_mb"] = peak
    s["data_generation_s"] = t_make
    s["cpu_count"] = os.cpu_count()
    s["load_average"] = os.getloadavg()
    print(json.dumps({k: v for k, v in s.items() if k != "summary"}, indent=2, default=str))
    print(s["summary"])
    print(f"peak RSS {peak:.0f} MB; load average {os.getloadavg()[0]:.1f}")
    if args.write_results:
        from imprint.engine.bench import load_note, md_table, write_results_block

        t, n = s["timings"], s["n_pairs"]
        n_img = s["n_real"] + s["n_generated"]
        rows = [
            {"stage": "read + decode PNGs (thread pool)", "seconds": t["read_generated_s"] + t["read_real_s"],
             "rate": f"{n_img / max(1e-9, t['read_generated_s'] + t['read_real_s']):,.0f} images/s"},
            {"stage": f"embed ({s['backbone']})", "seconds": t["embed_s"],
             "rate": f"{n_img / max(1e-9, t['embed_s']):,.0f} images/s"},
            {"stage": "build index", "seconds": t["index_s"], "rate": ""},
            {"stage": f"k-NN search ({s['n_real']:,} queries, k={s['k']})", "seconds": t["search_s"],
             "rate": f"{s['n_real'] / max(1e-9, t['search_s']):,.0f} queries/s"},
            {"stage": f"SSIM + MSE re-ranking ({n:,} pairs)", "seconds": t["rerank_s"],
             "rate": f"{n / max(1e-9, t['rerank_s']):,.0f} pairs/s"},
            {"stage": "write (parts + final Parquet)", "seconds": t["write_s"], "rate": ""},
            {"stage": "**total**", "seconds": s["seconds"], "rate": f"**{n / s['seconds']:,.0f} pairs/s**"},
        ]
        cmd = "python benchmarks/bench_pairs.py " + " ".join(sys.argv[1:])
        write_results_block(args.write_results, "pairs", (
            f"### `imprint pairs` end to end: {n:,} pairs ({s['n_real']:,} real x {s['k']} nearest of "
            f"{s['n_generated']:,} generated)\n\n"
            f"Command: `{cmd}`. Synthetic CT-like 128x128 PNGs written once (10% of the generated set are noisy "
            f"copies); data generation not timed. Fastest of {len(runs)} whole runs (all: {s['all_runs_s']} s). "
            f"Peak resident memory of the process: {peak:,.0f} MB; CPU time {cpu_all / len(runs):,.0f} s per run "
            f"(user+system, average). Target: 1M pairs in <= 30 s.\n"
            + load_note() + "\n\n" + md_table(rows, ["stage", "seconds", "rate"])))


if __name__ == "__main__":
    main()
