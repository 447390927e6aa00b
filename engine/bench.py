"""``imprint bench``: throughput figures on synthetic data of a chosen size, so users can size their hardware.

Every figure is a ratio against a reference measured in the same run, and both sides are timed the same way
(:func:`best_time`: the call is repeated until one timing window lasts at least ``min_window`` seconds, and the
best of ``repeats`` windows is kept). Index build time is reported next to query time, and the search queries are
held-out draws from the base distribution (as generated and real images of one corpus are). The scripts in
``benchmarks/`` hold the full measurements and write their tables into ``benchmarks/RESULTS.md`` through
:func:`write_results_block`.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np

#: default timing window (seconds) and number of windows, for every timed figure
MIN_WINDOW_S = 1.0
REPEATS = 3


def best_time(fn: Callable[[], object], *, min_window: float = MIN_WINDOW_S, repeats: int = REPEATS
              ) -> tuple[float, object]:
    """Seconds per call of ``fn``: best of ``repeats`` windows, each repeating the call until it lasts
    ``min_window`` seconds or more.

    Parameters
    ----------
    fn : callable without arguments
    min_window : float
        Shortest timing window in seconds (calls are repeated within a window, never timed alone when short).
    repeats : int
        Number of windows; the fastest is kept (the least disturbed by other processes).

    Returns
    -------
    seconds : float
        Best seconds per call.
    result : object
        The return value of the last call.
    """
    best, res = float("inf"), None
    for _ in range(max(1, int(repeats))):
        calls = 0
        t0 = time.perf_counter()
        while True:
            res = fn()
            calls += 1
            el = time.perf_counter() - t0
            if el >= min_window:
                break
        best = min(best, el / calls)
    return best, res


def machine_load() -> dict:
    """The machine's load while benchmarking: ``{"cpus": int, "loadavg": [1, 5, 15 min]}``."""
    try:
        la = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - non-POSIX
        la = []
    return {"cpus": os.cpu_count(), "loadavg": la}


def load_note(load: dict | None = None) -> str:
    """One line for a results table: cores and load average (a shared machine's timings are noisy)."""
    load = load or machine_load()
    la = "/".join(f"{x:.2f}" for x in load["loadavg"]) or "n/a"
    return (f"Machine: {load['cpus']} CPU cores, load average {la} (1/5/15 min) when the table was written"
            f"{' - shared and busy: absolute timings are pessimistic, same-run ratios are the figures to use' if load['loadavg'] and load['loadavg'][0] > 0.5 * (load['cpus'] or 1) else ''}.")


def write_results_block(results_md: str | os.PathLike, name: str, markdown: str) -> None:
    """Replace the block ``name`` of ``results_md`` (between ``<!-- bench:NAME begin -->`` and
    ``<!-- bench:NAME end -->``) with ``markdown``, appending the block when absent. Atomic write.

    The tables of ``benchmarks/RESULTS.md`` are written this way by the benchmark scripts, never by hand. The
    ``README.md`` one folder above ``results_md`` quotes a table by holding the same markers: such a block is
    replaced there too (a README without the markers is left alone).
    """
    from .store import atomic_write_text

    p = Path(results_md)
    text = p.read_text("utf-8") if p.exists() else "# imprint - measured results\n"
    begin, end = f"<!-- bench:{name} begin -->", f"<!-- bench:{name} end -->"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = (f"{begin}\n<!-- written by a benchmark script on {stamp}; do not edit by hand, re-run it -->\n"
             f"{markdown.strip()}\n{end}")
    pat = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pat.search(text):
        text = pat.sub(lambda m: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(p, text)
    readme = p.resolve().parent.parent / "README.md"
    if readme.exists():
        quote_blocks(p, readme)


_BLOCK = re.compile(r"<!-- bench:([\w-]+) begin -->.*?<!-- bench:\1 end -->", re.S)


def quote_blocks(results_md: str | os.PathLike, readme: str | os.PathLike) -> list[str]:
    """Copy every block of ``results_md`` whose markers also appear in ``readme`` into ``readme`` (verbatim,
    atomic write); returns the names copied. ``python -m imprint.engine.bench`` runs it on the repository."""
    from .store import atomic_write_text

    blocks = {m.group(1): m.group(0) for m in _BLOCK.finditer(Path(results_md).read_text("utf-8"))}
    text = Path(readme).read_text("utf-8")
    done = []

    def sub(m):
        if m.group(1) in blocks:
            done.append(m.group(1))
            return blocks[m.group(1)]
        return m.group(0)

    new = _BLOCK.sub(sub, text)
    if new != text:
        atomic_write_text(readme, new)
    return done



def md_table(rows: list[dict], cols: list[str]) -> str:
    """A markdown table of ``rows`` (dicts) with the columns ``cols``."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def mixture(n: int, d: int, seed: int) -> np.ndarray:
    """Clustered synthetic vectors float32 [n, d]: ``max(10, n // 1000)`` centres, each with a random 16-d
    linear subspace and small isotropic noise (low intrinsic dimension, like image embeddings)."""
    rng = np.random.default_rng(seed)
    c = max(10, n // 1000)
    centers = rng.standard_normal((c, d)).astype(np.float32)
    lab = rng.integers(0, c, n)
    sub = (rng.standard_normal((c, 16, d)) * 0.17).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 65536):  # bounded temporaries
        z = rng.standard_normal((min(65536, n - s), 16)).astype(np.float32)
        lb = lab[s:s + len(z)]
        out[s:s + len(z)] = (centers[lb] + np.einsum("ni,nid->nd", z, sub[lb])
                             + 0.1 * rng.standard_normal((len(z), d)).astype(np.float32))
    return out


def base_and_queries(n: int, d: int, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` base vectors and ``nq`` queries drawn from the *same* mixture (held-out rows)."""
    allx = mixture(n + nq, d, seed)
    perm = np.random.default_rng(seed + 1).permutation(n + nq)
    return np.ascontiguousarray(allx[perm[:n]]), np.ascontiguousarray(allx[perm[n:]])


def bench_search(n: int = 200_000, d: int = 128, nq: int = 1000, k: int = 10, index: str = "auto",
                 seed: int = 0, min_window: float = MIN_WINDOW_S, repeats: int = REPEATS) -> dict:
    """Approximate vs exact k-NN, both timed by :func:`best_time` in this run.

    The queries are held-out draws from the base distribution. ``index="auto"`` uses exactly what
    ``engine.search`` would choose for this workload (``choose_index``; often exact). Reports build and query
    time of both, the query-only speed-up and the speed-up with the index build included (for ``nq`` queries).
    """
    from .search import build_index, choose_index, knn, recall_at_k

    base, q = base_and_queries(n, d, nq, seed)
    t0 = time.perf_counter()
    flat = build_index(base, index="Flat")
    t_build_exact = time.perf_counter() - t0
    t_exact, (_, exact) = best_time(lambda: knn(base, q, k, index=flat), min_window=min_window, repeats=repeats)
    factory = choose_index(n, d, nq) if index == "auto" else index
    t0 = time.perf_counter()
    idx = build_index(base, index=factory, k=k, n_queries=nq, random_state=seed)
    t_build = time.perf_counter() - t0
    t_approx, (_, approx) = best_time(lambda: knn(base, q, k, index=idx), min_window=min_window, repeats=repeats)
    return {"n": n, "d": d, "queries": nq, "k": k, "index": factory, "queries_from": "base distribution (held out)",
            "build_s": t_build, "exact_build_s": t_build_exact, "query_s": t_approx, "exact_query_s": t_exact,
            "exact_qps": nq / t_exact, "approx_qps": nq / t_approx, "speedup": t_exact / t_approx,
            "speedup_with_build": (t_build_exact + t_exact) / (t_build + t_approx),
            "recall_at_k": float(recall_at_k(approx, exact)), "timing": f"best of {repeats}, windows >= {min_window}s",
            "load": machine_load()}


def bench_pairs(n_real: int = 500, n_gen: int = 500, k: int = 10, size: int = 128, seed: int = 0,
                min_window: float = MIN_WINDOW_S, repeats: int = REPEATS) -> dict:
    """SSIM and MSE re-ranking throughput (pairs/s) on a shortlist-shaped workload vs a NumPy MSE reference
    (the reference runs over the same pairs, timed the same way)."""
    import imprint.kernels as kernels

    rng = np.random.default_rng(seed)
    A = rng.integers(0, 256, (n_real, size, size), dtype=np.uint8)
    B = rng.integers(0, 256, (n_gen, size, size), dtype=np.uint8)
    pairs = np.stack([np.repeat(np.arange(n_real), k), rng.integers(0, n_gen, n_real * k)], 1).astype(np.int64)
    kernels.ssim_pairs(A[:2], B[:2], np.array([[0, 0]], np.int64))  # compile / load cache
    kernels.mse_pairs(A[:2], B[:2], np.array([[0, 0]], np.int64))
    t_ssim, _ = best_time(lambda: kernels.ssim_pairs(A, B, pairs), min_window=min_window, repeats=repeats)
    t_mse, _ = best_time(lambda: kernels.mse_pairs(A, B, pairs), min_window=min_window, repeats=repeats)

    def numpy_mse():  # vectorised NumPy over the same pairs, in blocks of 4096 pairs
        out = np.empty(len(pairs), np.float32)
        for s in range(0, len(pairs), 4096):
            p = pairs[s:s + 4096]
            diff = A[p[:, 0]].astype(np.float32) - B[p[:, 1]].astype(np.float32)
            out[s:s + len(p)] = (diff * diff).mean((1, 2))
        return out

    t_np, _ = best_time(numpy_mse, min_window=min_window, repeats=repeats)
    p = len(pairs)
    return {"pairs": p, "size": size, "ssim_pairs_per_s": p / t_ssim, "mse_pairs_per_s": p / t_mse,
            "numpy_mse_pairs_per_s": p / t_np, "mse_speedup_vs_numpy": t_np / t_mse,
            "timing": f"best of {repeats}, windows >= {min_window}s", "load": machine_load()}


def bench_embed(n: int = 256, backbone: str = "pixel", size: int = 128, seed: int = 0,
                min_window: float = MIN_WINDOW_S, repeats: int = REPEATS) -> dict:
    """Backbone inference throughput (images/s) on synthetic images."""
    from .backbone import embed, load_backbone

    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    bb = load_backbone(backbone)
    embed(imgs[:4], bb)
    dt, _ = best_time(lambda: embed(imgs, bb), min_window=min_window, repeats=repeats)
    return {"backbone": bb.spec.name, "images": n, "images_per_s": n / dt,
            "providers": list(getattr(bb, "providers", [])), "timing": f"best of {repeats}, windows >= {min_window}s",
            "load": machine_load()}


def bench_decode(n: int = 512, size: int = 128, workers: int | None = None, seed: int = 0,
                 min_window: float = MIN_WINDOW_S, repeats: int = REPEATS) -> dict:
    """PNG decoding: the thread-pool decoder (:func:`engine.ingest.decode_files`) against the serial loop on
    the same files, timed the same way (synthetic CT-like PNGs in a temporary folder)."""
    import tempfile

    from PIL import Image

    from .ingest import IngestPolicy, decode_file, decode_files, decode_workers

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    with tempfile.TemporaryDirectory() as tmp:
        names = []
        for i in range(n):
            body = ((yy - size / 2) ** 2 / (0.4 * size) ** 2 + (xx - size / 2) ** 2 / (0.45 * size) ** 2) < 1
            im = np.where(body, 120 + 40 * np.sin(xx / (3 + i % 7)), 10) + rng.normal(0, 6, (size, size))
            names.append(f"{i:05d}.png")
            Image.fromarray(np.clip(im, 0, 255).astype(np.uint8)).save(os.path.join(tmp, names[-1]))
        pol = IngestPolicy(size=(size, size))
        w = workers or decode_workers()

        def serial():
            return [decode_file(os.path.join(tmp, f), pol) for f in names]

        def pooled():
            return list(decode_files(tmp, names, pol, workers=w))

        t_serial, _ = best_time(serial, min_window=min_window, repeats=repeats)
        t_pool, _ = best_time(pooled, min_window=min_window, repeats=repeats)
    return {"images": n, "size": size, "workers": w, "serial_img_per_s": n / t_serial,
            "threaded_img_per_s": n / t_pool, "speedup": t_serial / t_pool,
            "timing": f"best of {repeats}, windows >= {min_window}s", "load": machine_load()}


if __name__ == "__main__":  # quote the RESULTS.md tables in the README
    _root = Path(__file__).resolve().parents[1]
    print("quoted:", quote_blocks(_root / "benchmarks" / "RESULTS.md", _root / "README.md"))
