"""Overhead of the Ray executor against the local executor for the same jobs, measured in the same run.

Jobs (same inputs, same outputs -- the script checks that both executors wrote identical results):

1. ``imprint embed``: decode + embed N images into a fresh Arrow store;
2. ``imprint pairs``: N real x N generated, k nearest (embedding search) + SSIM/MSE re-ranking.

The Ray side uses a Ray instance started once on this machine (127.0.0.1 only, small object store); its
start-up time is reported separately and is not part of the job times. Every job is run once after a warm-up
of both executors (worker processes, ONNX sessions, Numba caches).

Usage::

    .venv/bin/python benchmarks/bench_distributed.py [--n 2000] [--k 10] [--backbone pixel] [--data DIR]

``--data DIR`` uses DIR/real and DIR/gen instead of generated images.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import ct_like as _synthetic  # noqa: E402  (the tests' CT-like phantom generator)


def _write(folder: Path, imgs):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(folder / f"{i:05d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="images per side (embed N; pairs N x N)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--backbone", default="pixel")
    ap.add_argument("--data", default=None, help="folder with real/ and gen/ (default: generated images)")
    ap.add_argument("--object-store-mb", type=int, default=256)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from imprint.engine.executors import RayExecutor
    from imprint.engine.ingest import IngestPolicy
    from imprint.engine.pairs import run_pairs
    from imprint.engine.pipeline import run_embed
    from imprint.engine.store import EmbeddingStore
    import pyarrow.parquet as pq

    tmp = Path(tempfile.mkdtemp(prefix="imprint-bench-dist-"))
    try:
        if args.data:
            real_dir, gen_dir = Path(args.data) / "real", Path(args.data) / "gen"
        else:
            rng = np.random.default_rng(0)
            t0 = time.perf_counter()
            real_dir, gen_dir = tmp / "real", tmp / "gen"
            _write(real_dir, _synthetic(rng, args.n))
            _write(gen_dir, _synthetic(rng, args.n))
            print(f"generated 2 x {args.n} PNGs in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        pol = IngestPolicy()
        res: dict = {"n": args.n, "k": args.k, "backbone": args.backbone, "cpus": os.cpu_count()}

        t0 = time.perf_counter()
        ex = RayExecutor(object_store_memory=args.object_store_mb << 20).start()
        res["ray_start_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ex.workers()
        import ray

        ray.get([a.pid.remote() for a in ex.workers()])
        res["ray_workers_start_s"] = time.perf_counter() - t0
        res["ray_workers"] = ex.num_workers
        ex.release_workers()  # each job below starts (and releases) its own workers, as the CLI does
        try:
            # warm-up both executors on a few images (sessions, Numba caches, worker imports)
            warm = tmp / "warm"
            _write(warm / "real", _synthetic(np.random.default_rng(1), 40))
            _write(warm / "gen", _synthetic(np.random.default_rng(2), 40))
            for exe in ("local", "ray"):
                run_pairs(real_dir=str(warm / "real"), gen_dir=str(warm / "gen"), k=args.k,
                          out=str(tmp / f"warm-{exe}.parquet"), backbone=args.backbone, policy=pol, executor=exe)
                run_embed(folder=str(warm / "gen"), store=str(tmp / f"warm-{exe}"), backbone=args.backbone,
                          policy=pol, executor=exe)

            for job in ("embed", "pairs"):
                for exe in ("local", "ray"):
                    t0 = time.perf_counter()
                    if job == "embed":
                        s = run_embed(folder=str(gen_dir), store=str(tmp / f"store-{exe}"), backbone=args.backbone,
                                      policy=pol, executor=exe)
                    else:
                        s = run_pairs(real_dir=str(real_dir), gen_dir=str(gen_dir), k=args.k,
                                      out=str(tmp / f"pairs-{exe}.parquet"), backbone=args.backbone, policy=pol,
                                      executor=exe)
                    res[f"{job}_{exe}_s"] = time.perf_counter() - t0
                    if job == "pairs":
                        res[f"pairs_{exe}_timings"] = {k: round(v, 3) for k, v in s["timings"].items()}
                res[f"{job}_ray_over_local"] = res[f"{job}_ray_s"] / res[f"{job}_local_s"]
            a = EmbeddingStore.open(tmp / "store-local").read()
            b = EmbeddingStore.open(tmp / "store-ray").read()
            res["embed_identical"] = bool(a.paths == b.paths and np.array_equal(a.vectors, b.vectors))
            res["pairs_identical"] = bool(pq.read_table(tmp / "pairs-local.parquet").equals(
                pq.read_table(tmp / "pairs-ray.parquet")))
        finally:
            ex.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"Ray start-up (local instance): {res['ray_start_s']:.1f}s; {res['ray_workers']} worker actors up in "
          f"{res['ray_workers_start_s']:.1f}s (not counted below)")
    for job, what in (("embed", f"embed {args.n} images ({args.backbone})"),
                      ("pairs", f"pairs {args.n} x {args.n}, k={args.k}")):
        print(f"{what:38s} local {res[f'{job}_local_s']:7.2f}s   ray {res[f'{job}_ray_s']:7.2f}s   "
              f"ray/local {res[f'{job}_ray_over_local']:.2f}x   identical: {res[f'{job}_identical']}")
    print("pairs stage timings local:", res["pairs_local_timings"])
    print("pairs stage timings ray:  ", res["pairs_ray_timings"])


if __name__ == "__main__":
    main()
