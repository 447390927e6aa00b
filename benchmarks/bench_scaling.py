"""How `imprint membership` scales: wall time and peak resident memory against the number of generated and real
images, with fitted exponents (time ~ G^a at fixed R, ~ R^b at fixed G) and the sizes that were too slow to run
extrapolated with them (marked as such).

    python benchmarks/bench_scaling.py --sizes 1000x1000,1000x3000,1000x12000 --write-results benchmarks/RESULTS.md

Each size is ``REALxGENERATED``. Data: 128x128 CT-like phantoms (the tests' generator ``conftest.ct_like``); a
pool of 2,000 base phantoms is replicated with random flips, shifts and noise to reach the requested counts, and
5% of the generated images are noisy copies of real images (so there is something to find). Folders are written
once under --data and reused. Every size runs ``run_membership`` (no dev set, default decision) in a fresh
subprocess, so its peak RSS (``ru_maxrss``) is its own; an RSS sampler (every 0.1 s) records the resident memory
after imports and its peak. ``--memory-budget`` is passed through.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

CHILD = r"""
import json, os, resource, sys, threading, time
sys.path.insert(0, {root!r})
peak = [0]
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def sample():
    while True:
        peak[0] = max(peak[0], rss()); time.sleep(0.1)
threading.Thread(target=sample, daemon=True).start()
MON = {monitor!r}
def monitor():  # every 20 s: elapsed, CPU-s, RSS, peak, load and the innermost imprint frames of the main thread
    import traceback
    main_id = threading.main_thread().ident
    t00 = time.perf_counter()
    while True:
        time.sleep(20)
        fr = sys._current_frames().get(main_id)
        st = [f"{{f.name}}" for f in traceback.extract_stack(fr) if "/engine/" in f.filename][-4:] if fr else []
        ru = resource.getrusage(resource.RUSAGE_SELF)
        with open(MON, "a") as fh:
            fh.write(json.dumps({{"t": round(time.perf_counter() - t00), "cpu_s": round(ru.ru_utime + ru.ru_stime),
                                 "rss_mb": round(rss() / 2**20), "peak_mb": round(peak[0] / 2**20),
                                 "load": os.getloadavg()[0], "stack": st}}) + "\n")
if MON:
    threading.Thread(target=monitor, daemon=True).start()
STAGES = {stages!r}
stage_acc = {{}}
def stage_of():  # the stage of the highest priority whose function is on any thread's stack (pools run on threads)
    names = set()
    for fr in sys._current_frames().values():
        f = fr
        while f is not None:
            names.add(f.f_code.co_name)
            f = f.f_back
    for fn, st in STAGE_OF:
        if fn in names:
            return st
    return "other"
STAGE_OF = [("real_pair_null_cached", "pair null (registration + anatomy of real pairs)"),
            ("_shape_search_bound", "shape (generated masks + mask search)"), ("anatomy_masks", "shape (generated masks + mask search)"),
            ("registered_evidence", "registration"), ("anatomy_evidence", "anatomy"), ("shortlists", "anatomy"),
            ("knn_l2_both_bound", "pixel search (R x G both ways)"), ("knn_l2_both", "pixel search (R x G both ways)"),
            ("_knn_self", "other k-NN (R x R, LBP, ...)"), ("_knn_chunked", "other k-NN (R x R, LBP, ...)"),
            ("_pair_mse", "re-ranking (MSE / SSIM) + tiles"), ("_pair_ssim", "re-ranking (MSE / SSIM) + tiles"),
            ("_tiles_of", "re-ranking (MSE / SSIM) + tiles"), ("load_images", "decode + open the stores"),
            ("audit_membership", "calibration, decision, other"), ("compute_evidence", "evidence, other")]
def stages():  # every 0.1 s: the process CPU-s since the last sample and the resident memory, to the current stage
    last = time.process_time()
    while True:
        time.sleep(0.1)
        st = stage_of()
        now = time.process_time()
        a = stage_acc.setdefault(st, {{"cpu_s": 0.0, "wall_s": 0.0, "peak_rss_mb": 0.0}})
        a["cpu_s"] += now - last
        a["wall_s"] += 0.1
        a["peak_rss_mb"] = max(a["peak_rss_mb"], rss() / 2**20)
        last = now
if STAGES:
    threading.Thread(target=stages, daemon=True).start()
from imprint.engine.pipeline import run_membership
from imprint.engine.ingest import IngestPolicy
base = rss()
t0 = time.perf_counter()
s = run_membership(gen_dir={gen!r}, real_dir={real!r}, out={out!r}, policy=IngestPolicy(size=(128, 128)),
                   memory_budget_gb={budget!r}, store_dir={store_dir!r})
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
print("RESULT " + json.dumps({{"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "sampled_peak_mb": peak[0] / 2**20, "after_imports_mb": base / 2**20, "timings": s["timings"],
      "n_real": s["n_real"], "n_generated": s["n_generated"], "n_flagged": s["n_flagged"],
      "chunk": s.get("generated_chunk"), "stages": (s.get("info") or {{}}).get("timings"),
      "stage_cpu": stage_acc}}))
"""


def make_folder(folder: Path, n: int, seed: int, copies_of: np.ndarray | None = None) -> None:
    """``n`` 128x128 phantoms in ``folder`` (kept when already there)."""
    from PIL import Image

    from conftest import ct_like

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.png"))) >= n:
        return
    rng = np.random.default_rng(seed)
    pool = ct_like(rng, min(2000, n), 128)
    for i in range(n):
        if copies_of is not None and i % 20 == 0:
            src = copies_of[(i // 20) % len(copies_of)]
        else:
            src = pool[i % len(pool)]
            if i >= len(pool):  # replicate with a flip, a shift and fresh noise: a distinct image
                src = np.roll(src[:, ::-1] if (i // len(pool)) % 2 else src, rng.integers(-6, 7, 2), (0, 1))
        im = np.clip(src.astype(np.int16) + rng.integers(-3, 4, src.shape), 0, 255).astype(np.uint8)
        Image.fromarray(im).save(folder / f"{i:07d}.png", compress_level=1)


def run_size(data: Path, n_real: int, n_gen: int, budget: float | None, monitor: str | None = None,
             stages: bool = False, root: Path | None = None, tag: str = "", store_dir: str | None = None) -> dict:
    from PIL import Image

    real_dir = data / f"real{n_real}"
    make_folder(real_dir, n_real, 1)
    sample = np.stack([np.asarray(Image.open(real_dir / f"{i:07d}.png")) for i in range(0, min(n_real, 400), 2)])
    gen_dir = data / f"gen{n_gen}-r{n_real}"
    make_folder(gen_dir, n_gen, 2, copies_of=sample)
    out = data / f"scores-{n_real}x{n_gen}{tag}.csv"
    code = CHILD.format(root=str(root or ROOT), gen=str(gen_dir), real=str(real_dir), out=str(out), budget=budget,
                        monitor=None if monitor is None else f"{monitor}.{n_real}x{n_gen}", stages=bool(stages),
                        store_dir=store_dir)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT))
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode != 0 or not line:
        raise SystemExit(f"size {n_real}x{n_gen} failed:\n{p.stderr[-3000:]}")
    return json.loads(line[0][7:])


def evidence_memory(n_real: int = 300, gens=(600, 2400), budget_gb: float = 0.3) -> list[dict]:
    """Where the evidence's memory goes: peak traced (tracemalloc: NumPy and Python allocations; FAISS's own
    copies are not traced) of ``compute_evidence`` with the whole generated set in one chunk (the memory
    behaviour before issue 15: float copies of every generated image) and with chunks for ``budget_gb``."""
    import tracemalloc

    from conftest import ct_like
    from imprint.engine.membership.evidence import compute_evidence, generated_chunk, memory_budget

    rng = np.random.default_rng(0)
    P = ct_like(rng, n_real, 128)
    base = ct_like(rng, 400, 128)
    out = []
    for n in gens:
        G = np.stack([np.roll(base[i % 400], i // 400, 1) for i in range(n)])
        for label, b in (("one chunk (all generated images at once)", 1 << 40), (f"budget {budget_gb} GB", budget_gb)):
            nbytes = b if b == 1 << 40 else int(b * 2**30)
            with memory_budget(nbytes):
                chunk = generated_chunk(n, 128 * 128)
                tracemalloc.start()
                t0 = time.perf_counter()
                compute_evidence(G, P, backbone=None)
                sec = time.perf_counter() - t0
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
            out.append({"real": n_real, "generated": n, "mode": label, "chunk": chunk, "peak traced MB": peak / 2**20,
                        "generated uint8 MB": G.nbytes / 2**20, "seconds": sec})
            print(json.dumps(out[-1]), flush=True)
    return out


def stage_kernels(n_real: int = 1000, n_gen: int = 1024, repeats: int = 3) -> list[dict]:
    """Same-run before/after of the two membership hot spots changed in issue 15's fourth pass, on 128x128 phantoms:
    z-scoring uint8 images (numpy float path vs the compiled uint8 path) and the real x generated pixel search
    (two engine.search.knn calls, one per direction, vs one both-way product, knn_l2_both); best of ``repeats``
    windows of at least 1 s each (engine.bench.best_time); outputs compared."""
    from conftest import ct_like
    from imprint.engine.bench import best_time
    from imprint.engine.membership.evidence import _zscore_u8, zscore_images
    from imprint.engine.search import knn
    from imprint.engine.search.pairwise import knn_l2_both

    rng = np.random.default_rng(0)
    P = ct_like(rng, n_real, 128)
    G = ct_like(rng, n_gen, 128)
    rows = []
    ref = zscore_images(P.astype(np.float32))
    same = bool(np.array_equal(ref, _zscore_u8(P)))
    t_np, _ = best_time(lambda: zscore_images(P.astype(np.float32)), min_window=1.0, repeats=repeats)
    t_u8, _ = best_time(lambda: _zscore_u8(P), min_window=1.0, repeats=repeats)
    rows.append({"stage": f"z-score {n_real} uint8 images", "before": "numpy float64 mean/std", "before s": t_np,
                 "after": "compiled uint8 (exact integer sums)", "after s": t_u8, "before / after": t_np / t_u8,
                 "outputs equal": same})
    fP = zscore_images(P).reshape(n_real, -1)
    fG = zscore_images(G).reshape(n_gen, -1)

    def two():
        return knn(fG, fP, 10), knn(fP, fG, 2)

    def one():
        return knn_l2_both(lambda r: fP[r], n_real, lambda r: fG[r], n_gen, 10, 2, a_block=1024, b_block=1024)

    (a1, a2), b = two(), one()
    # exact reference: float64 brute force, (distance, index) order; rows whose neighbour lists differ from it
    D = (np.einsum("ij,ij->i", fP.astype(np.float64), fP.astype(np.float64))[:, None]
         + np.einsum("ij,ij->i", fG.astype(np.float64), fG.astype(np.float64))[None, :]
         - 2.0 * (fP.astype(np.float64) @ fG.astype(np.float64).T))
    refA = np.lexsort((np.broadcast_to(np.arange(n_gen), D.shape), D), axis=1)[:, :10]
    refB = np.lexsort((np.broadcast_to(np.arange(n_real), D.T.shape), D.T), axis=1)[:, :2]
    wrong_two = int((a1[1] != refA).any(1).sum() + (a2[1] != refB).any(1).sum())
    wrong_one = int((b[1] != refA).any(1).sum() + (b[3] != refB).any(1).sum())
    same = (f"rows differing from float64 brute force: before {wrong_two}, after {wrong_one} "
            f"(of {n_real + n_gen}); outputs identical: "
            f"{all(np.array_equal(x, y) for x, y in zip((a1[0], a1[1], a2[0], a2[1]), b))}")
    t_two, _ = best_time(two, min_window=1.0, repeats=repeats)
    t_one, _ = best_time(one, min_window=1.0, repeats=repeats)
    rows.append({"stage": f"pixel k-NN {n_real} real x {n_gen} generated, 16,384-d, both directions",
                 "before": "two engine.search.knn calls (Flat)", "before s": t_two,
                 "after": "knn_l2_both (one product per block)", "after s": t_one, "before / after": t_two / t_one,
                 "outputs equal": same})
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


def _pairwise_of(checkout: str):
    """``engine/search/pairwise.py`` of another checkout, loaded as a module of this package (its relative imports
    resolve to this checkout's ``exact`` / ``block``), for same-run before/after timings."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("imprint.engine.search._pairwise_before",
                                                  Path(checkout) / "engine" / "search" / "pairwise.py")
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "imprint.engine.search"
    spec.loader.exec_module(mod)
    return mod


def _phantom_sets(data: Path, n_real: int, n_gen: int) -> tuple[np.ndarray, np.ndarray]:
    """The search benchmarks' inputs: the first ``n_real`` of the 10,000 phantom real images and ``n_gen`` generated
    ones (a folder of 10,000 with copies of 200 reals; beyond it, shifted copies, distinct images), uint8
    [n, 128, 128] each.  The folders under ``data`` are made once."""
    from PIL import Image

    real_dir, gen_dir = data / "real10000", data / "gen10000-r10000"
    make_folder(real_dir, 10000, 1)
    sample = np.stack([np.asarray(Image.open(real_dir / f"{i:07d}.png")) for i in range(0, 400, 2)])
    make_folder(gen_dir, 10000, 2, copies_of=sample)
    P = np.stack([np.asarray(Image.open(real_dir / f"{i:07d}.png")) for i in range(n_real)])
    G = np.stack([np.asarray(Image.open(gen_dir / f"{i % 10000:07d}.png")) for i in range(n_gen)])
    if n_gen > 10000:   # beyond the folder: shifted copies (distinct images)
        for i in range(10000, n_gen):
            G[i] = np.roll(G[i], (i // 10000, -(i // 10000)), (0, 1))
    return P, G


def _best_of_sides(sides: dict, repeats: int, tag) -> tuple[dict, dict]:
    """Run every side of ``sides`` (name -> no-argument callable) ``repeats`` times, alternating, in this process.

    Returns ``best`` (name -> [best wall s, best process CPU s]) and ``outs`` (name -> the last run's output)."""
    best = {k: [np.inf, np.inf] for k in sides}
    outs = {}
    for _ in range(repeats):
        for name, fn in sides.items():
            t0, c0 = time.perf_counter(), time.process_time()
            outs[name] = fn()
            best[name][0] = min(best[name][0], time.perf_counter() - t0)
            best[name][1] = min(best[name][1], time.process_time() - c0)
            print(name, *tag, best[name], flush=True)
    return best, outs


def bound_search(sizes, data: Path, repeats: int = 2, before: str | None = None) -> list[dict]:
    """Same-run before/after of the membership pixel search (issue 15, scale6): the both-way product
    (``knn_l2_both``, every R x G distance at 16,384-d) against the lower-bound-pruned exact search
    (``knn_l2_both_bound``), on the scaling benchmark's phantom folders, z-scored as membership does, in the
    blocks membership uses (2 GiB budget).  Alternating sides, ``repeats`` runs each, best wall and best CPU-s
    (``time.process_time``: all threads) per side; outputs compared bit for bit.  With ``before`` (a checkout),
    'before' is that checkout's ``knn_l2_both_bound`` instead of ``knn_l2_both`` (issue 15, scale7)."""
    from imprint.engine.membership.evidence import _bound_params, generated_chunk, zscore_images
    from imprint.engine.search.pairwise import knn_l2_both, knn_l2_both_bound

    fac, reg = _bound_params((128, 128))         # membership's choice (issue 15, scale9: 4 x 4 blocks + residuals)
    rows = []
    for n_real, n_gen in sizes:
        P, G = _phantom_sets(data, n_real, n_gen)
        zp = lambda r: zscore_images(P[r]).reshape(len(r), -1)  # noqa: E731
        zg = lambda r: zscore_images(G[r]).reshape(len(r), -1)  # noqa: E731
        chunk = generated_chunk(n_gen, 128 * 128)
        pchunk = generated_chunk(n_real, 128 * 128)
        st: dict = {}
        old = _pairwise_of(before).knn_l2_both_bound if before else None
        sides = {
            "before": (lambda: old(zp, n_real, zg, n_gen, 10, 2, shape=(128, 128), b_block=chunk, a_block=pchunk))
            if before else
            (lambda: knn_l2_both(zp, n_real, zg, n_gen, 10, 2, a_block=pchunk, b_block=chunk, cache_a=True)),
            "after": lambda: knn_l2_both_bound(zp, n_real, zg, n_gen, 10, 2, shape=(128, 128), b_block=chunk,
                                               a_block=pchunk, stats=st, factor=fac, region=reg),
        }
        best, outs = _best_of_sides(sides, repeats, (n_real, n_gen))
        same = all(np.array_equal(a, b) for a, b in zip(outs["before"], outs["after"]))
        rows.append({"real x generated": f"{n_real:,} x {n_gen:,}", "before wall s": best["before"][0],
                     "after wall s": best["after"][0], "wall ratio": best["before"][0] / best["after"][0],
                     "before CPU s": best["before"][1], "after CPU s": best["after"][1],
                     "CPU ratio": best["before"][1] / best["after"][1],
                     "exact share": st["exact"] / st["pairs"], "bound dims": st["low_dim"], "outputs identical": same,
                     "load (1 min)": f"{os.getloadavg()[0]:.1f}"})
        print(json.dumps(rows[-1]), flush=True)
    return rows


INGEST_CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
from imprint.engine.pixelstore import load_images
from imprint.engine.ingest import IngestPolicy
def status():
    d = {{}}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS", "RssAnon", "RssFile")):
                k, v = line.split(":"); d[k] = int(v.split()[0]) / 1024
    return d
t0, c0 = time.perf_counter(), time.process_time()
s = load_images({folder!r}, {store!r}, IngestPolicy(size=(128, 128)))
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
st = status()
print("RESULT " + json.dumps({{"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "rss_after_mb": st["VmRSS"], "anon_after_mb": st["RssAnon"], "n": len(s.paths),
      "zero_copy": bool(not s.images.flags.owndata and not s.images.flags.writeable and st["RssAnon"] * 2**20 < s.images.nbytes)}}))
"""


def ingest_memory(folder: Path, before_root: str, work: Path) -> list[dict]:
    """Same-run before/after of decoding a folder into a pixel store and opening it (issue 15, scale7): each side
    in a fresh process on a fresh store (``before_root``'s code, then this checkout's), peak RSS (``ru_maxrss``)
    and the resident / anonymous memory once the images are open; then the two stores' rows (paths, sha256,
    size, mtime, pixels) are compared."""
    import shutil

    from imprint.engine.pixelstore import PixelStore

    rows, stores = [], {}
    for name, root in (("before", before_root), ("after", str(ROOT))):
        store = work / f"ingest-{name}"
        shutil.rmtree(store, ignore_errors=True)
        code = INGEST_CHILD.format(root=root, folder=str(folder), store=str(store))
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(work))
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode != 0 or not line:
            raise SystemExit(f"ingest ({name}) failed:\n{p.stderr[-3000:]}")
        r = json.loads(line[0][7:])
        print(name, json.dumps(r), flush=True)
        stores[name] = store
        rows.append({"code": f"{name} ({root})", "images": f"{r['n']:,}", "wall s": r["wall_s"], "CPU s": r["cpu_s"],
                     "peak RSS MB": r["peak_rss_mb"], "RSS after open MB": r["rss_after_mb"],
                     "anonymous after open MB": r["anon_after_mb"], "images zero-copy": r["zero_copy"],
                     "load (1 min)": f"{os.getloadavg()[0]:.1f}"})
    a, b = (PixelStore.open(stores[k]) for k in ("before", "after"))
    same = a.stats() == b.stats()
    va, vb = a.read(), b.read()
    same = same and va.paths == vb.paths and va.hashes == vb.hashes
    for s0 in range(0, len(va.paths), 4096):
        same = same and bool(np.array_equal(va.vectors[s0:s0 + 4096], vb.vectors[s0:s0 + 4096]))
    for r in rows:
        r["stores' rows identical"] = same
    for k in stores.values():
        shutil.rmtree(k, ignore_errors=True)
    return rows


def shape_search(sizes, data: Path, repeats: int = 2, before: str | None = None) -> list[dict]:
    """Same-run before/after of the membership shape stage's mask search (issue 15, scale7): FAISS Flat over the
    generated masks chunk by chunk plus the real -> real search (``_knn_chunked`` + ``_knn_self``, the code
    before) against the lower-bound-pruned exact search (``evidence._shape_search_bound``), on the scaling
    benchmark's phantom folders, in the blocks membership uses (2 GiB budget).  Both sides make the generated
    images' masks per chunk (part of the stage); the real masks (counts) are made once, outside the timing.
    Alternating sides, ``repeats`` runs each, best wall and best CPU-s per side; distances compared bit for bit."""
    from imprint.engine.membership import evidence as E

    E_before = None
    if before:
        import importlib.util

        spec = importlib.util.spec_from_file_location("imprint.engine.membership._evidence_before",
                                                      Path(before) / "engine" / "membership" / "evidence.py")
        E_before = importlib.util.module_from_spec(spec)
        E_before.__package__ = "imprint.engine.membership"
        spec.loader.exec_module(E_before)
    rows = []
    for n_real, n_gen in sizes:
        P, G = _phantom_sets(data, n_real, n_gen)
        chunk = E.generated_chunk(n_gen, 128 * 128)
        pchunk = E.generated_chunk(n_real, 128 * 128)
        cP, scale = E._anatomy_counts(P)
        shp = E._mask_shape(P.shape[1:], cP.shape[1])
        info: dict = {}

        def faiss():
            mP = cP * scale
            a, _ = E._knn_chunked(G, mP, 1, E.anatomy_masks, chunk)
            b, _ = E._knn_self(lambda r: mP[np.asarray(r)], n_real, 1, n_real)
            return a, b

        def bound_before():
            # the --before checkout's stage (its evidence.py: masks and search call) with its knn_l2_both_bound
            # (issue 15, scale9: before = main's scale7 search and mask code)
            import imprint.engine.search.pairwise as pw

            old, mine = _pairwise_of(before).knn_l2_both_bound, pw.knn_l2_both_bound
            pw.knn_l2_both_bound = old
            try:
                return E_before._shape_search_bound(G, cP, scale, shp, chunk, pchunk, {})
            finally:
                pw.knn_l2_both_bound = mine

        sides = {"before": bound_before if before else faiss,
                 "after": lambda: E._shape_search_bound(G, cP, scale, shp, chunk, pchunk, info)}
        best, outs = _best_of_sides(sides, repeats, (n_real, n_gen))
        same = all(np.array_equal(a, b) for a, b in zip(outs["before"], outs["after"]))
        sg, sr = info["shape_search"]["generated"], info["shape_search"]["real"]
        rows.append({"real x generated": f"{n_real:,} x {n_gen:,}", "before wall s": best["before"][0],
                     "after wall s": best["after"][0], "wall ratio": best["before"][0] / best["after"][0],
                     "before CPU s": best["before"][1], "after CPU s": best["after"][1],
                     "CPU ratio": best["before"][1] / best["after"][1],
                     "exact share R x G": sg["exact"] / sg["pairs"], "exact share R x R": sr["exact"] / sr["pairs"],
                     "distances identical": same, "load (1 min)": f"{os.getloadavg()[0]:.1f}"})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _anatomy_of(checkout: str):
    """``engine/membership/anatomy.py`` of another checkout, loaded as a module of this package (its relative
    imports resolve to this checkout's ``evidence`` / ``register``), for same-run before/after timings."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("imprint.engine.membership._anatomy_before",
                                                  Path(checkout) / "engine" / "membership" / "anatomy.py")
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "imprint.engine.membership"
    spec.loader.exec_module(mod)
    return mod


def anatomy_search(sizes, data: Path, before: str, repeats: int = 2) -> list[dict]:
    """Same-run before/after of the anatomy evidence's search over the generated images (issue 15, scale8):
    ``anatomy_evidence`` without the registered shortlist (the low-pass grids of every image, every pool image's
    nearest generated grid in place and mirrored, its nearest other pool grid, the matched NCC), the ``before``
    checkout's module against this one's, on the scaling benchmark's phantoms, chunks of the 2 GiB budget.
    Alternating sides, ``repeats`` runs each, best wall and best CPU-s per side; the outputs compared."""
    from imprint.engine.membership import anatomy as after_mod
    from imprint.engine.membership.evidence import generated_chunk

    old = _anatomy_of(before)
    rows = []
    for n_real, n_gen in sizes:
        P, G = _phantom_sets(data, n_real, n_gen)
        chunk = generated_chunk(n_gen, 128 * 128)
        st: dict = {}
        orig = after_mod._nearest_generated

        def counted(*a, **k):
            return orig(*a, **k, stats=st)

        sides = {"before": lambda: old.anatomy_evidence(G, P, chunk=chunk),
                 "after": lambda: after_mod.anatomy_evidence(G, P, chunk=chunk)}
        after_mod._nearest_generated = counted
        try:
            best, outs = _best_of_sides(sides, repeats, (n_real, n_gen))
        finally:
            after_mod._nearest_generated = orig
        b, a = outs["before"], outs["after"]
        rows.append({"real x generated": f"{n_real:,} x {n_gen:,}", "before wall s": best["before"][0],
                     "after wall s": best["after"][0], "wall ratio": best["before"][0] / best["after"][0],
                     "before CPU s": best["before"][1], "after CPU s": best["after"][1],
                     "CPU ratio": best["before"][1] / best["after"][1],
                     "exact share": st["exact"] / st["pairs"],
                     "nearest generated identical": bool(np.array_equal(b["anat_match"], a["anat_match"])),
                     "max abs diff anat_ratio": float(np.abs(b["anat_ratio"] - a["anat_ratio"]).max()),
                     "load (1 min)": f"{os.getloadavg()[0]:.1f}"})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def stage_table(sizes, data: Path, before: str | None = None, budget: float | None = None,
                store_dir: str | None = None) -> list[dict]:
    """Per-stage CPU-s and peak RSS of ``imprint membership`` (``run_membership``) at each ``(R, G)`` (issue 15,
    scale9): each side in a fresh process on fresh stores (its own checkpoint folder); a sampler thread reads every
    0.1 s the process CPU time and VmRSS and gives them to the stage whose function is on a thread's stack
    (``STAGE_OF`` in the child; the pools run on threads).  With ``before`` (a checkout) that code runs first, then
    this checkout's.  Stage borders are +-0.1 s; the CPU-s of a stage are all threads'."""
    import shutil

    sides = ([("before", Path(before))] if before else []) + [("after", ROOT)]
    if store_dir is not None:
        Path(store_dir).mkdir(parents=True, exist_ok=True)   # run_membership creates DIR/before, DIR/after
    rows = []
    for n_real, n_gen in sizes:
        res = {}
        for name, root in sides:
            tag = f"-stages-{name}"
            ck = data / f".scores-{n_real}x{n_gen}{tag}.csv.checkpoints"
            if ck.exists():
                shutil.rmtree(ck)
            res[name] = run_size(data, n_real, n_gen, budget, stages=True, root=root, tag=tag,
                                 store_dir=None if store_dir is None else str(Path(store_dir) / name))
            print(name, n_real, n_gen, json.dumps(res[name]["stage_cpu"]), flush=True)
        names = []
        for r in res.values():
            names += [k for k in r["stage_cpu"] if k not in names]
        for st in names + ["total"]:
            row = {"real x generated": f"{n_real:,} x {n_gen:,}", "stage": st}
            for name, _ in sides:
                r = res[name]
                a = r["stage_cpu"].get(st, {"cpu_s": 0.0, "peak_rss_mb": 0.0})
                if st == "total":
                    a = {"cpu_s": r["cpu_s"], "peak_rss_mb": r["peak_rss_mb"], "wall_s": r["wall_s"]}
                row[f"{name} CPU s"] = a["cpu_s"]
                row[f"{name} peak RSS MB"] = a["peak_rss_mb"]
                if st == "total":
                    row[f"{name} wall s"] = a["wall_s"]
            if before:
                row["CPU ratio"] = row["before CPU s"] / row["after CPU s"] if row["after CPU s"] > 0.05 else None
            row["load (1 min)"] = f"{os.getloadavg()[0]:.1f}"
            rows.append(row)
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    for r in rows:
        for c in cols:
            r.setdefault(c, "")
    return rows


_PAIR_NULL_CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
import numpy as np
from PIL import Image
real = np.stack([np.asarray(Image.open(os.path.join({real_dir!r}, f"{{i:07d}}.png")).convert("L")) for i in range({n})])
from imprint.engine.membership import calibrate as C
cache = {{}}
c0, w0 = time.process_time(), time.perf_counter()
pn = C.real_pair_null_cached(real, {n_gen}, cache=cache, register=True, series=True)
c1 = time.process_time()
kw = {{"base": False}} if "base" in C.real_pair_null.__code__.co_varnames else {{}}
pa = C.real_pair_null_cached(real, {n_gen}, cache=cache, anatomy=True, anatomy_lowpass=False, series=True,
                             groups=pn.get("_groups"), **kw)
c2, w2 = time.process_time(), time.perf_counter()
np.savez({out!r}, images=pn["_images"], anat_ratio=pa["anat_ratio"],
         **{{k: v for k, v in pn.items() if not k.startswith("_")}})
print("RESULT " + json.dumps({{"registered_cpu_s": c1 - c0, "anatomy_cpu_s": c2 - c1, "cpu_s": c2 - c0,
      "wall_s": w2 - w0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "null_rows": int(len(pn["_images"]))}}))
"""


def pair_null_cost(sizes, data: Path, before: str | None = None) -> list[dict]:
    """The unsupervised audit's real-to-real pair null alone (its two calls, as ``audit_membership`` makes them:
    the registered null, then the anatomy null) on the first ``R`` of the 10,000 phantom real images, ``10 R``
    generated (only their count enters), each side in a fresh process (issue 15, scale10): CPU-s of each call,
    wall, peak RSS, and whether the null values are the same (max abs difference over every channel)."""
    real_dir = data / "real10000"
    make_folder(real_dir, 10000, 1)
    sides = ([("before", Path(before))] if before else []) + [("after", ROOT)]
    rows = []
    for spec in sizes:
        n = int(spec)
        res, outs = {}, {}
        for name, root in sides:
            out = data / f"pairnull-{n}-{name}.npz"
            code = _PAIR_NULL_CHILD.format(root=str(root), real_dir=str(real_dir), n=n, n_gen=10 * n, out=str(out))
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(root))
            line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            if r.returncode or not line:
                raise SystemExit(f"{name} side failed at R={n}: {r.stderr[-2000:]}")
            res[name] = json.loads(line[0][7:])
            outs[name] = dict(np.load(out))
            print(name, n, json.dumps(res[name]), flush=True)
        row = {"real images": f"{n:,}", "null rows": res["after"]["null_rows"]}
        for name, _ in sides:
            for k in ("registered_cpu_s", "anatomy_cpu_s", "cpu_s", "peak_rss_mb"):
                row[f"{name} {k.replace('_cpu_s', ' CPU s').replace('cpu_s', 'CPU s').replace('peak_rss_mb', 'peak RSS MB')}"] = res[name][k]
        if before:
            row["CPU ratio"] = res["before"]["cpu_s"] / max(res["after"]["cpu_s"], 1e-9)
            a, b = outs["before"], outs["after"]
            same_rows = np.array_equal(a["images"], b["images"])
            diff = max(float(np.nanmax(np.abs(a[k] - b[k]))) for k in a if k != "images") if same_rows else float("nan")
            nan_same = all(np.array_equal(np.isnan(a[k]), np.isnan(b[k])) for k in a if k != "images")
            row["same rows"] = bool(same_rows and nan_same)
            row["max abs difference"] = diff
        row["load (1 min)"] = f"{os.getloadavg()[0]:.1f}"
        rows.append(row)
    return rows


def pair_lists(sizes, data: Path, n_query: int = 2000, k: int = 32) -> list[dict]:
    """The pair null's z-pixel list search alone (issue 15, scale10): ``evidence._knn_self`` over every row of the
    first ``R`` phantom reals against ``calibrate._knn_rows`` over ``n_query`` sampled rows (the images that play
    the non-member), ``k`` neighbours each, same process, CPU-s (all threads) and whether the sampled rows' lists
    are identical."""
    from PIL import Image

    from imprint.engine.membership.calibrate import _knn_rows
    from imprint.engine.membership.evidence import _knn_self, _zrows, generated_chunk

    real_dir = data / "real10000"
    make_folder(real_dir, 10000, 1)
    rows = []
    for spec in sizes:
        n = int(spec)
        real = np.stack([np.asarray(Image.open(real_dir / f"{i:07d}.png").convert("L")) for i in range(n)])
        block = generated_chunk(n, real.shape[1] * real.shape[2])
        q = np.sort(np.random.default_rng([0, 1]).choice(n, min(n_query, n), replace=False))
        t = time.process_time()
        d0, i0 = _knn_self(_zrows(real), n, k, block)
        a = time.process_time() - t
        t = time.process_time()
        d1, i1 = _knn_rows(_zrows(real), n, q, k, block)
        b = time.process_time() - t
        rows.append({"R": f"{n:,}", "all rows CPU s": a, f"{len(q):,} rows CPU s": b, "ratio": a / max(b, 1e-9),
                     "lists identical": bool(np.array_equal(i0[q], i1) and np.array_equal(d0[q], d1)),
                     "load (1 min)": f"{os.getloadavg()[0]:.1f}"})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def row_memo(n_pairs: int, repeats: int = 2) -> list[dict]:
    """The registration's per-pair memo (``register._cached_rows``) before/after numpy columns (issue 15, scale9):
    ``n_pairs`` pair keys shaped like the audit's (two 64-hex content keys and a flip), 11 float fields (the
    refine step's), stored then read back twice (a second pool); best CPU-s of ``repeats`` alternating runs per
    side, and the memory the memo holds afterwards (tracemalloc, measured in a separate pass)."""
    import gc
    import tracemalloc

    from imprint.engine.membership import register
    from test_register_memo import _old_cached_rows     # the dict memo before scale9 (the tests' reference)

    rng = np.random.default_rng(0)
    ka = [f"{x:064x}" for x in rng.integers(0, 2**62, 10000)]
    kb = [f"{x:064x}" for x in rng.integers(0, 2**62, 100000)]
    code = rng.permutation(np.unique(rng.integers(0, len(ka) * len(kb), int(n_pairs * 1.01))))[:n_pairs]
    ia, ib = code // len(kb), code % len(kb)        # distinct pairs: every key has its own values
    n_pairs = len(code)
    keys = [(ka[i], kb[j], -1) for i, j in zip(ia, ib)]
    fields = ["ncc", "ncc_lo", "ncc_lp", "flip", "angle", "scale", "dy", "dx", "gain", "mse", "ssim"]
    vals = {f: rng.standard_normal(n_pairs) for f in fields}

    def fn(sel):
        return {f: v[sel] for f, v in vals.items()}

    sides = {"before": lambda c: _old_cached_rows(fn, keys, c, "m"),
             "after": lambda c: register._cached_rows(fn, keys, c, "m")}

    def run(name):
        c: dict = {}
        a = sides[name](c)
        b = sides[name](c)
        return c, a, b

    best = {k: np.inf for k in sides}
    outs = {}
    for _ in range(repeats):
        for name in sides:
            gc.collect()
            c0 = time.process_time()
            outs[name] = run(name)[1:]
            best[name] = min(best[name], time.process_time() - c0)
    mem = {}
    for name in sides:
        gc.collect()
        tracemalloc.start()
        c, _, _ = run(name)
        mem[name] = tracemalloc.get_traced_memory()[0] / 2**20
        tracemalloc.stop()
        del c
    same = all(np.array_equal(outs["before"][j][f], outs["after"][j][f]) for j in range(2) for f in fields)
    return [{"pairs": f"{n_pairs:,}", "fields": len(fields), "before CPU s": best["before"],
             "after CPU s": best["after"], "CPU ratio": best["before"] / best["after"],
             "before memo MB": mem["before"], "after memo MB": mem["after"],
             "memory ratio": mem["before"] / mem["after"], "outputs identical": same,
             "load (1 min)": f"{os.getloadavg()[0]:.1f}"}]


def fit_exponent(xs, ys) -> float | None:
    """Least-squares slope of log(y) on log(x) (None with fewer than two distinct x)."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    if len(set(xs.tolist())) < 2:
        return None
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def _write_block(path: str, block: str, rows: list[dict], text: str) -> None:
    """Write the RESULTS.md block ``block``: ``text``, the machine's load note and ``rows`` as a table."""
    from imprint.engine.bench import load_note, md_table, write_results_block

    write_results_block(path, block, text + load_note() + "\n\n" + md_table(rows, list(rows[0])))



def _sizes(text: str) -> list[tuple[int, ...]]:
    """``"RxG,RxG"`` -> ``[(R, G), ...]`` (the size lists of --sizes, --stages and the search options)."""
    return [tuple(int(v) for v in x.split("x")) for x in text.split(",") if x]

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000x1000,1000x3000,1000x12000",
                    help="comma-separated REALxGENERATED sizes to run")
    ap.add_argument("--extrapolate", default="1000x10000,1000x100000,10000x1000,10000x10000,10000x100000",
                    help="sizes to report by extrapolation when not run")
    ap.add_argument("--data", default="/tmp/imprint-bench-scaling")
    ap.add_argument("--memory-budget", type=float, default=None, help="GB, passed to run_membership")
    ap.add_argument("--store-dir", default=None, metavar="DIR",
                    help="passed to run_membership (with --stages: DIR/before, DIR/after): the pixel stores are kept "
                         "there, so a second run over the same folders reuses them (without it they live in the run's "
                         "checkpoint folder, which a finished run removes: every run decodes the folders)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--monitor", default=None, metavar="PREFIX",
                    help="the child appends a JSON line every 20 s (elapsed, CPU-s, RSS, stage) to PREFIX.RxG, "
                    "so a run that cannot finish still shows how far it got")
    ap.add_argument("--from-json", default=None, help="take the measured rows from this --json output")
    ap.add_argument("--write-results", default=None, metavar="RESULTS.md")
    ap.add_argument("--block", default="scaling",
                    help="name of the RESULTS.md block to write (another name keeps the existing table)")
    ap.add_argument("--title", default="Membership scaling: wall time and peak memory vs the generated and real "
                    "set sizes", help="heading of the written block")
    ap.add_argument("--fit-at", default=None, metavar="R,G",
                    help="fit the G exponent at this R and the R exponent at this G (default: the most common)")
    ap.add_argument("--stage-kernels", action="store_true",
                    help="only time the z-scoring and the both-way pixel search before/after (same run) and write that block")
    ap.add_argument("--evidence-memory", action="store_true",
                    help="only trace the evidence's memory (one chunk vs a budget) and write that block")
    ap.add_argument("--bound-search", default=None, metavar="RxG,...",
                    help="only time the pixel search before/after the lower-bound pruning (same run) and write that block")
    ap.add_argument("--shape-search", default=None, metavar="RxG,...",
                    help="only time the shape stage's mask search before/after the lower-bound pruning (same run) "
                    "and write that block")
    ap.add_argument("--ingest-memory", default=None, metavar="FOLDER",
                    help="only measure decoding FOLDER into a pixel store and opening it, --before's code and this "
                    "checkout's, each in a fresh process, and write that block")
    ap.add_argument("--anatomy-search", default=None, metavar="RxG,...",
                    help="only time the anatomy evidence's search over the generated images, --before's anatomy.py "
                    "against this checkout's (same run), and write that block")
    ap.add_argument("--stages", default=None, metavar="RxG,...",
                    help="only run membership at these sizes (and with --before, that checkout's code first, each in a "
                    "fresh process on fresh stores) and write the per-stage CPU-s / peak RSS table")
    ap.add_argument("--pair-null", default=None, metavar="R,...",
                    help="only time the unsupervised audit's real-to-real pair null (its two calls) on R phantom "
                         "real images, --before's code and this checkout's, each in a fresh process, and write that "
                         "block")
    ap.add_argument("--pair-lists", default=None, metavar="R,...",
                    help="only time the pair null's z-pixel list search over every real image against the 2,000 "
                         "sampled ones (same process) and print the rows")
    ap.add_argument("--row-memo", default=None, type=int, metavar="PAIRS",
                    help="only time the registration's per-pair memo (dict of floats vs numpy columns) and write that block")
    ap.add_argument("--before", default=None, metavar="CHECKOUT",
                    help="the 'before' code for --ingest-memory and --bound-search (its knn_l2_both_bound)")
    args = ap.parse_args(argv)
    cmd_line = "python benchmarks/bench_scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.ingest_memory:
        rows = ingest_memory(Path(args.ingest_memory), args.before or str(ROOT), Path(args.data))
        if args.write_results:
            _write_block(args.write_results, "ingest-memory-scale7", rows, (
                "### Pixel-store ingest and open: peak and resident memory before/after, same run (issue 15, scale7)\n\n"
                f"Command: `{cmd_line}`. `pixelstore.load_images` (decode on the thread pool, append shards, compact "
                "into one shard, open the images) on a fresh store, each side in a fresh process. 'RSS after open' "
                "/ 'anonymous after open': the process's resident / anonymous memory once the images are open (a "
                "zero-copy memory map adds neither until pages are read). Before, the compacted shard held record "
                "batches of 4,096 rows and opening it concatenated them into one anonymous copy of the whole set; "
                "after, compaction writes one record batch. 'stores' rows identical': paths, sha256, size, mtime "
                "and every pixel of the two stores compared (the files differ in their record-batch framing).\n"))
        return 0
    if args.anatomy_search:
        sizes = _sizes(args.anatomy_search)
        rows = anatomy_search(sizes, Path(args.data), args.before or "/work/main")
        if args.write_results:
            _write_block(args.write_results, "anatomy-search-scale8", rows, (
                "### Membership anatomy stage: the search over the generated images before/after, same run "
                "(issue 15, scale8)\n\n"
                f"Command: `{cmd_line}`. The scaling benchmark's 128x128 phantoms (real10000, gen10000-r10000; "
                "generated rows beyond 10,000 are shifted copies); `anatomy_evidence` without the registered "
                "shortlist (the part that grows with the generated set: the 32x32 low-pass grids of every image, "
                "every pool image's nearest generated grid in place and mirrored, its nearest other pool grid, the "
                "matched NCC); chunks of the 2 GiB budget. before = the --before checkout's `anatomy.py` (grids "
                "from per-image products on the threaded BLAS, FAISS Flat per generated chunk), after = this "
                "checkout's (the products on one BLAS thread, the exact search pruned by a 2x2-block lower bound, "
                "`knn_l2_both_bound` with k_b = 0). Alternating sides, 2 runs each, best wall and best CPU-s (all "
                "threads) per side; 'exact share' = pairs given an exact distance / (2 x real x generated); "
                "'max abs diff anat_ratio': the grids' last bits changed with the thread count.\n"))
        return 0
    if args.row_memo:
        rows = row_memo(args.row_memo)
        print(json.dumps(rows))
        if args.write_results:
            _write_block(args.write_results, "row-memo-scale9", rows, (
                "### Registration's per-pair memo: dict of floats vs numpy columns, same run (issue 15, scale9)\n\n"
                f"Command: `{cmd_line}`. `register._cached_rows` as before (a dict of Python floats per pair key) "
                "and after (`_RowMemo`: key -> row, one float64 array per field), on pair keys shaped like the "
                "audit's (two 64-hex content keys and a flip; 11 fields, as the refine step's): store, then read "
                "back twice. Best CPU-s of 2 alternating runs per side; 'memo MB' = memory held after the runs "
                "(tracemalloc, keys included, separate pass).\n"))
        return 0
    if args.pair_lists:
        print(json.dumps(pair_lists([x for x in args.pair_lists.split(",") if x], Path(args.data))))
        return 0
    if args.pair_null:
        rows = pair_null_cost([x for x in args.pair_null.split(",") if x], Path(args.data), before=args.before)
        print(json.dumps(rows))
        if args.write_results:
            _write_block(args.write_results, "pair-null-scale10", rows, (
                "### The real-to-real pair null's cost, before/after in fresh processes (issue 15, scale10)\n\n"
                f"Command: `{cmd_line}`. The unsupervised audit's pair null alone, its two calls as "
                "`audit_membership` makes them (`real_pair_null_cached` with `register=True`, then the anatomy null; "
                "no checkpoint folder), on the first R of the 10,000 phantom real images (128 x 128), 10 R "
                "generated (only their count enters). before = the --before checkout's code, after = this "
                "checkout's (with R > `PAIR_NULL_MAX_IMAGES` = 2,000 the per-image searches run for the 2,000 "
                "sampled images only; the anatomy call skips the plain features and reuses the pixel lists). "
                "CPU-s = process time of each call (all threads); the sides ran one after the other (or "
                "concurrently), not interleaved. 'max abs difference' over every null channel, same rows.\n"))
        return 0
    if args.stages:
        sizes = _sizes(args.stages)
        rows = stage_table(sizes, Path(args.data), before=args.before, budget=args.memory_budget,
                           store_dir=args.store_dir)
        print(json.dumps(rows))
        if args.write_results:
            _write_block(args.write_results, "stages-scale9" if args.block == "scaling" else args.block, rows, (
                ("### Membership per stage: CPU-s and peak RSS, before/after in fresh processes (issue 15, scale9)"
                 if args.block == "scaling" else f"### {args.title}") + "\n\n"
                f"Command: `{cmd_line}`. `run_membership` on the scaling benchmark's phantom folders (made under "
                "--data), each side in a fresh process on fresh stores (decoding included). A sampler thread gives "
                "every 0.1 s the process CPU-s (all threads) and VmRSS to the stage whose function is on a thread's "
                "stack (stage borders +-0.1 s; 'peak RSS' = the largest VmRSS sampled in the stage; 'total' = "
                "getrusage CPU-s, ru_maxrss and wall). before = the --before checkout's code, after = this "
                "checkout's. The two sides ran one after the other, not interleaved: CPU-s are the figures to "
                "compare, wall times depend on the load.\n"))
        return 0
    if args.shape_search:
        sizes = _sizes(args.shape_search)
        rows = shape_search(sizes, Path(args.data), before=args.before)
        if args.write_results and args.before:
            _write_block(args.write_results, "shape-search-scale9", rows, (
                "### Membership shape-mask search: the pruned search before/after the per-block residual bound, same "
                "run (issue 15, scale9)\n\n"
                f"Command: `{cmd_line}`. The scaling benchmark's 128x128 phantoms (real10000, gen10000-r10000; "
                "generated rows beyond 10,000 are shifted copies); `evidence._shape_search_bound` (every real "
                "image's nearest generated mask and nearest other real mask, 16,384-d: 4 levels x 64 x 64). before "
                "= the --before checkout's `evidence.py` and `knn_l2_both_bound` (2x2 blocks + one residual norm: a "
                "4,097-d bound), after = this checkout's (4x4 blocks + the residual norm of every block: 2,048-d, "
                "tighter; the A rows' first-round picks only while their lists are not full; the masks' label "
                "slices from the running maximum label instead of a nonzero over the stack). Both sides make the "
                "generated masks per chunk (most of the stage now). Alternating sides, best wall and best CPU-s (all "
                "threads) per side; 'exact share' = pairs given an exact distance / pairs.\n"))
        elif args.write_results:
            _write_block(args.write_results, "shape-search-scale7", rows, (
                "### Membership shape-mask search before/after the lower-bound pruning, same run (issue 15, scale7)\n\n"
                f"Command: `{cmd_line}`. The scaling benchmark's 128x128 phantoms (real10000, gen10000-r10000); the "
                "shape stage's search: every real image's nearest generated mask and nearest other real mask "
                "(16,384-d: 4 levels x 64 x 64). before = FAISS Flat per generated chunk + the real x real search "
                "(`_knn_chunked`, `_knn_self`), after = `evidence._shape_search_bound` (`knn_l2_both_bound` with "
                "k_b = 0: a 4,096-d 2x2-block lower bound, exact distances only where it does not rule a pair "
                "out). Both sides make the generated masks per chunk (part of the stage). Alternating sides, 2 "
                "runs each, best wall and best CPU-s (all threads) per side.\n"))
        return 0
    if args.bound_search:
        sizes = _sizes(args.bound_search)
        rows = bound_search(sizes, Path(args.data), before=args.before)
        if args.write_results and args.before:
            _write_block(args.write_results, "bound-search-scale9", rows, (
                "### Membership pixel search: the pruned search before/after the per-block residual bound, same run "
                "(issue 15, scale9)\n\n"
                f"Command: `{cmd_line}`. The scaling benchmark's 128x128 phantoms (real10000, gen10000-r10000; "
                "generated rows beyond 10,000 are shifted copies), z-scored; k = 10 generated per real, 2 real per "
                "generated; blocks of the 2 GiB budget. before = `knn_l2_both_bound` of the --before checkout "
                "(2x2 blocks + one residual norm: a 4,097-d bound; every A row's 10 best by the bound get an exact "
                "distance in every block), after = this checkout's (4x4 blocks + the residual norm of every block: "
                "2,048-d and tighter; first-round picks for A rows only while their lists are not full; the slack "
                "folded into per-row terms; the B rows' picks read in row order). The same exact kernel. "
                "Alternating sides, best wall and best CPU-s (all threads) per side; 'exact share' = pairs given "
                "an exact distance / R x G ('after' side).\n"))
        elif args.write_results:
            _write_block(args.write_results, "bound-search-scale6", rows, (
                "### Membership pixel search before/after the lower-bound pruning, same run (issue 15, scale6)\n\n"
                f"Command: `{cmd_line}`. The scaling benchmark's 128x128 phantoms (real10000, gen10000-r10000; generated "
                "rows beyond 10,000 are shifted copies), z-scored; k = 10 generated per real, 2 real per generated; "
                "blocks of the 2 GiB budget. before = `knn_l2_both` (every distance from a float32 product at "
                "16,384-d, exact float64 re-ranking), after = `knn_l2_both_bound` (4,096-d block-projection lower "
                "bound, exact float64 distances only where the bound does not rule a pair out). Alternating "
                "sides, 2 runs each, best wall and best CPU-s (all threads) per side; 'exact share' = pairs given "
                "an exact distance / R x G.\n"))
        return 0
    if args.stage_kernels:
        rows = stage_kernels()
        if args.write_results:
            _write_block(args.write_results, "stage-kernels-scale5", rows, (
                "### Membership hot spots before/after, same run (issue 15, scale5)\n\n"
                f"Command: `{cmd_line}`. 128x128 phantoms; best of 3 windows of at least 1 s each per side, same process; "
                "'outputs equal' compares the arrays bit for bit (the k-NN rows also with an exact float64 brute force: "
                "FAISS's Flat search picks its candidates in float32 and can miss a neighbour within rounding of the "
                "k-th; knn_l2_both keeps 8 extra float32 candidates before the exact re-ranking).\n"))
        return 0
    if args.evidence_memory:
        rows = evidence_memory()
        if args.write_results:
            _write_block(args.write_results, "evidence-memory", rows, (
                "### Where the membership evidence's memory goes (tracemalloc)\n\n"
                f"Command: `{cmd_line}`. `compute_evidence` on 128x128 phantoms; peak of the NumPy/Python allocations "
                "(FAISS's internal copy of each indexed chunk, 64 KB per image, is not traced). 'One chunk' holds the "
                "float z-scores and masks of every generated image at once (the code before issue 15 held, in "
                "addition, float tiles of every generated image, so it needed more); with a budget the generated "
                "set is walked in chunks and the evidence is identical (tests/test_streaming.py). Seconds are under the machine's load, not a speed comparison.\n"))
        return 0
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    sizes = _sizes(args.sizes)
    rows = []
    if args.from_json:  # re-fit and re-write from measured rows of an earlier run (nothing is re-measured)
        rows = json.loads(Path(args.from_json).read_text())["rows"]
        sizes = []
    for r, g in sizes:
        t0 = time.perf_counter()
        res = run_size(data, r, g, args.memory_budget, args.monitor, store_dir=args.store_dir)
        res.update(real=r, generated=g, load=os.getloadavg(), bench_s=time.perf_counter() - t0)
        rows.append(res)
        print(json.dumps(res), flush=True)
    # exponents: time and memory against G at the most common R, and against R at the most common G
    rs = [x["real"] for x in rows]
    gs = [x["generated"] for x in rows]
    r0 = max(set(rs), key=rs.count)
    g0 = max(set(gs), key=gs.count)
    if args.fit_at:
        r0, g0 = (int(v) for v in args.fit_at.split(","))
    atG = sorted((x for x in rows if x["real"] == r0), key=lambda x: x["generated"])
    atR = sorted((x for x in rows if x["generated"] == g0), key=lambda x: x["real"])
    a_t = fit_exponent([x["generated"] for x in atG], [x["wall_s"] for x in atG])
    a_m = fit_exponent([x["generated"] for x in atG], [x["peak_rss_mb"] for x in atG])
    b_t = fit_exponent([x["real"] for x in atR], [x["wall_s"] for x in atR])
    b_m = fit_exponent([x["real"] for x in atR], [x["peak_rss_mb"] for x in atR])
    # near-linear floor for the real exponent when it was not measured: the R x R and R x G searches are linear
    # in R at fixed G (stated, not measured)
    b_t_use = b_t if b_t is not None else 1.0
    b_m_use = b_m if b_m is not None else 1.0
    ran = {(x["real"], x["generated"]) for x in rows}
    # cost model over every measured row: wall = c0 + c1*R + c2*G + c3*R*G (the exact searches are ~R*G, the
    # per-image stages ~R or ~G), RSS = m0 + m1*R + m2*G; least squares, only with more rows than parameters
    cm_t = cm_m = None
    if len(rows) >= 5:
        R_ = np.array([x["real"] for x in rows], float)
        G_ = np.array([x["generated"] for x in rows], float)
        cm_t = np.linalg.lstsq(np.c_[np.ones_like(R_), R_, G_, R_ * G_], [x["wall_s"] for x in rows], rcond=None)[0]
        cm_m = np.linalg.lstsq(np.c_[np.ones_like(R_), R_, G_], [x["peak_rss_mb"] for x in rows], rcond=None)[0]
    ext = []
    ref = max(atG, key=lambda x: x["generated"]) if atG else rows[-1]
    for s in args.extrapolate.split(","):
        if not s:
            continue
        r, g = (int(v) for v in s.split("x"))
        if (r, g) in ran or a_t is None:
            continue
        ft = (g / ref["generated"]) ** a_t * (r / ref["real"]) ** b_t_use
        fm = (g / ref["generated"]) ** max(a_m or 0.0, 0.0) * (r / ref["real"]) ** b_m_use
        # linear model: time = c + a*G at R0 (least squares), times R/R0 (the R x G searches are linear in R;
        # the R x R search, quadratic in R, is left out); RSS = c + a*G plus the per-real slope measured at G0
        lin_t = lin_m = None
        if len(atG) >= 2:
            A = np.c_[np.ones(len(atG)), [x["generated"] for x in atG]]
            ct, at = np.linalg.lstsq(A, [x["wall_s"] for x in atG], rcond=None)[0]
            cm, am = np.linalg.lstsq(A, [x["peak_rss_mb"] for x in atG], rcond=None)[0]
            lin_t = (ct + at * g) * (r / r0)
            slope_r = 0.0
            if len(atR) >= 2:
                slope_r = np.polyfit([x["real"] for x in atR], [x["peak_rss_mb"] for x in atR], 1)[0]
            lin_m = cm + am * g + slope_r * (r - r0)
        ext.append({"real": r, "generated": g, "wall_s": ref["wall_s"] * ft, "peak_rss_mb": ref["peak_rss_mb"] * fm,
                    "wall_s_linear": lin_t, "peak_rss_mb_linear": lin_m,
                    "wall_s_cost_model": None if cm_t is None else float(cm_t @ [1, r, g, r * g]),
                    "peak_rss_mb_cost_model": None if cm_m is None else float(cm_m @ [1, r, g])})
    out = {"rows": rows, "exponents": {"time_vs_generated": a_t, "rss_vs_generated": a_m, "time_vs_real": b_t,
                                       "rss_vs_real": b_m}, "extrapolated": ext,
           "cost_model": None if cm_t is None else {"wall_s": [float(v) for v in cm_t],
                                                    "peak_rss_mb": [float(v) for v in cm_m]}}
    print(json.dumps(out["exponents"]))
    for e in ext:
        print(f"extrapolated {e['real']}x{e['generated']}: {e['wall_s']:.0f} s, {e['peak_rss_mb']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if args.write_results:
        def fmt_exp(v):
            return "n/a" if v is None else f"{v:.2f}"
        def num(v):
            return "" if v is None else v
        table = [{"real": f"{x['real']:,}", "generated": f"{x['generated']:,}", "measured": "yes",
                  "wall s": x["wall_s"], "CPU s": x.get("cpu_s", ""), "peak RSS MB": x["peak_rss_mb"],
                  "wall s (linear model)": "", "peak RSS MB (linear model)": "", "wall s (cost model)": "",
                  "peak RSS MB (cost model)": "", "chunk": x.get("chunk") or "",
                  "load (1 min)": f"{x['load'][0]:.1f}", "commit": x.get("commit", "")} for x in rows]
        table += [{"real": f"{e['real']:,}", "generated": f"{e['generated']:,}", "measured": "**extrapolated**",
                   "wall s": e["wall_s"], "CPU s": "", "peak RSS MB": e["peak_rss_mb"],
                   "wall s (linear model)": num(e.get("wall_s_linear")),
                   "peak RSS MB (linear model)": num(e.get("peak_rss_mb_linear")),
                   "wall s (cost model)": num(e.get("wall_s_cost_model")),
                   "peak RSS MB (cost model)": num(e.get("peak_rss_mb_cost_model")),
                   "chunk": "", "load (1 min)": "", "commit": ""} for e in ext]
        _write_block(args.write_results, args.block, table, (
            f"### {args.title}\n\n"
            f"Command: `{cmd_line}`. 128x128 CT-like phantoms (5% of the generated images are noisy copies of real "
            "ones), no dev set, default decision; each size in a fresh process (peak RSS = its `ru_maxrss`). "
            f"Fitted exponents: time ~ G^{fmt_exp(a_t)}, peak RSS ~ G^{fmt_exp(a_m)} at R={r0:,}; "
            f"time ~ R^{fmt_exp(b_t)}, RSS ~ R^{fmt_exp(b_m)} at G={g0:,}"
            + ("" if b_t is not None else " (R exponents not measured: extrapolation assumes linear in R, a lower "
               "bound since the real-vs-real search is quadratic in R)")
            + ". Extrapolated rows were **not run**: `wall s` / `peak RSS MB` apply these power laws from the "
            "largest measured size (optimistic: at these sizes fixed costs such as JIT compilation flatten the "
            "exponents); the linear-model columns fit `c + a*G` at the smallest R and scale by R (time) or add the "
            "measured per-real-image memory (RSS), closer to the cost model (exact searches linear in G), but "
            "they still leave out the R x R search, quadratic in R. "
            + ("" if cm_t is None else
               f"The cost-model columns fit every measured row: wall = {cm_t[0]:.3g} + {cm_t[1]:.3g}*R + {cm_t[2]:.3g}*G "
               f"+ {cm_t[3]:.3g}*R*G s, peak RSS = {cm_m[0]:.3g} + {cm_m[1]:.3g}*R + {cm_m[2]:.3g}*G MB (least "
               "squares; a projection, not a measurement). ")
            + "Pages of the memory-mapped pixel stores are released after each pass (issue 15, scale5), so RSS no "
            "longer counts every touched generated image.\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
