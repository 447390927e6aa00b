"""Benchmark engine.search: approximate vs exact k-NN (recall@k, queries/s, build time, memory).

Usage::

    .venv/bin/python benchmarks/bench_search.py --n 1000000 --d 128 --nq 1000
    .venv/bin/python benchmarks/bench_search.py --n 200000 --index auto --index HNSW32 --index IVF1788,SQ8
    .venv/bin/python benchmarks/bench_search.py --n 0 --real    # dev-corpus pixel vectors only

Data: a Gaussian mixture with low intrinsic dimension (each cluster = centre +
random 16-d linear subspace + small isotropic noise), ``n/1000`` clusters; the
queries are ``nq`` held-out draws from the same mixture (a cross-store search,
like generated -> real).  Exact search (faiss Flat, BLAS) is the reference
measured in the same run on the same queries; every approximate index reports
the ratio of its query throughput to it and its recall@k against it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import faiss  # noqa: E402

from imprint.engine import search as S  # noqa: E402


def rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def mixture(n: int, d: int, seed: int, n_clusters: int | None = None, intrinsic: int = 16,
            noise: float = 0.1) -> np.ndarray:
    """Clustered synthetic vectors float32 [n, d] (low intrinsic dimension per cluster)."""
    rng = np.random.default_rng(seed)
    c = n_clusters or max(10, n // 1000)
    centers = rng.standard_normal((c, d)).astype(np.float32)
    bases = (rng.standard_normal((c, intrinsic, d)) / np.sqrt(intrinsic) * 0.7).astype(np.float32)
    lab = rng.integers(0, c, n)
    out = np.empty((n, d), dtype=np.float32)
    order = np.argsort(lab, kind="stable")
    bounds = np.searchsorted(lab[order], np.arange(c + 1))
    for j in range(c):
        rows = order[bounds[j] : bounds[j + 1]]
        z = rng.standard_normal((rows.size, intrinsic)).astype(np.float32)
        out[rows] = centers[j] + z @ bases[j] + noise * rng.standard_normal((rows.size, d)).astype(np.float32)
    return out


def timed_search(fn, repeats: int) -> tuple[float, object]:
    """Best seconds per call over ``repeats`` windows of >= 1 s (engine.bench.best_time): both the exact
    reference and every approximate index are timed this way."""
    from imprint.engine.bench import best_time

    return best_time(fn, min_window=1.0, repeats=repeats)


def index_bytes(index) -> int:
    """Approximate memory of the index payload (codes + ids + coarse centroids)."""
    try:
        ivf = faiss.extract_index_ivf(index)
        inv = ivf.invlists
        total = 0
        for li in range(ivf.nlist):
            total += inv.list_size(li) * (ivf.code_size + 8)
        return total + ivf.nlist * ivf.d * 4
    except Exception:
        pass
    inner = faiss.downcast_index(index)
    if hasattr(inner, "hnsw"):
        storage = faiss.downcast_index(inner.storage)
        return int(index.ntotal) * int(index.d) * 4 + int(inner.hnsw.neighbors.size()) * 4
    return int(index.ntotal) * int(index.d) * 4


def bench_one(base, queries, k, metric, factory, exact_idx, exact_qps, repeats, seed, exact_build=0.0):
    rss0 = rss_mb()
    t0 = time.perf_counter()
    index, info = S.build_index(base, metric=metric, index=factory, random_state=seed, k=k, return_info=True)
    build = time.perf_counter() - t0
    rss1 = rss_mb()
    q_search = S._normalised(queries) if metric == "cosine" else queries
    kk = k * S._refine_factor(info["factory"])
    t_raw, _ = timed_search(lambda: index.search(q_search, kk), repeats)
    t_e2e, (dist, idx) = timed_search(lambda: S.knn(base, queries, k, metric=metric, index=index), repeats)
    rec = S.recall_at_k(idx, exact_idx)
    nq = queries.shape[0]
    t_exact = nq / exact_qps
    row = {
        "index": info["factory"], "requested": factory, "nprobe": info.get("nprobe"),
        "efSearch": info.get("efSearch"), "build_s": round(build, 2),
        "train_add_s": info.get("build_s"), "calibrate_s": info.get("calibrate_s"),
        "calibration_recall": round(info.get("calibration", {}).get("recall", float("nan")), 4),
        "recall_at_k": round(rec, 4), "qps_faiss": round(nq / t_raw, 1), "qps_knn": round(nq / t_e2e, 1),
        "query_s": round(t_e2e, 3), "speedup_vs_exact": round((nq / t_e2e) / exact_qps, 2),
        "speedup_with_build": round((exact_build + t_exact) / (build + t_e2e), 2),
        "break_even_queries": (int(build / (t_exact / nq - t_e2e / nq)) if t_exact > t_e2e else None),
        "index_mb": round(index_bytes(index) / 2**20, 1), "rss_delta_mb": round(rss1 - rss0, 1),
    }
    del index
    return row


def run_synthetic(args) -> dict:
    t0 = time.perf_counter()
    allx = mixture(args.n + args.nq, args.d, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    perm = rng.permutation(allx.shape[0])
    base = np.ascontiguousarray(allx[perm[: args.n]])
    queries = np.ascontiguousarray(allx[perm[args.n :]])
    del allx
    gen_s = time.perf_counter() - t0
    print(f"data: base {base.shape} queries {queries.shape} ({gen_s:.1f}s to generate), "
          f"threads={faiss.omp_get_max_threads()}, rss={rss_mb():.0f} MB", flush=True)
    res = {"n": args.n, "d": args.d, "nq": args.nq, "k": args.k, "metric": args.metric, "rows": []}
    # exact reference on the same queries
    t0 = time.perf_counter()
    flat = S.build_index(base, metric=args.metric, index="Flat")
    build = time.perf_counter() - t0
    q_search = S._normalised(queries) if args.metric == "cosine" else queries
    t_raw, _ = timed_search(lambda: flat.search(q_search, args.k), args.repeats)
    t_e2e, (ed, ei) = timed_search(lambda: S.knn(base, queries, args.k, metric=args.metric, index=flat),
                                   args.repeats)
    del flat
    exact_qps = args.nq / t_e2e
    res["exact"] = {"index": "Flat", "build_s": round(build, 2), "qps_faiss": round(args.nq / t_raw, 1),
                    "qps_knn": round(exact_qps, 1), "query_s": round(t_e2e, 3),
                    "index_mb": round(base.nbytes / 2**20, 1)}
    print("exact:", json.dumps(res["exact"]), flush=True)
    for factory in args.index:
        if factory == "auto":
            factory = S.choose_index(args.n, args.d, args.nq)  # what index="auto" picks for this workload
        row = bench_one(base, queries, args.k, args.metric, factory, ei, exact_qps, args.repeats, args.seed,
                        exact_build=build)
        res["rows"].append(row)
        print("approx:", json.dumps(row), flush=True)
    return res


def run_real(args) -> dict:
    """Dev-corpus pixel vectors (8x8 average-pooled 128x128 PNG -> 256-d): generated base, real queries."""
    from PIL import Image

    root = args.corpus
    def load(folder):
        files = sorted(f for f in os.listdir(folder) if f.endswith(".png"))
        arr = np.stack([np.asarray(Image.open(os.path.join(folder, f)).convert("L"), dtype=np.float32)
                        for f in files])
        return arr.reshape(len(arr), 16, 8, 16, 8).mean(axis=(2, 4)).reshape(len(arr), -1)
    gens, reals = [], []
    for g in ("gen_a", "gen_b", "gen_e"):
        gens.append(load(os.path.join(root, "membership", g, "generated")))
        for s in ("used", "unused"):
            reals.append(load(os.path.join(root, "membership", g, "real", s)))
    for mdl in ("model_1", "model_2", "model_3"):
        gens.append(load(os.path.join(root, "attribution", mdl)))
    base = np.concatenate(gens)
    queries = np.concatenate(reals)
    out = {"base": list(base.shape), "queries": list(queries.shape), "rows": []}
    for metric in ("l2", "cosine"):
        ed, ei = S.knn(base, queries, args.k, metric=metric, index="Flat")
        for factory in ("IVF64,Flat", "HNSW32", "IVF64,SQ8"):
            d, i, info = S.knn(base, queries, args.k, metric=metric, index=factory, return_info=True)
            row = {"metric": metric, "index": factory, "nprobe": info.get("nprobe"),
                   "efSearch": info.get("efSearch"), "recall_at_k": round(S.recall_at_k(i, ei), 4)}
            out["rows"].append(row)
            print("real:", json.dumps(row), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="base vectors (0: skip synthetic)")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--nq", type=int, default=1000, help="queries (exact reference runs on all of them)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--metric", default="l2", choices=["l2", "cosine"])
    ap.add_argument("--index", action="append", default=None,
                    help="index to compare (repeatable): auto or a FAISS factory string; default: auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real", action="store_true", help="also run on dev-corpus pixel vectors")
    ap.add_argument("--corpus", default="/work/shared/corpus/dev")
    ap.add_argument("--json", default=None, help="write results JSON here")
    ap.add_argument("--write-results", default=None, metavar="RESULTS.md",
                    help="replace this script's table block in RESULTS.md (benchmarks/RESULTS.md)")
    args = ap.parse_args(argv)
    args.index = args.index or ["auto"]
    out = {"faiss": faiss.__version__, "threads": faiss.omp_get_max_threads()}
    if args.n > 0:
        out["synthetic"] = run_synthetic(args)
        ex = out["synthetic"]["exact"]
        for r in out["synthetic"]["rows"]:
            print(f"{r['index']:>18}: recall@{args.k}={r['recall_at_k']:.3f}  "
                  f"{r['qps_knn']:.0f} q/s vs exact {ex['qps_knn']:.0f} q/s -> x{r['speedup_vs_exact']}  "
                  f"build {r['build_s']}s  index {r['index_mb']} MB")
    if args.write_results and args.n > 0:
        from imprint.engine.bench import load_note, md_table, write_results_block

        sy = out["synthetic"]
        ex = sy["exact"]
        rows = [{"index": "Flat (exact)", "build s": ex["build_s"], "query s": ex["query_s"],
                 "queries/s": ex["qps_knn"], "recall@k": 1.0, "x exact (query)": 1.0, "x exact (build+query)": 1.0,
                 "break-even queries": "-"}]
        for r in sy["rows"]:
            rows.append({"index": r["index"], "build s": r["build_s"], "query s": r["query_s"],
                         "queries/s": r["qps_knn"], "recall@k": r["recall_at_k"],
                         "x exact (query)": r["speedup_vs_exact"], "x exact (build+query)": r["speedup_with_build"],
                         "break-even queries": r["break_even_queries"] if r["break_even_queries"] is not None else "never"})
        cmd = "python benchmarks/bench_search.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_results_block(args.write_results, "search", (
            f"### engine.search: approximate vs exact k-NN, {args.n:,} x {args.d}, {args.nq:,} queries, k={args.k}\n\n"
            f"Command: `{cmd}` (FAISS {faiss.__version__}, {faiss.omp_get_max_threads()} threads). The queries are "
            "held-out draws from the base's own distribution. Exact and approximate are timed the same way in "
            f"this run: best of {args.repeats} windows of at least 1 s each, through `engine.search.knn`. "
            "`build s` is the index construction (IVF: training, adding, nprobe calibration); `x exact "
            "(build+query)` charges it to this batch of queries, and `break-even queries` is how many queries "
            "repay the build.\n" + load_note() + "\n\n"
            + md_table(rows, list(rows[0]))))
    if args.real:
        out["real"] = run_real(args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
