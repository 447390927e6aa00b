"""The full `imprint pairs` path at scale: embed, FAISS k-NN, SSIM/MSE re-ranking, Parquet output.

    .venv/bin/python benchmarks/bench_pairs.py --real 10000 --generated 10000 --k 100   # 1,000,000 pairs
    .venv/bin/python benchmarks/bench_pairs.py --real 10000 --generated 10000 --k 100 --baseline /work/main

With ``--baseline CHECKOUT`` every whole run happens in a fresh subprocess, alternating between this checkout's code
and CHECKOUT's (same data, same arguments; each side's Numba cache is warmed first by an untimed tiny run), and
the best of ``--repeats`` of each side is compared: the ratio is the before/after figure of a change.

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
    ap.add_argument("--baseline", default=None, metavar="CHECKOUT",
                    help="also time CHECKOUT's code (another git worktree of imprint), alternating whole runs in "
                         "subprocesses, and report the ratio")
    ap.add_argument("--block", default=None, metavar="NAME",
                    help="name of the RESULTS.md block to write (default: pairs, or pairs-compare with --baseline)")
    ap.add_argument("--from-json", default=None, metavar="FILE",
                    help="with --baseline runs saved by an earlier comparison (DATA/compare-runs.json): only "
                         "rebuild and write the table")
    ap.add_argument("--write-results", default=None, metavar="RESULTS.md",
                    help="replace this script's table block in RESULTS.md (benchmarks/RESULTS.md)")
    args = ap.parse_args()
    if args.from_json:
        return render_compare(json.loads(Path(args.from_json).read_text()), args)
    data = Path(args.data)
    t0 = time.perf_counter()
    make(data / "real", args.real, 1)
    real_sample = ct_like(np.random.default_rng(1), 100, 128)
    make(data / "gen", args.generated, 2, copies_of=real_sample)
    t_make = time.perf_counter() - t0

    if args.baseline:
        return compare(args, data)

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
        write_results_block(args.write_results, args.block or "pairs", (
            f"### `imprint pairs` end to end: {n:,} pairs ({s['n_real']:,} real x {s['k']} nearest of "
            f"{s['n_generated']:,} generated)\n\n"
            f"Command: `{cmd}`. Synthetic CT-like 128x128 PNGs written once (10% of the generated set are noisy "
            f"copies); data generation not timed. Fastest of {len(runs)} whole runs (all: {s['all_runs_s']} s). "
            f"Peak resident memory of the process: {peak:,.0f} MB; CPU time {cpu_all / len(runs):,.0f} s per run "
            f"(user+system, average). Target: 1M pairs in <= 30 s.\n"
            + load_note() + "\n\n" + md_table(rows, ["stage", "seconds", "rate"])))

CHILD = r"""
import json, resource, sys
sys.path.insert(0, {root!r})
from imprint.engine.ingest import IngestPolicy
from imprint.engine.pairs import run_pairs
s = run_pairs(real_dir={real!r}, gen_dir={gen!r}, k={k}, out={out!r}, backbone={backbone!r},
              policy=IngestPolicy(size=(128, 128)))
ru = resource.getrusage(resource.RUSAGE_SELF)
print("RESULT " + json.dumps({{"seconds": s["seconds"], "timings": s["timings"], "n_pairs": s["n_pairs"],
      "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024}}))
"""


def _child(root: str, real: Path, gen: Path, k: int, out: Path, backbone: str) -> dict:
    import subprocess

    code = CHILD.format(root=root, real=str(real), gen=str(gen), k=k, out=str(out), backbone=backbone)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode != 0 or not line:
        raise SystemExit(f"run with {root} failed:\n{p.stderr[-3000:]}")
    return json.loads(line[0][7:])


def outputs_equal(a: Path, b: Path) -> dict:
    """How two `imprint pairs` outputs of the same data differ: the same (real, generated, rank) rows, the largest
    SSIM / distance difference, whether the MSE values are identical."""
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a), pq.read_table(b)
    same_rows = ta.num_rows == tb.num_rows and all(
        np.array_equal(ta.column(c).to_numpy(), tb.column(c).to_numpy()) for c in ("real_id", "generated_id", "rank"))
    if not same_rows:
        return {"same_pairs": False, "rows": [ta.num_rows, tb.num_rows]}
    col = lambda t, c: t.column(c).to_numpy().astype(np.float64)  # noqa: E731
    return {"same_pairs": True, "rows": ta.num_rows,
            "max_abs_ssim_diff": float(np.abs(col(ta, "ssim") - col(tb, "ssim")).max()),
            "max_abs_distance_diff": float(np.abs(col(ta, "distance") - col(tb, "distance")).max()),
            "mse_identical": bool(np.array_equal(col(ta, "mse"), col(tb, "mse")))}


def compare(args, data: Path) -> None:
    """Alternating whole runs of this checkout and ``args.baseline`` in subprocesses; best of each side.

    Every run's figures go to ``DATA/compare-runs.json`` as they come (``--from-json`` rebuilds the table from
    it), and the two sides' outputs of the last round are compared row by row (``outputs_equal``)."""
    import subprocess

    here = str(Path(__file__).resolve().parents[1])
    sides = {"this checkout": here, "baseline": os.path.abspath(args.baseline)}
    commits = {}
    for name, root in sides.items():
        r = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        commits[name] = (r.stdout.strip() or "?") + ("+changes" if dirty else "")
    tiny = data / "tiny"
    make(tiny / "real", 40, 3)
    make(tiny / "gen", 60, 4)
    for name, root in sides.items():  # warm each side's Numba cache (compiled code is cached per checkout)
        _child(root, tiny / "real", tiny / "gen", min(args.k, 60), tiny / "pairs.parquet", args.backbone)
    saved = {"command": "python benchmarks/bench_pairs.py " + " ".join(sys.argv[1:]), "commits": commits,
             "real": args.real, "generated": args.generated, "k": args.k, "repeats": args.repeats,
             "runs": {name: [] for name in sides}}
    for _ in range(max(1, args.repeats)):
        for name, root in sides.items():
            r = _child(root, data / "real", data / "gen", args.k, data / f"pairs-{name[0]}.parquet", args.backbone)
            r["load_average"] = os.getloadavg()
            saved["runs"][name].append(r)
            print(name, json.dumps({"seconds": round(r["seconds"], 2), "cpu_s": round(r["cpu_s"], 1),
                                    **{k_: round(v, 2) for k_, v in r["timings"].items()}}), flush=True)
            (data / "compare-runs.json").write_text(json.dumps(saved, indent=1))
    saved["outputs"] = outputs_equal(data / "pairs-t.parquet", data / "pairs-b.parquet")
    (data / "compare-runs.json").write_text(json.dumps(saved, indent=1))
    render_compare(saved, args)


def render_compare(saved: dict, args) -> None:
    """The before/after table of a comparison (``saved``: what :func:`compare` wrote to compare-runs.json)."""
    runs, commits = saved["runs"], saved["commits"]
    best = {name: min(v, key=lambda r: r["seconds"]) for name, v in runs.items()}
    stages = list(best["this checkout"]["timings"])
    rows = []
    for st in stages + ["seconds", "cpu_s"]:
        get = (lambda r: r["timings"][st]) if st in stages else (lambda r: r[st])
        b, h = get(best["baseline"]), get(best["this checkout"])
        rows.append({"stage": {"seconds": "**total wall**", "cpu_s": "CPU s (user+system)"}.get(st, st),
                     "baseline s": b, "this checkout s": h, "baseline / this": b / h if h else float("nan")})
    n = best["this checkout"]["n_pairs"]
    out = saved.get("outputs")
    if out is None:
        same = "Outputs not compared."
    elif out["same_pairs"]:
        same = (f"Outputs of the two sides: the same {out['rows']:,} (real, generated, rank) rows; max |SSIM "
                f"difference| {out['max_abs_ssim_diff']:.1e}, max |distance difference| "
                f"{out['max_abs_distance_diff']:.1e}, MSE identical: {out['mse_identical']}.")
    else:
        same = f"**Outputs differ: not the same pairs** ({out['rows']} rows)."
    from imprint.engine.bench import load_note, md_table

    cmd = saved["command"] + (f"` (table written by `python benchmarks/bench_pairs.py {' '.join(sys.argv[1:])}`"
                              if getattr(args, "from_json", None) else "")
    text = (f"### `imprint pairs` before/after, same run: {n:,} pairs ({saved['real']:,} real x {saved['k']} nearest "
            f"of {saved['generated']:,} generated)\n\n"
            f"Command: `{cmd}`. Whole runs in fresh subprocesses, alternating baseline ({commits['baseline']}) and "
            f"this checkout ({commits['this checkout']}), {saved['repeats']} each, same data; the fastest run of "
            f"each side is shown (all totals: baseline {[round(r['seconds'], 1) for r in runs['baseline']]} s, "
            f"this checkout {[round(r['seconds'], 1) for r in runs['this checkout']]} s; CPU s: baseline "
            f"{[round(r['cpu_s'], 1) for r in runs['baseline']]}, this checkout "
            f"{[round(r['cpu_s'], 1) for r in runs['this checkout']]}). Peak RSS: baseline "
            f"{best['baseline']['peak_rss_mb']:,.0f} MB, this checkout {best['this checkout']['peak_rss_mb']:,.0f} MB. "
            f"{same}\n" + load_note() + "\n\n"
            + md_table(rows, ["stage", "baseline s", "this checkout s", "baseline / this"]))
    print(text)
    if args.write_results:
        from imprint.engine.bench import write_results_block

        write_results_block(args.write_results, args.block or "pairs-compare", text)


if __name__ == "__main__":
    main()
