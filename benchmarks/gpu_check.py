"""One prepared device check for a GPU machine (issue 14): writes OUT/gpu_check.json in at most 8 minutes.

    IMPRINT_MODELS_DIR=models/onnx python benchmarks/gpu_check.py --out /tmp/gpu_check [--budget 420]
    python benchmarks/gpu_check.py --simulate --out /tmp/gpu_check_sim      # the dry run on any CPU machine

On the lent device machine run ``bash scripts/gpu_device_check.sh`` instead (it installs the carried wheels and
calls this script; see that file).  On a machine without a usable GPU (and without ``--simulate``) it exits 0 at
once and writes ``{"gpu": false, ...}`` with each stage's reason.

Sections, in this order, each in **its own process** (a CUDA fault or a hang cannot take the others with it):

* ``pair_kernels``: CUDA SSIM+MSE pairs/s at 128^2 and 256^2 (generated set resident, real images streamed)
  against the CPU Numba kernels in the same run (best of 3, windows >= 1 s), the largest |GPU - CPU| difference
  on a sample of pairs, the time 10^9 pairs at 128^2 would take; LBP histograms GPU == CPU and images/s;
* ``faiss_knn``: exact k-NN, 1M x 1M, d=256, k=10 on FAISS-GPU (raw ``GpuIndexFlatL2`` and
  ``engine.search.knn`` with exact float64 re-ranking), or the largest size a probe says fits (stated);
* ``onnx``: effnet-lite0 float32 and float16 images/s on the CUDA provider (session only, and ``embed`` with
  host preprocessing) against the CPU provider;
* ``pairs_e2e``: ``imprint pairs --device auto`` end to end on synthetic PNGs (a probe run, then up to 10M pairs
  = 100k real x k=100 of 10k generated, as many as the time left allows; the device each stage used is stated).

Time budget (``--budget``, default 420 s, counted from the start): each section gets a share of what is left
(``SHARES``; a section that finishes early or is skipped leaves its time to the next ones).  Inside a section,
sizes are chosen from a timed probe so the measurement fits its share; a section that still overruns is killed
``GRACE_S`` after its share ends, and what it had measured survives: sections record every figure as soon as it
exists (``OUT/<section>.partial.json``), and ``OUT/gpu_check.json`` is rewritten after every section.  So the
whole run ends by ``budget + GRACE_S`` seconds however the GPU behaves.

``--simulate``: the dry run of every code path on a CPU machine: Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) runs the pair and LBP kernels on tiny images, a CPU ``faiss.IndexFlatL2`` stands in
for ``GpuIndexFlatL2``, the CPU execution provider for CUDA, and ``imprint pairs`` runs on a few dozen images.
The JSON then says ``"simulated": true`` at the top and in every section: its numbers are **not** GPU figures.

Synthetic CT-like phantoms (the tests' generator) are used throughout: timings, not accuracy figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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

#: default overall budget (s): 8 minutes minus the margin for start-up, the last kill and the transfers
DEFAULT_BUDGET = 420.0
#: a section still running this long after its share ended is killed (its partial figures are kept)
GRACE_S = 15.0
#: a section is skipped when less than this is left of the budget
MIN_SECTION_S = 5.0
#: share of the remaining budget each section may use (in this order)
SHARES = {"pair_kernels": 0.35, "faiss_knn": 0.2, "onnx": 0.15, "pairs_e2e": 0.3}
SECTIONS = tuple(SHARES)

#: sizes of the real run and of the simulated dry run (same code, other numbers)
SIZES = {
    "gpu": {
        # (size, generated resident, real streamed, k, pairs compared with the CPU kernels)
        "pair_configs": ((128, 4000, 40000, 10, 20000), (256, 2000, 10000, 10, 5000)),
        "tile": None, "lbp_n": 4096, "lbp_size": 128, "call_s": 2.0,
        "knn": {"d": 256, "k": 10, "n": (1_000_000, 300_000, 100_000), "probe": 50_000, "chunk": 262_144,
                "rerank_queries": 100_000},
        "onnx": {"models": ("effnet-lite0", "effnet-lite0-fp16"), "n_images": 4096, "n_cpu": 256,
                 "batch_gpu": 256, "batch_cpu": 32},
        "e2e": {"n_gen": 10_000, "probe_real": 2_000, "max_real": 100_000, "k": 100, "size": 128, "batch": 8192},
        "repeats": 3, "min_window": 1.0,
    },
    "simulated": {
        "pair_configs": ((12, 2, 2, 2, 4), (14, 2, 2, 1, 2)),
        "tile": 4, "lbp_n": 1, "lbp_size": 8, "call_s": 0.5,
        "knn": {"d": 16, "k": 4, "n": (4_000, 1_000), "probe": 500, "chunk": 700, "rerank_queries": 200},
        "onnx": {"models": ("effnet-lite0", "effnet-lite0-fp16", "pixel"), "n_images": 16, "n_cpu": 8,
                 "batch_gpu": 8, "batch_cpu": 4},
        "e2e": {"n_gen": 12, "probe_real": 6, "max_real": 14, "k": 3, "size": 32, "batch": 5},
        "repeats": 1, "min_window": 0.0,
    },
}

#: what a real run needs installed beyond the base dependencies (reported when a section cannot run)
NEEDS = {
    "pair_kernels": "numba-cuda (the `gpu` extra's numba-cuda[cu12], or any numba-cuda matching the driver)",
    "faiss_knn": "faiss-gpu-cu12 with its CUDA 12 cuBLAS/cudart wheels (the `gpu` extra)",
    "onnx": "onnxruntime-gpu with its CUDA/cuDNN libraries (the `gpu` extra) and the effnet-lite0 models built",
}

STAND_INS = {
    "pair_kernels": "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1) on tiny images",
    "faiss_knn": "CPU faiss.IndexFlatL2 instead of GpuIndexFlatL2, small n and d",
    "onnx": "CPUExecutionProvider instead of CUDAExecutionProvider, a few images",
    "pairs_e2e": "imprint pairs --device auto on a few dozen 32x32 images (pair kernels on the CPU)",
}


# ----------------------------------------------------------------------------- helpers
def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as JSON atomically (temp file + rename): a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


class Ctx:
    """What a section gets: its deadline, its sizes, and :meth:`put` to record a figure at once.

    Attributes
    ----------
    until : float
        Epoch seconds (``time.time()``) by which the section should be done.
    simulated : bool
    sizes : dict
        ``SIZES["simulated" | "gpu"]``.
    work : Path
        Scratch folder (removed by the caller).
    result : dict
        Everything recorded so far (also on disk in ``partial``).
    """

    def __init__(self, section: str, until: float, simulated: bool, partial: Path | None, work: Path):
        self.section = section
        self.until = float(until)
        self.simulated = bool(simulated)
        self.sizes = SIZES["simulated" if simulated else "gpu"]
        self.partial = partial
        self.work = Path(work)
        self.result: dict = {"simulated": True, "stand_in": STAND_INS.get(section)} if simulated else {}

    def left(self) -> float:
        """Seconds left before :attr:`until`."""
        return self.until - time.time()

    def put(self, key: str, value) -> None:
        """Record ``result[key] = value`` and rewrite the partial file (a killed section keeps it)."""
        self.result[key] = value
        if self.partial is not None:
            write_json(self.partial, self.result)


def best_rate(fn, items: int, until: float, repeats: int, min_window: float, warm: bool = True) -> dict:
    """Best-of-``repeats`` items/s of ``fn()`` (one call = ``items`` items), each window >= ``min_window`` s.

    Stops after the first window when another would end past ``until`` (epoch s); the number of windows
    measured is returned with the rates.  ``warm=False``: ``fn`` already ran once (no warm-up call).
    """
    if warm:
        fn()  # warm-up (compilation, allocation)
    rates = []
    for _ in range(max(1, repeats)):
        n_calls = 0
        t0 = time.perf_counter()
        while True:
            fn()
            n_calls += 1
            dt = time.perf_counter() - t0
            if dt >= min_window:
                break
        rates.append(n_calls * items / dt)
        if time.time() + dt > until:
            break
    return {"best_per_s": max(rates), "all_per_s": rates, "windows": len(rates)}


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
        # int8 noise, int16 sums: ~4x less memory traffic than int64 (the data set is made inside the time budget)
        noisy = np.roll(pool[: e - s], shift, axis=2).astype(np.int16) + rng.integers(-3, 4, (e - s, size, size),
                                                                                     dtype=np.int8)
        out[s:e] = np.clip(noisy, 0, 255).astype(np.uint8)
    return out


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# ----------------------------------------------------------------------------- sections
def _variant_rates(ctx: Ctx, v: str, G, R, pairs, k: int, tile: int, until: float) -> tuple[dict, object]:
    """One pair-kernel variant: end-to-end ``score()`` pairs/s (host work, copies and kernels) and the pair
    kernel alone (``kernel_rate``), both best of ``repeats`` windows >= ``min_window`` s, sized by a probe."""
    from imprint.kernels.cuda_similarity import CudaPairScorer

    z = ctx.sizes
    reps, win = z["repeats"], z["min_window"]
    scorer, t_build = _timed(lambda: CudaPairScorer(G, tile=tile, variant=v))
    _, t_compile = _timed(lambda: scorer.score(R[:1], pairs[:1]))  # first call compiles the kernels
    # probe: one call on a tenth of the pairs gives the rate; a timed call then lasts <= call_s
    probe = pairs[: max(k, (len(pairs) // 10) // k * k)]
    # pairs are grouped k per real image in order: a prefix of them needs a prefix of R
    _, t_probe = _timed(lambda: scorer.score(R[: len(probe) // k], probe))
    est = len(probe) / max(t_probe, 1e-9)
    n_call = int(min(len(pairs), max(k, est * min(z["call_s"], (until - time.time()) / 8)))) // k * k
    sub = pairs[: max(k, n_call)]
    rec = {"pairs_per_call": int(len(sub)), "scorer_build_s": t_build, "first_call_s": t_compile,
           "probe_pairs_per_s": est, "scaled_down": bool(len(sub) < len(pairs))}
    R_sub = R[: len(sub) // k]
    gpu = best_rate(lambda: scorer.score(R_sub, sub), len(sub), time.time() + (until - time.time()) * 0.6, reps,
                    win, warm=False)
    rec.update(gpu_ssim_mse_pairs_per_s=gpu["best_per_s"], gpu_all_pairs_per_s=gpu["all_per_s"],
               gpu_windows=gpu["windows"], seconds_for_1e9_pairs=1e9 / gpu["best_per_s"])
    if time.time() + 2 * max(win, 0.05) < until:
        kr = scorer.kernel_rate(R_sub, sub, min_window=win, repeats=reps)
        rec.update(kernel_only_pairs_per_s=kr["best_per_s"], kernel_only_all_per_s=kr["all_per_s"],
                   kernel_only_pairs_per_launch=kr["pairs"],
                   host_and_copies_share=max(0.0, 1.0 - gpu["best_per_s"] / kr["best_per_s"]))
    else:
        rec["kernel_only"] = "skipped: time budget"
    return rec, scorer


def sec_pair_kernels(ctx: Ctx) -> dict:
    """CUDA SSIM+MSE (every kernel variant) and LBP against the CPU kernels; sizes cut to what probes say fits.

    Per image size: each variant of :mod:`kernels.cuda_similarity` (``VARIANTS``, the default first) is timed
    end to end (``score``) and kernel-only (``kernel_rate``), then the CPU kernels on a subset, then every
    variant's values are compared with the CPU's on that subset.  The top-level figures of a size are the
    default variant's (what ``imprint pairs`` uses); ``variants`` holds each one's, ``speedup_vs_<variant>``
    the default's end-to-end ratio to the others measured in the same run.
    """
    import numba

    import imprint.kernels as K
    from imprint.kernels.cuda_similarity import DEFAULT_TILE, DEFAULT_VARIANT, VARIANTS
    from imprint.kernels.cuda_texture import lbp_histograms_cuda

    if not ctx.simulated:
        from imprint.engine.device import numba_cuda_trial

        ok, why = numba_cuda_trial()
        if not ok:
            return {"skipped": f"Numba CUDA unavailable: {why}", "needs": NEEDS["pair_kernels"]}
    z = ctx.sizes
    tile = z["tile"] or DEFAULT_TILE
    reps, win = z["repeats"], z["min_window"]
    configs = z["pair_configs"]
    variants = [DEFAULT_VARIANT] + [v for v in VARIANTS if v != DEFAULT_VARIANT]
    ctx.put("tile", tile)
    ctx.put("default_variant", DEFAULT_VARIANT)
    ctx.put("cpu_threads", numba.get_num_threads())
    for i, (size, n_gen, n_real, k, n_cpu) in enumerate(configs):
        key = f"{size}"
        left = ctx.left()
        # the remaining configs and LBP share what is left (LBP: half a config's share)
        until = time.time() + left / (len(configs) - i + 0.5)
        if left < 6 * max(win, 0.1):
            ctx.put(key, {"skipped": "time budget"})
            continue
        (G, R), t_data = _timed(lambda: (phantoms(n_gen, size, 1), phantoms(n_real, size, 2)))
        rng = np.random.default_rng(3)
        pairs = np.stack([np.repeat(np.arange(n_real), k), rng.integers(0, n_gen, n_real * k)], 1)
        rec = {"generated_resident": n_gen, "real_streamed": n_real, "k": k, "data_generation_s": t_data,
               "variants": {}}
        ctx.put(key, rec)
        scorers = {}
        # each variant gets an equal part of 80% of the size's share; the CPU kernels and the comparison the rest
        for j, v in enumerate(variants):
            v_until = time.time() + 0.8 * (until - time.time()) / (len(variants) - j)
            if v_until - time.time() < 3 * max(win, 0.05):
                rec["variants"][v] = {"skipped": "time budget"}
                continue
            try:
                rec["variants"][v], scorers[v] = _variant_rates(ctx, v, G, R, pairs, k, tile, v_until)
            except Exception as exc:  # noqa: BLE001 - one variant failing must not hide the others' figures
                rec["variants"][v] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            ctx.put(key, rec)
        if DEFAULT_VARIANT in scorers:
            rec.update({f: rec["variants"][DEFAULT_VARIANT][f] for f in (
                "pairs_per_call", "scorer_build_s", "first_call_s", "probe_pairs_per_s", "scaled_down",
                "gpu_ssim_mse_pairs_per_s", "gpu_windows", "seconds_for_1e9_pairs")})
            for v in scorers:
                if v != DEFAULT_VARIANT:
                    rec[f"speedup_vs_{v}"] = (rec["gpu_ssim_mse_pairs_per_s"]
                                              / rec["variants"][v]["gpu_ssim_mse_pairs_per_s"])
            ctx.put(key, rec)
        # the CPU kernels on the same pairs (fewer: they are slower), then the comparison
        sub = pairs[:n_cpu]
        _, t_cpu = _timed(lambda: (K.ssim_pairs(R, G, sub), K.mse_pairs(R, G, sub)))  # compiles / loads cache
        n_c = int(min(len(sub), max(1, len(sub) * min(z["call_s"], max(0.05, until - time.time()) / 6)
                                    / max(t_cpu, 1e-9))))
        sub = sub[:n_c]
        cpu = best_rate(lambda: (K.ssim_pairs(R, G, sub), K.mse_pairs(R, G, sub)), len(sub), until, reps, win,
                        warm=False)
        s_cpu = K.ssim_pairs(R, G, sub)
        m_cpu = K.mse_pairs(R, G, sub)
        rec.update(cpu_ssim_plus_mse_pairs_per_s=cpu["best_per_s"], cpu_pairs_compared=int(len(sub)))
        worst_s = worst_m = 0.0
        for v, sc in scorers.items():
            s_gpu, m_gpu = sc.score(R, sub)
            vr = rec["variants"][v]
            vr.update(max_abs_diff_ssim=float(np.abs(s_gpu - s_cpu).max()),
                      max_rel_diff_mse=float((np.abs(m_gpu - m_cpu) / np.maximum(m_cpu, 1e-9)).max()),
                      speedup_vs_cpu=vr["gpu_ssim_mse_pairs_per_s"] / cpu["best_per_s"])
            worst_s = max(worst_s, vr["max_abs_diff_ssim"])
            worst_m = max(worst_m, vr["max_rel_diff_mse"])
        rec.update(max_abs_diff_ssim=worst_s, max_rel_diff_mse=worst_m)  # the worst over the variants
        if "gpu_ssim_mse_pairs_per_s" in rec:
            rec["speedup"] = rec["gpu_ssim_mse_pairs_per_s"] / cpu["best_per_s"]
        ctx.put(key, rec)
        del scorers
    lsize = z["lbp_size"]
    key = f"lbp_{lsize}"
    if ctx.left() < 2 * max(win, 0.1):
        ctx.put(key, {"skipped": "time budget"})
        return ctx.result
    X = phantoms(z["lbp_n"], lsize, 5)
    h_gpu, t_first = _timed(lambda: lbp_histograms_cuda(X, tile=tile))
    h_cpu = K.lbp_histograms(X)
    rec = {"images": int(len(X)), "bit_equal": bool(np.array_equal(h_gpu, h_cpu)), "first_call_s": t_first}
    ctx.put(key, rec)
    until = time.time() + ctx.left() / 2
    rec["gpu_images_per_s"] = best_rate(lambda: lbp_histograms_cuda(X, tile=tile), len(X), until, reps,
                                        win, warm=False)["best_per_s"]
    ctx.put(key, rec)
    rec["cpu_images_per_s"] = best_rate(lambda: K.lbp_histograms(X), len(X), ctx.until, reps, win)["best_per_s"]
    ctx.put(key, rec)
    return ctx.result


def sec_faiss_knn(ctx: Ctx) -> dict:
    """Exact k-NN n x n on FAISS-GPU (CPU IndexFlatL2 when simulated), n the largest a probe says fits."""
    try:
        import faiss
    except ImportError as exc:
        return {"skipped": f"faiss is not installed ({exc})", "needs": NEEDS["faiss_knn"]}

    from imprint.engine.search import knn

    z = ctx.sizes["knn"]
    d, k = z["d"], z["k"]
    if ctx.simulated:
        def make_index():
            return faiss.IndexFlatL2(d)
    else:
        from imprint.engine.device import faiss_gpu_trial, gpu_resources

        ok, why = faiss_gpu_trial()
        if not ok:
            return {"skipped": f"FAISS GPU unavailable: {why}", "needs": NEEDS["faiss_knn"]}
        res = gpu_resources()

        def make_index():
            return faiss.GpuIndexFlatL2(res, d)
    ctx.put("d", d)
    ctx.put("k", k)
    rng = np.random.default_rng(0)
    sizes = z["n"]
    for j, n in enumerate(sizes):
        left = ctx.left()
        if left < 10 * max(ctx.sizes["min_window"], 0.1):
            ctx.put("skipped", "time budget")
            break
        xb = rng.standard_normal((n, d), dtype=np.float32)
        index = make_index()
        _, t_add = _timed(lambda: index.add(xb))
        probe = min(n, z["probe"])
        index.search(xb[:min(probe, 64)], k)  # warm-up
        _, t_probe = _timed(lambda: index.search(xb[:probe], k))
        est = t_probe * n / probe
        ctx.put(f"probe_{n}", {"estimated_s": est, "left_s": ctx.left(), "add_s": t_add})
        if est > 0.6 * ctx.left() and j + 1 < len(sizes):
            del index, xb
            continue
        raw = 0.0
        done = 0
        t0 = time.perf_counter()
        for s in range(0, n, z["chunk"]):
            index.search(xb[s : s + z["chunk"]], k)
            done = min(n, s + z["chunk"])
            raw = time.perf_counter() - t0
            if time.time() + raw / done * z["chunk"] > ctx.until:  # the next chunk would overrun the share
                break
        ctx.put("result", {"n_base": n, "n_queries": done, "complete": done == n, "raw_flat_s": raw,
                           "raw_queries_per_s": done / raw, "estimated_s_for_all_queries": raw * n / done})
        if time.time() + 3 * raw * min(1.0, z["rerank_queries"] / done) < ctx.until:
            q = xb[: min(n, z["rerank_queries"])]
            _, dt = _timed(lambda: knn(xb, q, k, index="Flat", use_gpu=not ctx.simulated))
            ctx.put("engine_knn_exact_rerank", {"queries": int(q.shape[0]), "seconds_incl_build": dt})
        break
    return ctx.result


def sec_onnx(ctx: Ctx) -> dict:
    """Backbone images/s on the CUDA provider against the CPU provider (CPU stands in when simulated)."""
    from imprint.engine.backbone import embed, load_backbone, preprocess
    from imprint.engine.errors import ImprintError

    z = ctx.sizes["onnx"]
    if not ctx.simulated:
        from imprint.engine.device import onnx_cuda_trial

        ok, why = onnx_cuda_trial()
        if not ok:
            return {"skipped": f"onnxruntime CUDA provider unavailable: {why}", "needs": NEEDS["onnx"]}
    gpu_prov = "cpu" if ctx.simulated else "cuda"
    imgs = phantoms(z["n_images"], 128, 7)
    models = z["models"]
    for i, name in enumerate(models):
        if ctx.left() < 3 * max(ctx.sizes["min_window"], 0.1):
            ctx.put(name, {"skipped": "time budget"})
            continue
        until = time.time() + ctx.left() / (len(models) - i)
        r = {}
        try:
            # "cuda" is the CPU provider standing in when simulated (the section says so)
            for label, prov, n, bs in (("cuda", gpu_prov, z["n_images"], z["batch_gpu"]),
                                       ("cpu", "cpu", z["n_cpu"], z["batch_cpu"])):
                bb = load_backbone(name, providers=prov)
                if prov == "cuda" and bb.providers[:1] != ["CUDAExecutionProvider"]:
                    raise RuntimeError(f"{name}: session not on CUDA ({bb.providers})")
                x = preprocess(imgs[:bs], bb.spec)
                sess_until = time.time() + (until - time.time()) / 4
                r[f"{label}_session_images_per_s"] = best_rate(lambda: bb.run_preprocessed(x), bs, sess_until,
                                                               ctx.sizes["repeats"],
                                                               ctx.sizes["min_window"])["best_per_s"]
                ctx.put(name, r)
                _, t = _timed(lambda: embed(imgs[:n], bb, batch_size=bs))
                r[f"{label}_embed_images_per_s"] = n / t
                ctx.put(name, r)
                if label == "cuda" and bb.on_gpu:
                    # same run: the pipeline with one preprocessing thread (IMPRINT_THREADS=1 sets only that on a
                    # GPU session) against all cores, alternating, best of 2 each
                    best = {"all": n / t, "one": 0.0}
                    for _rep in range(2):
                        for key in ("one", "all"):
                            old = os.environ.get("IMPRINT_THREADS")
                            if key == "one":
                                os.environ["IMPRINT_THREADS"] = "1"
                            try:
                                _, t2 = _timed(lambda: embed(imgs[:n], bb, batch_size=bs))
                            finally:
                                if old is None:
                                    os.environ.pop("IMPRINT_THREADS", None)
                                else:
                                    os.environ["IMPRINT_THREADS"] = old
                            best[key] = max(best[key], n / t2)
                    r["cuda_embed_images_per_s"] = best["all"]
                    r["cuda_embed_one_prep_thread_images_per_s"] = best["one"]
                    ctx.put(name, r)
        except ImprintError as exc:  # not built here: say so, measure the others
            if "not built" not in str(exc) and "unknown" not in str(exc).lower():
                raise
            r["skipped"] = str(exc)
            ctx.put(name, r)
            continue
        r["session_speedup"] = r["cuda_session_images_per_s"] / r["cpu_session_images_per_s"]
        ctx.put(name, r)
        # the same images through both providers: the CUDA embedding must be the CPU one (fp16 within its
        # precision), else the speed is of a different model
        try:
            m = min(64, z["n_cpu"])
            e_g = embed(imgs[:m], load_backbone(name, providers=gpu_prov), batch_size=min(m, z["batch_gpu"]))
            e_c = embed(imgs[:m], load_backbone(name, providers="cpu"), batch_size=min(m, z["batch_cpu"]))
            e_g, e_c = e_g.astype(np.float64), e_c.astype(np.float64)
            cos = (e_g * e_c).sum(1) / np.maximum(np.linalg.norm(e_g, axis=1) * np.linalg.norm(e_c, axis=1), 1e-30)
            r["agreement_images"] = int(m)
            r["max_abs_diff_vs_cpu"] = float(np.abs(e_g - e_c).max())
            r["max_rel_diff_vs_cpu"] = float(np.abs(e_g - e_c).max() / max(np.abs(e_c).max(), 1e-30))
            r["min_cosine_vs_cpu"] = float(cos.min())
        except Exception as exc:  # noqa: BLE001 - recorded, the speed figures stand
            r["agreement_error"] = f"{type(exc).__name__}: {exc}"[:300]
        ctx.put(name, r)
    return ctx.result


def _write_pngs(args):
    folder, start, arr = args
    from PIL import Image

    for i, im in enumerate(arr):
        Image.fromarray(im).save(os.path.join(folder, f"{start + i:07d}.png"), compress_level=1)


def _pngs(folder: Path, first: int, imgs: np.ndarray) -> None:
    """Write ``imgs`` as ``folder/<first+i>.png`` (a process pool for large sets: no fork after CUDA init)."""
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [(str(folder), first + s, imgs[s : s + 2000]) for s in range(0, len(imgs), 2000)]
    if len(imgs) <= 2000:
        _write_pngs(chunks[0])
        return
    from multiprocessing import get_context

    with get_context("spawn").Pool(min(16, os.cpu_count() or 1)) as pool:
        pool.map(_write_pngs, chunks)


def _pixel_models_dir(ctx: Ctx) -> str | None:
    """The models folder holding the ``pixel`` backbone ``imprint pairs`` uses; built into the scratch folder
    (no torch, no network needed) when the configured one lacks it.  None: the configured one has it."""
    from imprint.engine.errors import ImprintError
    from imprint.models.registry import resolve

    try:
        if resolve("pixel").onnx_path is not None:
            return None
    except ImprintError:
        pass
    from imprint.models.build import build_all

    d = ctx.work / "models"
    build_all(d, only=["pixel"])
    ctx.put("pixel_model_built", str(d))
    return str(d)


def _run_pairs(ctx: Ctx, real: Path, gen: Path, out: Path, k: int, batch: int, timeout: float,
               models_dir: str | None = None) -> dict:
    env = dict(os.environ)
    if models_dir:
        env["IMPRINT_MODELS_DIR"] = models_dir
    if ctx.simulated:  # the simulator would run the pair kernels in Python: the dry run checks the job's plumbing
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    cmd = [sys.executable, "-m", "imprint", "pairs", "--real", str(real), "--generated", str(gen), "--k", str(k),
           "--out", str(out), "--batch", str(batch), "--device", "auto", "--json"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(5.0, timeout))
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"imprint pairs failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    s = json.loads(r.stdout)
    return {"n_real": s["n_real"], "n_generated": s["n_generated"], "k": s["k"], "n_pairs": s["n_pairs"],
            "wall_s": wall, "pairs_per_s": s["n_pairs"] / wall, "timings": s["timings"], "rates": s["rates"],
            "device": s.get("device")}


def sec_pairs_e2e(ctx: Ctx) -> dict:
    """``imprint pairs --device auto``: a probe run, then as many real images as the time left allows."""
    z = ctx.sizes["e2e"]
    n_gen, k, size, batch = z["n_gen"], z["k"], z["size"], z["batch"]
    real, gen = ctx.work / "real", ctx.work / "gen"
    _, t_gen = _timed(lambda: _pngs(gen, 0, phantoms(n_gen, size, 11)))
    n_probe = z["probe_real"]
    _, t_real = _timed(lambda: _pngs(real, 0, phantoms(n_probe, size, 12)))
    ctx.put("data_generation_s", t_gen + t_real)
    models = _pixel_models_dir(ctx)
    probe = _run_pairs(ctx, real, gen, ctx.work / "probe.parquet", k, batch, ctx.left(), models)
    ctx.put("probe", probe)
    # per real image: its PNG + its share of the job; the fixed cost (start-up, generated set) is paid again
    per_real = (probe["wall_s"] + t_real) / n_probe
    fixed = min(probe["wall_s"] * 0.5, probe["timings"].get("read_generated_s", 0.0) + 5.0)
    n_full = int(min(z["max_real"], (0.8 * ctx.left() - fixed) / max(per_real, 1e-9)))
    if n_full < 2 * n_probe:
        ctx.put("full", {"skipped": f"time budget (room for {max(n_full, 0)} real images, probe had {n_probe})"})
        return ctx.result
    _, t_more = _timed(lambda: _pngs(real, n_probe, phantoms(n_full - n_probe, size, 13)))
    full = _run_pairs(ctx, real, gen, ctx.work / "full.parquet", k, batch, ctx.left() + GRACE_S / 2, models)
    full["data_generation_s"] = t_more
    full["target_pairs"] = z["max_real"] * k
    ctx.put("full", full)
    return ctx.result


_SECTION_FNS = {"pair_kernels": sec_pair_kernels, "faiss_knn": sec_faiss_knn, "onnx": sec_onnx,
                "pairs_e2e": sec_pairs_e2e}


# ----------------------------------------------------------------------------- driver
def gpu_facts(simulated: bool = False) -> dict:
    """Device trials (engine.device); the Numba simulator never counts as a GPU."""
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
    versions = {}
    for mod in ("numpy", "numba", "numba_cuda", "onnxruntime", "faiss", "pyarrow"):
        try:
            m = __import__(mod)
            versions[mod] = str(getattr(m, "__version__", "?"))
        except Exception as exc:  # noqa: BLE001
            versions[mod] = f"missing ({type(exc).__name__})"
    facts["versions"] = versions
    facts["python"] = sys.version.split()[0]
    facts["cpu_count"] = os.cpu_count()
    return facts


def launch_section(name: str, until: float, hard_s: float, out_dir: Path, simulated: bool) -> dict:
    """Run section ``name`` in a child process (its own process group), killed after ``hard_s`` seconds.

    Returns what the section recorded (its partial file), with ``"killed"`` when it was stopped and
    ``"error"`` when it failed without saying why (a crash: the exit status).
    """
    partial = out_dir / f"{name}.partial.json"
    partial.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--until", repr(until),
           "--hard-until", repr(time.time() + hard_s), "--partial", str(partial), "--out", str(out_dir)]
    cmd += ["--simulate"] if simulated else []
    p = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    killed = False
    try:
        rc = p.wait(timeout=max(1.0, hard_s))
    except subprocess.TimeoutExpired:
        killed = True
    except BaseException:  # Ctrl-C of the whole check: take the section down with it
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise
    if killed:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the section and anything it started (imprint pairs, PNG writers)
        except ProcessLookupError:
            pass
        rc = p.wait()
    res = read_json(partial)
    if killed:
        res["killed"] = f"still running {hard_s:.0f} s after it started (its share plus {GRACE_S:.0f} s): " \
                        "the figures above are what it had measured"
    elif rc != 0 and "error" not in res:
        res["error"] = f"section process exited with status {rc}"
    if simulated:
        res["simulated"] = True
        res.setdefault("stand_in", STAND_INS[name])
    return res


def run_sections(names, budget: float, launch, on_update=None, start: float | None = None) -> dict:
    """Run the sections in order, each with its share of what is left of ``budget`` seconds.

    Parameters
    ----------
    names : sequence of str
    budget : float
        Overall seconds, counted from ``start`` (epoch; default now).
    launch : callable(name, until_epoch, hard_s) -> dict
        Runs one section; ``until`` is its soft deadline, ``hard_s`` when it must be stopped.
    on_update : callable(dict) or None
        Called with the results so far after every section (the caller rewrites the JSON).

    Returns
    -------
    dict
        ``{name: result | {"skipped": "time budget"}}``, each with its ``seconds``.
    """
    start = time.time() if start is None else start
    end = start + budget
    out: dict = {}
    names = list(names)
    for i, name in enumerate(names):
        now = time.time()
        if end - now < MIN_SECTION_S:
            out[name] = {"skipped": "time budget", "seconds": 0.0}
        else:
            rest = sum(SHARES.get(n, 1.0) for n in names[i:])
            until = now + SHARES.get(name, 1.0) / rest * (end - now)
            hard = until + GRACE_S - now  # read at call time: main() may have changed it (--grace)
            t0 = time.time()
            res = launch(name, until, hard)
            out[name] = res if isinstance(res, dict) else {"result": res}
            out[name]["seconds"] = round(time.time() - t0, 2)
        if on_update is not None:
            on_update(out)
    return out


TARGETS = {"ssim_1e9_pairs_128_s": 600.0, "knn_1m_s": 300.0, "effnet_fp16_images_per_s": 5000.0}


def targets(sections: dict) -> dict:
    """Issue 14's GPU targets against the measured figures (None where not measured)."""
    pk = sections.get("pair_kernels", {}).get("128", {})
    kn = sections.get("faiss_knn", {}).get("result", {})
    on = sections.get("onnx", {}).get("effnet-lite0-fp16", {})
    t = {"ssim_1e9_pairs_128_s": pk.get("seconds_for_1e9_pairs"),
         "knn_1m_s": kn.get("estimated_s_for_all_queries") if kn.get("n_base") == 1_000_000 else None,
         "effnet_fp16_images_per_s": on.get("cuda_session_images_per_s")}
    met = {}
    for key, v in t.items():
        if v is None:
            met[key] = None
        elif key.endswith("_per_s"):
            met[key] = v >= TARGETS[key]
        else:
            met[key] = v <= TARGETS[key]
    return {"measured": t, "target": TARGETS, "met": met}


def _child(args) -> int:
    """``--section NAME``: run one section in this process, recording into ``--partial``.

    The section bounds itself too: a few seconds after ``--hard-until`` it kills its own process group (itself
    and what it started), so it cannot outlive a parent that was killed before it could do so.
    """
    if args.hard_until is not None:
        def _die(signum, frame):  # pragma: no cover - only when the parent is gone
            os.killpg(os.getpgrp(), signal.SIGKILL)

        signal.signal(signal.SIGALRM, _die)
        signal.alarm(max(1, int(args.hard_until - time.time() + 5)))
    partial = Path(args.partial)
    work = Path(tempfile.mkdtemp(prefix=f"imprint-gpu-check-{args.section}-"))
    ctx = Ctx(args.section, args.until, args.simulate, partial, work)
    ctx.put("started", time.strftime("%H:%M:%S", time.gmtime()))
    if os.environ.get("IMPRINT_GPU_CHECK_HANG") == args.section:  # the test of the time limit: hang after a figure
        ctx.put("before_hang", 1)
        time.sleep(3600)
    try:
        res = _SECTION_FNS[args.section](ctx)
        if res is not ctx.result:
            ctx.result.update(res)
        ctx.put("finished", True)
        return 0
    except Exception as exc:  # noqa: BLE001 - recorded, the parent goes on with the next section
        ctx.put("error", f"{type(exc).__name__}: {str(exc)[:500]}")
        ctx.put("traceback", traceback.format_exc()[-2000:])
        return 1
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    global GRACE_S
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_check.json")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                    help=f"overall seconds from the start; the run ends by budget + {GRACE_S:.0f} s")
    ap.add_argument("--only", default=None, help="comma-separated sections to run (default: all)")
    ap.add_argument("--simulate", action="store_true",
                    help="dry run on a CPU machine: CUDA simulator, CPU stand-ins, tiny sizes (marked simulated)")
    ap.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    ap.add_argument("--until", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--grace", type=float, default=GRACE_S, help=argparse.SUPPRESS)
    ap.add_argument("--hard-until", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--partial", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    GRACE_S = float(args.grace)
    if args.simulate:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before anything imports numba.cuda (children inherit it)
    if args.section:
        return _child(args)
    t_start = time.time()

    def _term(signum, frame):  # SIGTERM (an outer timeout): stop like Ctrl-C, the running section is killed
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gpu_check.json"
    write_json(path, {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)), "simulated": args.simulate,
                      "facts": "pending (the device trials did not finish)"})  # something comes back even then
    facts = gpu_facts()
    gpu = any(v["ok"] for v in facts.values() if isinstance(v, dict) and "ok" in v)
    doc = {"gpu": gpu, "simulated": bool(args.simulate), "mode": "simulated" if args.simulate else "gpu",
           "facts": facts, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)),
           "budget_s": args.budget, "grace_s": GRACE_S, "command": " ".join([sys.executable] + sys.argv)}
    if args.simulate:
        doc["note"] = ("SIMULATED dry run: Numba CUDA simulator and CPU stand-ins on tiny sizes; the numbers "
                       "check the code paths and JSON fields only and are not GPU figures")
    elif not gpu:
        doc["note"] = "no usable GPU here: nothing measured"
        write_json(path, doc)
        print(f"no GPU: wrote {path}")
        return 0
    names = list(SECTIONS)
    if args.only:
        keep = [s.strip() for s in args.only.split(",")]
        bad = [s for s in keep if s not in SECTIONS]
        if bad:
            ap.error(f"--only: unknown section(s) {', '.join(bad)} (known: {', '.join(SECTIONS)})")
        names = [n for n in names if n in keep]
    doc["sections"] = {}
    write_json(path, doc)

    def update(secs):
        doc["sections"] = secs
        doc["elapsed_s"] = round(time.time() - t_start, 1)
        write_json(path, doc)
        last = list(secs)[-1]
        state = secs[last].get("error") or secs[last].get("killed") or secs[last].get("skipped") or "ok"
        print(f"gpu_check: {last}: {str(state)[:200]} ({secs[last].get('seconds')} s)", flush=True)

    def launch(name, until, hard):
        return launch_section(name, until, hard, out_dir, args.simulate)

    try:
        doc["sections"] = run_sections(names, args.budget, launch, update, start=t_start)
    except KeyboardInterrupt:  # Ctrl-C or an outer timeout's SIGTERM: keep what the running section had measured
        for name in names:
            part = read_json(out_dir / f"{name}.partial.json")
            if part and name not in doc["sections"]:
                doc["sections"][name] = dict(part, killed="the whole check was interrupted")
        doc["interrupted"] = True
        doc["total_s"] = round(time.time() - t_start, 1)
        write_json(path, doc)
        print(f"interrupted: wrote {path}", file=sys.stderr)
        return 130
    doc["targets"] = ("not evaluated: simulated" if args.simulate else targets(doc["sections"]))
    doc["total_s"] = round(time.time() - t_start, 1)
    write_json(path, doc)
    for name in names:
        (out_dir / f"{name}.partial.json").unlink(missing_ok=True)  # all of it is in gpu_check.json now
    print(json.dumps({k: (v.get("error") or v.get("killed") or v.get("skipped") or "ok")
                      for k, v in doc["sections"].items()}))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
