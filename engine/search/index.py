"""Index choice (``index="auto"``) and construction: train, place (CPU or GPU), fill and calibrate."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from imprint.engine.errors import ImprintError

from . import gpu as G
from .common import (AUTO_EXACT_MAX_WORK, AUTO_MIN_M_APPROX, CALIBRATION_QUERIES, DEFAULT_MEMORY_BUDGET,
                     TRAIN_POINTS_PER_LIST, _as_matrix, _check_metric, _check_pos_int, _faiss_metric,
                     _index_kind, _is_gpu_index, _normalised, _Prepared, _require_faiss, _sample_rows,
                     _set_threads, faiss)
from .tune import _calibrate


def _auto_nlist(n: int) -> int:
    return int(max(1, min(n // TRAIN_POINTS_PER_LIST if n >= TRAIN_POINTS_PER_LIST else 1, round(4 * math.sqrt(n)))))


def _pq_m(d: int, n: int, budget: float, gpu: bool = False) -> int:
    """Largest divisor m of d with m <= d/2 whose codes (n*m bytes) fit ``budget``; at least 1.

    With ``gpu=True`` only code sizes GPU IVF-PQ accepts (:func:`engine.search.gpu.pq_m_ok`: m in its list,
    d/m a supported sub-vector size, float32 lookup tables) are considered.
    """
    valid = [m for m in range(1, d + 1) if d % m == 0 and m <= max(1, d // 2) and (not gpu or G.pq_m_ok(m, d))]
    if not valid:  # no GPU-compatible size: the caller's GPU check keeps such an index on the CPU
        return 1
    best = valid[0]  # the smallest valid size even when it exceeds the budget
    for m in valid:
        if n * m <= budget:
            best = m
    return best


def choose_index(n_base: int, d: int, n_queries: int | None = None, *,
                 memory_budget: float = DEFAULT_MEMORY_BUDGET, gpu: bool = False) -> str:
    """FAISS factory string that ``index="auto"`` uses.

    Parameters
    ----------
    n_base : int
        Number of base vectors ``M``.
    d : int
        Dimension.
    n_queries : int or None
        Number of queries ``N`` (None: a within-store search, ``N = M``).
    memory_budget : float
        Bytes allowed for the index codes; above it IVF stores SQ8/PQ codes.
    gpu : bool
        The index will run on a GPU: IVF-PQ gets a code size GPU IVF-PQ supports.

    Returns
    -------
    str
        ``"Flat"``, ``"IVF{nlist},Flat"``, ``"IVF{nlist},SQ8"`` or ``"IVF{nlist},PQ{m}"``.
    """
    n_base = int(n_base)
    d = int(d)
    nq = n_base if n_queries is None else int(n_queries)
    if n_base < AUTO_MIN_M_APPROX or float(nq) * n_base * d <= AUTO_EXACT_MAX_WORK:
        return "Flat"
    nlist = _auto_nlist(n_base)
    raw = 4.0 * n_base * d
    if raw <= memory_budget:
        return f"IVF{nlist},Flat"
    if raw / 4.0 <= memory_budget:
        return f"IVF{nlist},SQ8"
    return f"IVF{nlist},PQ{_pq_m(d, n_base, memory_budget, gpu)}"


def _float16_factory(factory: str) -> str:
    """The CPU form of float16 storage: raw ``Flat`` vectors become an ``SQfp16`` codec (others unchanged)."""
    parts = factory.split(",")
    if parts[-1].strip().upper() == "FLAT":
        parts[-1] = "SQfp16"
    return ",".join(parts)


def _refine_factor(factory: str) -> int:
    """Candidate multiplier for lossy codecs (candidates are re-ranked exactly)."""
    f = factory.upper()
    if "PQ" in f or "LSH" in f:
        return 4
    if "SQ" in f:
        return 2
    return 1



def _make_index(base: np.ndarray, metric: str, factory: str, on_gpu: bool,
                random_state: int, use_gpu: Any, float16: bool = False) -> tuple[Any, bool, str, int]:
    m, d = base.shape
    try:
        cpu = faiss.index_factory(d, factory, _faiss_metric(metric))
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else "?"
        raise ImprintError(f"invalid FAISS index string {factory!r}: {msg}") from None
    try:
        ivf = faiss.extract_index_ivf(cpu)
    except Exception:
        ivf = None
    if ivf is not None:
        ivf.cp.seed = int(random_state) & 0x7FFFFFFF
        ivf.cp.max_points_per_centroid = 1 << 30  # we subsample ourselves
        ivf.cp.spherical = metric == "cosine"
        inner = faiss.downcast_index(ivf)
        if hasattr(inner, "do_polysemous_training"):
            # the factory enables slow polysemous annealing for "PQm"; we re-rank exactly instead
            inner.do_polysemous_training = False
    if not cpu.is_trained:
        nlist = int(ivf.nlist) if ivf is not None else 0
        n_train = max(TRAIN_POINTS_PER_LIST * max(nlist, 1), 10_000)
        rows = _sample_rows(m, n_train, random_state)
        if ivf is not None and rows.size < nlist:
            raise ImprintError(f"index {factory!r} needs at least {nlist} vectors to train, got {m}")
        try:
            cpu.train(base[rows])
        except RuntimeError as exc:
            msg = str(exc).strip().splitlines()[-1]
            raise ImprintError(f"training FAISS index {factory!r} failed: {msg}") from None
    kind = _index_kind(cpu)
    nlist = int(ivf.nlist) if ivf is not None else 0
    index = cpu
    placed_on_gpu = False
    if on_gpu:  # pragma: no cover - requires faiss-gpu
        try:
            index = G.to_gpu(cpu, float16=float16)
            placed_on_gpu = True
        except Exception as exc:
            if use_gpu is True:
                raise ImprintError(f"index {factory!r} cannot run on the GPU: {exc}") from None
            index = cpu
    try:
        G.fill(index, base)  # a sharded GPU index gets one add()
    except RuntimeError as exc:  # pragma: no cover
        raise ImprintError(f"adding vectors to FAISS index {factory!r} failed: {str(exc).splitlines()[-1]}") from None
    return index, placed_on_gpu, kind, nlist



def _prepare(base_f32: np.ndarray, metric: str, index: Any, use_gpu: Any, random_state: int,
             n_queries: int | None, memory_budget: float, target_recall: float,
             cal_queries: np.ndarray | None, cal_k: int, float16: bool = False) -> _Prepared:
    """Build (or adopt) an index on already-validated float32 ``base_f32``."""
    m, d = base_f32.shape
    if not isinstance(index, str):
        # a prebuilt FAISS index (e.g. from build_index on this same base)
        if not hasattr(index, "search") or not hasattr(index, "ntotal"):
            raise ImprintError(f"index must be 'auto', a FAISS factory string or a faiss.Index, got {type(index).__name__}")
        if int(index.d) != d:
            raise ImprintError(f"index dimension {index.d} does not match base dimension {d}")
        if int(index.ntotal) != m:
            raise ImprintError(f"index holds {index.ntotal} vectors but base has {m}")
        if int(index.metric_type) != _faiss_metric(metric):
            raise ImprintError(f"index metric does not match metric={metric!r}")
        kind = _index_kind(index)
        info = {"factory": "prebuilt:" + type(faiss.downcast_index(index)).__name__, "index_kind": kind,
                "n_base": m, "d": d, "metric": metric, "on_gpu": _is_gpu_index(index)}
        return _Prepared(index, base_f32, metric, 1, _is_gpu_index(index), info)
    factory = index
    if not factory.strip():
        raise ImprintError("index must be 'auto' or a non-empty FAISS factory string")
    on_gpu = G._resolve_gpu(use_gpu)
    if factory == "auto":
        factory = choose_index(m, d, n_queries, memory_budget=memory_budget, gpu=on_gpu)
    cpu_because = None
    if on_gpu and "HNSW" in factory.upper():
        cpu_because = f"index {factory!r} is not supported on the GPU"
    elif on_gpu:
        ok, why = G.pq_ok(factory, d)
        cpu_because = None if ok else why
    if cpu_because is not None:
        if use_gpu is True:
            raise ImprintError(cpu_because)
        on_gpu = False
    refine = _refine_factor(factory)
    if float16:
        if on_gpu:
            refine = max(refine, 2)  # float16 vectors choose the candidates; they are re-ranked exactly
        else:
            factory = _float16_factory(factory)
            refine = _refine_factor(factory)
    base = _normalised(base_f32) if metric == "cosine" else base_f32
    t0 = time.perf_counter()
    idx, placed, kind, nlist = _make_index(base, metric, factory, on_gpu, random_state, use_gpu, float16)
    t_build = time.perf_counter() - t0
    info = {"factory": factory, "index_kind": kind, "n_base": m, "d": d, "metric": metric,
            "on_gpu": placed, "build_s": round(t_build, 3)}
    if float16:
        info["float16"] = True
    if cpu_because is not None:
        info["cpu_because"] = cpu_because
    if nlist:
        info["nlist"] = nlist
    prep = _Prepared(idx, base_f32, metric, refine, placed, info)
    if m > 0:
        if cal_queries is None:
            rows = _sample_rows(m, CALIBRATION_QUERIES, random_state + 1)
            cal_q, self_rows = base[rows], rows
        else:
            rows = _sample_rows(cal_queries.shape[0], CALIBRATION_QUERIES, random_state + 1)
            cal_q = cal_queries[rows]
            if metric == "cosine":
                cal_q = _normalised(cal_q)
            self_rows = None
        t0 = time.perf_counter()
        _calibrate(prep, np.ascontiguousarray(cal_q), self_rows, cal_k, target_recall, base)
        info["calibrate_s"] = round(time.perf_counter() - t0, 3)
    return prep


def build_index(vectors: Any, *, metric: str = "l2", index: str = "auto", use_gpu: Any = "auto",
                random_state: int = 0, n_queries: int | None = None,
                memory_budget: float = DEFAULT_MEMORY_BUDGET, target_recall: float = 0.95,
                k: int = 10, n_threads: int | None = None, return_info: bool = False,
                float16: bool = False):
    """Build a FAISS index over ``vectors`` (trained, filled and calibrated).

    Parameters
    ----------
    vectors : array-like float [M, d]
        Base vectors (finite).  For ``metric="cosine"`` a normalised copy is indexed.
    metric : {"l2", "cosine"}
    index : str
        ``"auto"`` (see :func:`choose_index`) or a FAISS factory string
        (``"Flat"``, ``"IVF1024,Flat"``, ``"HNSW32"``, ``"IVF4096,PQ32"``, ...).
    use_gpu : "auto", bool
        GPU placement (sharded over all GPUs) -- see module docstring.
    random_state : int
        Seeds the training sample, k-means and the calibration sample.
    n_queries : int or None
        Expected number of queries for the "auto" choice (None: within-store, ``M``).
    memory_budget : float
        Bytes for the codes before "auto" compresses (SQ8 / PQ).
    target_recall : float
        Recall@k that ``nprobe`` / ``efSearch`` is calibrated for (within-store sample).
    k : int
        k used for the calibration.
    n_threads : int or None
        FAISS OpenMP threads (default: ``$IMPRINT_THREADS``, ``$OMP_NUM_THREADS`` or CPU affinity).
    return_info : bool
        Also return a JSON-able dict (factory, build time, calibrated nprobe/efSearch, recall curve).
    float16 : bool
        Store the vectors in float16 (GPU: ``useFloat16`` on the clone; CPU: ``Flat`` -> ``SQfp16``), half the
        memory; the candidates are re-ranked with exact distances.

    Returns
    -------
    faiss.Index or (faiss.Index, dict)
        Search it with queries normalised the same way (cosine: unit rows).
    """
    _require_faiss()
    metric = _check_metric(metric)
    k = _check_pos_int("k", k)
    if not (0.0 < float(target_recall) <= 1.0):
        raise ImprintError(f"target_recall must be in (0, 1], got {target_recall!r}")
    if not isinstance(index, str):
        raise ImprintError(f"index must be 'auto' or a FAISS factory string, got {type(index).__name__}")
    base = _as_matrix("vectors", vectors)
    _set_threads(n_threads)
    prep = _prepare(base, metric, index, use_gpu, int(random_state), n_queries, memory_budget,
                    float(target_recall), None, k, bool(float16))
    return (prep.index, prep.info) if return_info else prep.index


# --------------------------------------------------------------------------- #
