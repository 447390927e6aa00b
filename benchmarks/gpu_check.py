"""One prepared device check for a GPU machine (issue 14): writes OUT/gpu_check.json in at most ~8 minutes.

    IMPRINT_MODELS_DIR=models/onnx python benchmarks/gpu_check.py --out /tmp/gpu_check [--budget 450]

Needs an environment with the `gpu` extra (``IMPRINT_GPU=1 bash scripts/setup.sh``) and the backbones built.
On a machine without a usable GPU it exits 0 at once and writes ``{"gpu": false, ...}`` with the reasons.

Sections (each in try/except: its error is recorded in the JSON and the others still run; each gets a share of
the overall time budget and is skipped, marked ``"skipped": "time budget"``, when too little is left):

* ``pair_kernels``: CUDA SSIM+MSE pairs/s at 128^2 and 256^2 (generated set resident, real images streamed)
  against the CPU Numba kernels in the same run (best of 3, windows >= 1 s), the largest |GPU - CPU| difference
  on a sample of pairs, the time 10^9 pairs at 128^2 would take; LBP histograms GPU == CPU and images/s;
* ``faiss_knn``: exact k-NN, 1M x 1M, d=256, k=10 on FAISS-GPU (raw ``GpuIndexFlatL2`` and
  ``engine.search.knn`` with exact float64 re-ranking), falling back to the largest size that fits the budget
  (the size used is stated);
* ``onnx``: effnet-lite0 float32 and float16 images/s on the CUDA provider (session only, and ``embed`` with
  host preprocessing) against the CPU provider;
* ``pairs_e2e``: ``imprint pairs --device cuda`` end to end on synthetic PNGs, 10M pairs (100k real x k=100
  of 10k generated) or fewer when the budget is short (stated).

Synthetic CT-like phantoms (the tests' generator) are used throughout: timings, not accuracy figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

#: default overall budget (s): 8 minutes minus margin for start-up and writing
DEFAULT_BUDGET = 450.0
#: share of the budget each section may use (in this order)
SHARES = {"pair_kernels": 0.3, "faiss_knn": 0.2, "onnx": 0.2, "pairs_e2e": 0.3}


def gpu_facts() -> dict:
    """Device trials (engine.device) without the Numba simulator counting as a GPU."""
    from imprint.engine import device as D

    facts = {}
    sim = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
    for name, trial in (("onnxruntime", D.onnx_cuda_trial), ("faiss", D.faiss_gpu_trial),
                        ("pair_kernels", D.numba_cuda_trial)):
        try:
            ok, why = trial()
        except Exception as exc:  # noqa: BLE001
            ok, why = False, f"{type(exc).__name__}: {exc}"
        if name == "pair_kernels" and sim:
            ok, why = False, "NUMBA_ENABLE_CUDASIM is set (the simulator is not a GPU)"
        facts[name] = {"ok": bool(ok), "why": why}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        facts["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
    except Exception as exc:  # noqa: BLE001
        facts["nvidia_smi"] = f"unavailable ({type(exc).__name__})"
    return facts


#: timing protocol: best of REPEATS windows of at least MIN_WINDOW seconds (the smoke test lowers them)
REPEATS = 3
MIN_WINDOW = 1.0


def best_rate(fn, items: int, repeats: int | None = None, min_window: float | None = None) -> dict:
    """Best-of-``repeats`` items/s of ``fn()`` (one call = ``items`` items), each window >= ``min_window`` s."""
    repeats = REPEATS if repeats is None else repeats
    min_window = MIN_WINDOW if min_window is None else min_window
    fn()  # warm-up (compilation, allocation)
    rates = []
    for _ in range(repeats):
        n_calls = 0
        t0 = time.perf_counter()
        while True:
            fn()
            n_calls += 1
            dt = time.perf_counter() - t0
            if dt >= min_window:
                break
        rates.append(n_calls * items / dt)
    return {"best_per_s": max(rates), "all_per_s": rates}


def phantoms(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` CT-like uint8 images (a pool of distinct phantoms, shifted and re-noised to fill ``n``)."""
    from conftest import ct_like

    rng = np.random.default_rng(seed)
    pool = ct_like(rng, min(n, 256), size)
    if n <= pool.shape[0]:
        return pool[:n]
    out = np.empty((n, size, size), np.uint8)
    for s in range(0, n, pool.shape[0]):
        e = min(n, s + pool.shape[0])
        shift = int(rng.integers(-3, 4))
        noisy = np.roll(pool[: e - s], shift, axis=2).astype(np.int16) + rng.integers(-3, 4, (e - s, size, size))
        out[s:e] = np.clip(noisy, 0, 255).astype(np.uint8)
    return out


# ----------------------------------------------------------------------------- sections
def sec_pair_kernels(deadline: float, configs=((128, 4000, 40000, 10, 20000), (256, 2000, 10000, 10, 5000)),
                     lbp_n: int = 4096, tile: int | None = None) -> dict:
    """configs: (size, generated resident, real streamed, k, pairs for the CPU rate and the comparison)."""
    import imprint.kernels as K
    from imprint.kernels.cuda_similarity import DEFAULT_TILE, CudaPairScorer
    from imprint.kernels.cuda_texture import lbp_histograms_cuda

    tile = tile or DEFAULT_TILE
    res = {}
    for size, n_gen, n_real, k, n_cpu in configs:
        if time.perf_counter() > deadline:
            res[f"{size}"] = {"skipped": "time budget"}
            continue
        G = phantoms(n_gen, size, 1)
        R = phantoms(n_real, size, 2)
        rng = np.random.default_rng(3)
        pairs = np.stack([np.repeat(np.arange(n_real), k), rng.integers(0, n_gen, n_real * k)], 1)
        scorer = CudaPairScorer(G, tile=tile)
        gpu = best_rate(lambda: scorer.score(R, pairs), len(pairs))
        sub = pairs[:n_cpu]
        cpu = best_rate(lambda: (K.ssim_pairs(R, G, sub), K.mse_pairs(R, G, sub)), len(sub))
        s_gpu, m_gpu = scorer.score(R, sub)
        s_cpu = K.ssim_pairs(R, G, sub)
        m_cpu = K.mse_pairs(R, G, sub)
        res[f"{size}"] = {
            "pairs_per_call": int(len(pairs)), "generated_resident": n_gen, "real_streamed": n_real,
            "gpu_ssim_mse_pairs_per_s": gpu["best_per_s"], "cpu_ssim_plus_mse_pairs_per_s": cpu["best_per_s"],
            "speedup": gpu["best_per_s"] / cpu["best_per_s"],
            "max_abs_diff_ssim": float(np.abs(s_gpu - s_cpu).max()),
            "max_rel_diff_mse": float((np.abs(m_gpu - m_cpu) / np.maximum(m_cpu, 1e-9)).max()),
            "seconds_for_1e9_pairs": 1e9 / gpu["best_per_s"], "cpu_threads": os.cpu_count(),
        }
    if time.perf_counter() < deadline:
        lsize = configs[0][0]
        X = phantoms(lbp_n, lsize, 5)
        h_gpu = lbp_histograms_cuda(X, tile=tile)
        h_cpu = K.lbp_histograms(X)
        rate = best_rate(lambda: lbp_histograms_cuda(X, tile=tile), len(X))
        rate_cpu = best_rate(lambda: K.lbp_histograms(X), len(X))
        res[f"lbp_{lsize}"] = {"gpu_images_per_s": rate["best_per_s"], "cpu_images_per_s": rate_cpu["best_per_s"],
                          "bit_equal": bool(np.array_equal(h_gpu, h_cpu))}
    return res


def sec_faiss_knn(deadline: float) -> dict:
    import faiss

    from imprint.engine.device import gpu_resources
    from imprint.engine.search import knn

    d, k = 256, 10
    res = {}
    rng = np.random.default_rng(0)
    for n in (1_000_000, 300_000, 100_000):
        left = deadline - time.perf_counter()
        if left < 20:
            res["skipped"] = "time budget"
            break
        # estimate from a 100k-query probe before committing to n x n
        xb = rng.standard_normal((n, d), dtype=np.float32)
        index = faiss.GpuIndexFlatL2(gpu_resources(), d)
        index.add(xb)
        probe = min(n, 50_000)
        t0 = time.perf_counter()
        index.search(xb[:probe], k)
        est = (time.perf_counter() - t0) * n / probe
        if est > 0.6 * left and n > 100_000:
            res[f"probe_{n}"] = {"estimated_s": est, "left_s": left}
            del index, xb
            continue
        t0 = time.perf_counter()
        for s in range(0, n, 262_144):
            index.search(xb[s : s + 262_144], k)
        raw = time.perf_counter() - t0
        res.update({"n_base": n, "n_queries": n, "d": d, "k": k, "raw_gpu_flat_s": raw,
                    "raw_queries_per_s": n / raw})
        if time.perf_counter() + 2 * raw < deadline:
            q = xb[: min(n, 100_000)]
            t0 = time.perf_counter()
            knn(xb, q, k, index="Flat", use_gpu=True)
            dt = time.perf_counter() - t0
            res["engine_knn_exact_rerank"] = {"queries": int(q.shape[0]), "seconds_incl_build": dt}
        break
    return res


def sec_onnx(deadline: float) -> dict:
    from imprint.engine.backbone import embed, load_backbone, preprocess

    res = {}
    imgs = phantoms(4096, 128, 7)
    for name in ("effnet-lite0", "effnet-lite0-fp16"):
        if time.perf_counter() > deadline:
            res[name] = {"skipped": "time budget"}
            continue
        r = {}
        for prov, n in (("cuda", 4096), ("cpu", 256)):
            bb = load_backbone(name, providers=prov)
            if prov == "cuda" and not any(p == "CUDAExecutionProvider" for p in bb.providers[:1]):
                raise RuntimeError(f"{name}: session not on CUDA ({bb.providers})")
            bs = 256 if prov == "cuda" else 32
            x = preprocess(imgs[:bs], bb.spec)
            r[f"{prov}_session_images_per_s"] = best_rate(lambda: bb.run_preprocessed(x), bs)["best_per_s"]
            t0 = time.perf_counter()
            embed(imgs[:n], bb, batch_size=bs)
            r[f"{prov}_embed_images_per_s"] = n / (time.perf_counter() - t0)
        r["session_speedup"] = r["cuda_session_images_per_s"] / r["cpu_session_images_per_s"]
        res[name] = r
    return res


def _write_pngs(args):
    folder, start, arr = args
    from PIL import Image

    for i, im in enumerate(arr):
        Image.fromarray(im).save(os.path.join(folder, f"{start + i:07d}.png"), compress_level=1)


def sec_pairs_e2e(deadline: float, work: Path) -> dict:
    from multiprocessing import get_context

    left = deadline - time.perf_counter()
    # 10M pairs = 100k real x k=100 of 10k generated; scale down when the budget is short
    n_real = 100_000 if left > 150 else max(5_000, int(100_000 * left / 200))
    n_gen, k = 10_000, 100
    real, gen = work / "real", work / "gen"
    t0 = time.perf_counter()
    for folder, n, seed in ((gen, n_gen, 11), (real, n_real, 12)):
        folder.mkdir(parents=True, exist_ok=True)
        imgs = phantoms(n, 128, seed)
        chunks = [(str(folder), s, imgs[s : s + 2000]) for s in range(0, n, 2000)]
        with get_context("spawn").Pool(min(16, os.cpu_count() or 1)) as pool:  # no fork after CUDA init
            pool.map(_write_pngs, chunks)
    t_data = time.perf_counter() - t0
    out = work / "pairs.parquet"
    cmd = [sys.executable, "-m", "imprint", "pairs", "--real", str(real), "--generated", str(gen), "--k", str(k),
           "--out", str(out), "--batch", "8192", "--device", "cuda", "--json"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       timeout=max(30, deadline - time.perf_counter() + 30))
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"imprint pairs failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    s = json.loads(r.stdout)
    return {"n_real": n_real, "n_generated": n_gen, "k": k, "n_pairs": s["n_pairs"], "wall_s": wall,
            "pairs_per_s": s["n_pairs"] / wall, "timings": s["timings"], "rates": s["rates"],
            "device": s.get("device"), "data_generation_s": t_data}


# ----------------------------------------------------------------------------- driver
def run_sections(sections: dict, budget: float, start: float | None = None) -> dict:
    """Run ``{name: fn(deadline)}`` in order, each with its share of ``budget``; errors are recorded, not raised.

    Returns ``{name: result | {"error": ..., "traceback": ...} | {"skipped": "time budget"}}`` with each
    section's ``seconds``.
    """
    start = time.perf_counter() if start is None else start
    end = start + budget
    out = {}
    names = list(sections)
    for i, name in enumerate(names):
        now = time.perf_counter()
        rest = [SHARES.get(n, 1.0) for n in names[i:]]
        share = SHARES.get(name, 1.0) / sum(rest)
        deadline = now + share * (end - now)
        if end - now < 5:
            out[name] = {"skipped": "time budget"}
            continue
        t0 = time.perf_counter()
        try:
            res = sections[name](deadline)
            out[name] = res if isinstance(res, dict) else {"result": res}
        except BaseException as exc:  # noqa: BLE001 - one failure must not lose the other sections
            if isinstance(exc, KeyboardInterrupt):
                raise
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}",
                         "traceback": traceback.format_exc()[-2000:]}
        out[name]["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_check.json")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="overall seconds for the sections")
    ap.add_argument("--only", default=None, help="comma-separated sections to run (default: all)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gpu_check.json"
    facts = gpu_facts()
    gpu = any(v["ok"] for k, v in facts.items() if isinstance(v, dict))
    doc = {"gpu": gpu, "facts": facts, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "budget_s": args.budget, "command": " ".join([sys.executable] + sys.argv)}
    if not gpu:
        doc["note"] = "no usable GPU here: nothing measured"
        write_json(path, doc)
        print(f"no GPU: wrote {path}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="imprint-gpu-check-"))
    sections = {"pair_kernels": sec_pair_kernels, "faiss_knn": sec_faiss_knn, "onnx": sec_onnx,
                "pairs_e2e": lambda dl: sec_pairs_e2e(dl, work)}
    if args.only:
        keep = [s.strip() for s in args.only.split(",")]
        sections = {k: v for k, v in sections.items() if k in keep}
    doc["sections"] = run_sections(sections, args.budget - (time.perf_counter() - t_start), time.perf_counter())
    doc["total_s"] = round(time.perf_counter() - t_start, 1)
    write_json(path, doc)
    print(json.dumps({k: (v.get("error") or "ok") for k, v in doc["sections"].items()}))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
