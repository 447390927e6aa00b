"""``imprint bench``: throughput figures on synthetic data of a chosen size, so users can size their hardware.

Each figure is a ratio against a reference measured in the same run (exact search for the index; a plain
NumPy computation for the pixel kernels), as in ``benchmarks/`` (which holds the full scripts).
"""
from __future__ import annotations

import time

import numpy as np


def _mixture(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = max(10, n // 1000)
    centers = rng.standard_normal((c, d)).astype(np.float32)
    lab = rng.integers(0, c, n)
    sub = (rng.standard_normal((c, 16, d)) * 0.17).astype(np.float32)
    z = rng.standard_normal((n, 16)).astype(np.float32)
    out = centers[lab] + np.einsum("ni,nid->nd", z, sub[lab]) + 0.1 * rng.standard_normal((n, d)).astype(np.float32)
    return out.astype(np.float32)


def bench_search(n: int = 200_000, d: int = 128, nq: int = 1000, k: int = 10, index: str = "auto",
                 seed: int = 0) -> dict:
    """Approximate vs exact k-NN on clustered synthetic vectors: recall@k and queries/s of each."""
    from .search import build_index, knn, recall_at_k

    base = _mixture(n, d, seed)
    q = _mixture(nq, d, seed + 1)
    t0 = time.perf_counter()
    _, exact = knn(base, q, k, index="Flat")
    t_exact = time.perf_counter() - t0
    factory = index
    if index == "auto":
        factory = f"IVF{max(16, int(round(4 * np.sqrt(n))))},Flat" if n >= 50_000 else "Flat"
    t0 = time.perf_counter()
    idx = build_index(base, index=factory)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, approx = knn(base, q, k, index=idx)
    t_approx = time.perf_counter() - t0
    return {"n": n, "d": d, "queries": nq, "k": k, "index": factory, "build_s": t_build,
            "exact_qps": nq / t_exact, "approx_qps": nq / t_approx, "speedup": t_exact / t_approx,
            "recall_at_k": float(recall_at_k(approx, exact))}


def bench_pairs(n_real: int = 500, n_gen: int = 500, k: int = 10, size: int = 128, seed: int = 0) -> dict:
    """SSIM and MSE re-ranking throughput (pairs/s) on a shortlist-shaped workload vs a NumPy MSE reference."""
    import imprint.kernels as kernels

    rng = np.random.default_rng(seed)
    A = rng.integers(0, 256, (n_real, size, size), dtype=np.uint8)
    B = rng.integers(0, 256, (n_gen, size, size), dtype=np.uint8)
    pairs = np.stack([np.repeat(np.arange(n_real), k), rng.integers(0, n_gen, n_real * k)], 1).astype(np.int64)
    kernels.ssim_pairs(A[:2], B[:2], np.array([[0, 0]], np.int64))  # compile / load cache
    kernels.mse_pairs(A[:2], B[:2], np.array([[0, 0]], np.int64))
    t0 = time.perf_counter(); kernels.ssim_pairs(A, B, pairs); t_ssim = time.perf_counter() - t0
    t0 = time.perf_counter(); kernels.mse_pairs(A, B, pairs); t_mse = time.perf_counter() - t0
    sub = pairs[: min(len(pairs), 2000)]
    t0 = time.perf_counter()
    for i, j in sub:
        np.mean((A[i].astype(np.float32) - B[j].astype(np.float32)) ** 2)
    t_np = (time.perf_counter() - t0) * len(pairs) / len(sub)
    p = len(pairs)
    return {"pairs": p, "size": size, "ssim_pairs_per_s": p / t_ssim, "mse_pairs_per_s": p / t_mse,
            "numpy_mse_pairs_per_s": p / t_np, "mse_speedup_vs_numpy": t_np / t_mse}


def bench_embed(n: int = 256, backbone: str = "pixel", size: int = 128, seed: int = 0) -> dict:
    """Backbone inference throughput (images/s) on synthetic images."""
    from .backbone import embed, load_backbone

    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    bb = load_backbone(backbone)
    embed(imgs[:4], bb)
    t0 = time.perf_counter()
    embed(imgs, bb)
    dt = time.perf_counter() - t0
    return {"backbone": bb.spec.name, "images": n, "images_per_s": n / dt, "providers": list(getattr(bb, "providers", []))}
