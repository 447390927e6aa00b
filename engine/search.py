"""Nearest-neighbour search on FAISS (exact and approximate, CPU or GPU).

Public API
----------
- :func:`knn` -- k nearest neighbours of ``queries`` among ``base``; returns
  ``(dist float32[N,k], idx int64[N,k])``.
- :func:`knn_stream` -- same search, yielded per query batch (bounded memory).
- :func:`knn_to_parquet` -- stream the neighbour table to a Parquet file
  (columns ``query_id, neighbor_id, rank, distance``), written atomically.
- :func:`build_index` -- build (train, fill, calibrate) a FAISS index.
- :func:`choose_index` -- the factory string that ``index="auto"`` picks.
- :func:`cost_model_text` -- how time and memory grow with N, M, k and d.

Distances
---------
``metric="l2"`` returns *squared* Euclidean distances; ``metric="cosine"``
returns ``1 - cos(q, b)`` (in ``[0, 2]``), computed on normalised copies with
an inner-product index.  A zero vector has cosine 0 with everything (distance
1).  By default the distances of the returned neighbours are recomputed exactly
in float64 from the input vectors (``exact_distances=True``), so results do not
depend on FAISS' BLAS/SIMD code path, on the batch size, or on the index codec
(SQ/PQ codes only choose the candidates; they are re-ranked exactly).  Rows are
sorted by ``(distance, index)``; missing neighbours are padded with index -1
and distance ``inf``.

Automatic index choice (``index="auto"``)
-----------------------------------------
With ``M`` base vectors of dimension ``d`` and ``N`` queries (``N = M`` for
a within-store search):

1. exact ``Flat`` when ``M < AUTO_MIN_M_APPROX`` (50,000) or when the brute
   force work ``N*M*d <= AUTO_EXACT_MAX_WORK`` (2e11 multiply-adds, a few
   seconds on 2 CPU cores -- cheaper than training an IVF index);
2. otherwise ``IVF{nlist},Flat`` with ``nlist = round(4*sqrt(M))`` if the raw
   vectors (``4*M*d`` bytes) fit ``memory_budget`` (default 4 GiB),
   ``IVF{nlist},SQ8`` (1 byte/dim) if a quarter of that fits, else
   ``IVF{nlist},PQ{m}`` (``m`` bytes/vector).  SQ/PQ candidates are re-ranked
   with exact distances (``refine`` factor 2 / 4).
   IVF is trained on a deterministic sample of ``40*nlist`` vectors (seeded
   k-means, spherical for cosine), then ``nprobe`` is calibrated: the smallest
   power of two whose recall@k on a deterministic calibration sample reaches
   ``target_recall + 0.01`` (default target 0.95).
HNSW (e.g. ``"HNSW32"``) is available through a factory string; its
``efSearch`` is calibrated the same way.  It is not chosen automatically:
on the 2-core dev machine its graph construction was 1.7x slower than IVF
at 60k x 128 and had not finished after 11 min at 1M x 128 (IVF: ~3 min),
its links cost ~256 extra bytes/vector, and its multi-threaded construction
is not bit-for-bit deterministic (see ``benchmarks/RESULTS.md``, search).

GPU
---
``use_gpu="auto"`` uses faiss-gpu when ``faiss.get_num_gpus() > 0`` (the
trained index is cloned with ``index_cpu_to_all_gpus``, sharded over all GPUs,
then filled); ``use_gpu=True`` requires a GPU, ``False`` forbids it.  Index
types FAISS cannot put on a GPU (HNSW) stay on the CPU under ``"auto"``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from imprint.engine.errors import ImprintError

try:  # pragma: no cover - import guard
    import faiss
except ImportError as _exc:  # pragma: no cover
    faiss = None
    _FAISS_IMPORT_ERROR = _exc
else:
    _FAISS_IMPORT_ERROR = None

__all__ = [
    "AUTO_EXACT_MAX_WORK",
    "AUTO_MIN_M_APPROX",
    "DEFAULT_MEMORY_BUDGET",
    "KnnBatch",
    "build_index",
    "choose_index",
    "cost_model_text",
    "knn",
    "knn_stream",
    "knn_to_parquet",
    "recall_at_k",
]

#: below this many base vectors "auto" always searches exactly
AUTO_MIN_M_APPROX = 50_000
#: "auto" searches exactly while n_queries * n_base * d stays below this
AUTO_EXACT_MAX_WORK = 2e11
#: raw-vector memory allowed for an IVF-Flat index before "auto" compresses
DEFAULT_MEMORY_BUDGET = 4 * 1024**3
#: IVF training sample size per inverted list
TRAIN_POINTS_PER_LIST = 40
#: number of queries used to calibrate nprobe / efSearch
CALIBRATION_QUERIES = 500
#: calibration aims this much above the requested recall (sampling error)
CALIBRATION_MARGIN = 0.01
#: FAISS GPU k-selection limit
_GPU_MAX_K = 2048

_METRICS = ("l2", "cosine")


# --------------------------------------------------------------------------- #
# small helpers
# --------------------------------------------------------------------------- #
def _require_faiss() -> None:
    if faiss is None:  # pragma: no cover
        raise ImprintError(f"faiss is not installed ({_FAISS_IMPORT_ERROR})")


def _default_threads() -> int:
    """Thread count that respects the machine: env override, else CPU affinity."""
    for var in ("IMPRINT_THREADS", "OMP_NUM_THREADS"):
        val = os.environ.get(var, "").strip()
        if val.isdigit() and int(val) > 0:
            return int(val)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _set_threads(n_threads: int | None) -> None:
    if n_threads is None:
        n_threads = _default_threads()
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) or n_threads < 1:
        raise ImprintError(f"n_threads must be a positive integer, got {n_threads!r}")
    faiss.omp_set_num_threads(int(n_threads))


def _gpu_count() -> int:
    """Number of GPUs visible to FAISS (0 for faiss-cpu); cheap."""
    fn = getattr(faiss, "get_num_gpus", None)
    if fn is None:
        return 0
    try:
        return int(fn())
    except Exception:  # pragma: no cover - broken driver
        return 0


def _resolve_gpu(use_gpu: Any) -> bool:
    if isinstance(use_gpu, str):
        if use_gpu != "auto":
            raise ImprintError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}")
        return _gpu_count() > 0
    if isinstance(use_gpu, (bool, np.bool_)):
        if use_gpu and _gpu_count() == 0:
            raise ImprintError("use_gpu=True but FAISS sees no GPU (install faiss-gpu or use use_gpu='auto')")
        return bool(use_gpu)
    raise ImprintError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}")


def _check_metric(metric: Any) -> str:
    if metric not in _METRICS:
        raise ImprintError(f"metric must be 'l2' or 'cosine', got {metric!r}")
    return metric


def _check_pos_int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ImprintError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _as_matrix(name: str, x: Any, *, check_chunk: int = 65536, check_finite: bool = True) -> np.ndarray:
    """Validate a 2-D finite real matrix; return it as C-contiguous float32 (no copy if already)."""
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ImprintError(f"{name} is not array-like: {exc}") from None
    if arr.ndim != 2:
        raise ImprintError(f"{name} must be a 2-D array [n, d], got shape {arr.shape}")
    if arr.dtype.kind not in "fiub":
        raise ImprintError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.shape[1] < 1:
        raise ImprintError(f"{name} must have at least one dimension (shape {arr.shape})")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    for s in range(0, arr.shape[0] if check_finite else 0, check_chunk):
        if not np.isfinite(arr[s : s + check_chunk]).all():
            raise ImprintError(f"{name} contains NaN or infinite values")
    return arr


def _normalised(x: np.ndarray) -> np.ndarray:
    """Row-normalised float32 copy; zero rows stay zero."""
    out = np.array(x, dtype=np.float32, copy=True)
    for s in range(0, out.shape[0], 65536):
        blk = out[s : s + 65536]
        norms = np.sqrt(np.einsum("ij,ij->i", blk, blk, dtype=np.float64))
        norms[norms == 0] = 1.0
        blk /= norms[:, None].astype(np.float32)
    return out


def _faiss_metric(metric: str) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def _unwrap(index: "faiss.Index") -> "faiss.Index":
    """Innermost index below pre-transforms / refine / id-map wrappers."""
    idx = faiss.downcast_index(index)
    for _ in range(8):
        if isinstance(idx, faiss.IndexPreTransform):
            idx = faiss.downcast_index(idx.index)
        elif isinstance(idx, (faiss.IndexRefine,)):
            idx = faiss.downcast_index(idx.base_index)
        elif isinstance(idx, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            idx = faiss.downcast_index(idx.index)
        else:
            break
    return idx


def _index_kind(index: "faiss.Index") -> str:
    """'ivf', 'hnsw' or 'other' (only the first two have a search knob we calibrate)."""
    try:
        faiss.extract_index_ivf(index)
        return "ivf"
    except Exception:
        pass
    inner = _unwrap(index)
    if hasattr(inner, "hnsw"):
        return "hnsw"
    if type(inner).__name__.startswith("GpuIndexIVF"):  # pragma: no cover - GPU only
        return "ivf"
    return "other"


def _n_lists(index: "faiss.Index") -> int:
    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except Exception:  # pragma: no cover - GPU sharded index
        inner = _unwrap(index)
        return int(getattr(inner, "nlist", 0) or getattr(inner, "getNumLists", lambda: 0)())


def _set_param(index: "faiss.Index", name: str, value: int, on_gpu: bool) -> None:
    if on_gpu:  # pragma: no cover - GPU only
        ps = faiss.GpuParameterSpace()
    else:
        ps = faiss.ParameterSpace()
    ps.set_index_parameter(index, name, int(value))


def _get_param(index: "faiss.Index", kind: str) -> int | None:
    try:
        if kind == "ivf":
            return int(faiss.extract_index_ivf(index).nprobe)
        if kind == "hnsw":
            return int(_unwrap(index).hnsw.efSearch)
    except Exception:  # pragma: no cover - GPU sharded index
        return None
    return None


def _is_gpu_index(index: "faiss.Index") -> bool:
    name = type(faiss.downcast_index(index)).__name__
    return name.startswith("Gpu") or name in ("IndexShards", "IndexReplicas")


# --------------------------------------------------------------------------- #
# index choice and construction
# --------------------------------------------------------------------------- #
def _auto_nlist(n: int) -> int:
    return int(max(1, min(n // TRAIN_POINTS_PER_LIST if n >= TRAIN_POINTS_PER_LIST else 1, round(4 * math.sqrt(n)))))


def _pq_m(d: int, n: int, budget: float) -> int:
    """Largest divisor m of d with m <= d/2 whose codes (n*m bytes) fit ``budget``; at least 1."""
    best = 1
    for m in range(1, d + 1):
        if d % m == 0 and m <= max(1, d // 2) and n * m <= budget:
            best = m
    return best


def choose_index(n_base: int, d: int, n_queries: int | None = None, *,
                 memory_budget: float = DEFAULT_MEMORY_BUDGET) -> str:
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
    return f"IVF{nlist},PQ{_pq_m(d, n_base, memory_budget)}"


def _refine_factor(factory: str) -> int:
    """Candidate multiplier for lossy codecs (candidates are re-ranked exactly)."""
    f = factory.upper()
    if "PQ" in f or "LSH" in f:
        return 4
    if "SQ" in f:
        return 2
    return 1


def _sample_rows(n: int, size: int, random_state: int) -> np.ndarray:
    if size >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)


@dataclass
class _Prepared:
    """Index plus what is needed to search it (vectors for exact re-ranking)."""

    index: Any
    base: np.ndarray  # float32 [M, d], normalised for cosine
    metric: str
    refine: int
    on_gpu: bool
    info: dict = field(default_factory=dict)


def _make_index(base: np.ndarray, metric: str, factory: str, on_gpu: bool,
                random_state: int, use_gpu: Any) -> tuple[Any, bool, str, int]:
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
            co = faiss.GpuMultipleClonerOptions()
            co.shard = True
            co.useFloat16 = False
            index = faiss.index_cpu_to_all_gpus(cpu, co=co)
            placed_on_gpu = True
        except Exception as exc:
            if use_gpu is True:
                raise ImprintError(f"index {factory!r} cannot run on the GPU: {exc}") from None
            index = cpu
    try:
        for s in range(0, m, 262144):
            index.add(base[s : s + 262144])
    except RuntimeError as exc:  # pragma: no cover
        raise ImprintError(f"adding vectors to FAISS index {factory!r} failed: {str(exc).splitlines()[-1]}") from None
    return index, placed_on_gpu, kind, nlist


def recall_at_k(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Mean fraction of the exact neighbours (ignoring -1 padding) that ``approx_idx`` found.

    Parameters
    ----------
    approx_idx, exact_idx : int64 [N, k]

    Returns
    -------
    float
        ``sum_i |A_i ∩ E_i| / sum_i |E_i|`` (1.0 when nothing is expected).
    """
    a = np.asarray(approx_idx)
    e = np.asarray(exact_idx)
    if a.shape[0] != e.shape[0]:
        raise ImprintError("recall_at_k: row counts differ")
    hit = ((a[:, :, None] == e[:, None, :]) & (e[:, None, :] >= 0)).any(axis=1)
    denom = int((e >= 0).sum())
    return 1.0 if denom == 0 else float(hit.sum()) / denom


def _calibrate(prep: _Prepared, cal_q: np.ndarray, self_rows: np.ndarray | None,
               k: int, target: float, gt_base: np.ndarray) -> None:
    """Pick the smallest nprobe/efSearch reaching ``target`` recall@k on ``cal_q``."""
    info = prep.info
    kind = info.get("index_kind") or _index_kind(prep.index)
    info["index_kind"] = kind
    if kind not in ("ivf", "hnsw") or cal_q.shape[0] == 0:
        return
    m = prep.base.shape[0]
    extra = 1 if self_rows is not None else 0
    k_eff = max(1, min(k, m - extra))
    kk = min(k_eff + extra, m)
    _, gt = faiss.knn(cal_q, gt_base, kk, metric=_faiss_metric(prep.metric))
    gt = gt.astype(np.int64)
    if self_rows is not None:
        gt = _drop_self(gt, self_rows)[:, :k_eff]
    if kind == "ivf":
        nlist = int(info.get("nlist") or _n_lists(prep.index))
        cands = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if p < nlist] + [nlist]
        name = "nprobe"
    else:
        cands = [e for e in (16, 32, 64, 128, 256, 512, 1024, 2048) if e >= kk] or [max(kk, 16)]
        name = "efSearch"
    goal = min(1.0, target + CALIBRATION_MARGIN)
    chosen, rec, curve = cands[-1], float("nan"), []
    for p in cands:
        _set_param(prep.index, name, p, prep.on_gpu)
        _, ai = _search_block(prep, cal_q, kk)
        if self_rows is not None:
            ai = _drop_self(ai, self_rows)
        r = recall_at_k(ai[:, :k_eff], gt)
        curve.append((int(p), round(r, 4)))
        chosen, rec = p, r
        if r >= goal:
            break
    _set_param(prep.index, name, chosen, prep.on_gpu)
    info[name] = int(chosen)
    info["calibration"] = {"k": int(k_eff), "queries": int(cal_q.shape[0]), "recall": float(rec),
                           "target": float(target), "curve": curve}
    if rec < target:
        warnings.warn(f"index {info.get('factory')!r}: calibrated recall@{k_eff} {rec:.3f} "
                      f"< target {target:.2f} at {name}={chosen}", RuntimeWarning, stacklevel=3)


def _drop_self(idx: np.ndarray, self_rows: np.ndarray) -> np.ndarray:
    """Move the self match (idx == self_rows[i]) of each row to the end as -1."""
    mask = idx == self_rows[:, None]
    key = np.where(mask, 1, 0)
    order = np.argsort(key, axis=1, kind="stable")
    out = np.take_along_axis(np.where(mask, -1, idx), order, axis=1)
    return out


def _prepare(base_f32: np.ndarray, metric: str, index: Any, use_gpu: Any, random_state: int,
             n_queries: int | None, memory_budget: float, target_recall: float,
             cal_queries: np.ndarray | None, cal_k: int) -> _Prepared:
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
    if factory == "auto":
        factory = choose_index(m, d, n_queries, memory_budget=memory_budget)
    elif not factory.strip():
        raise ImprintError("index must be 'auto' or a non-empty FAISS factory string")
    on_gpu = _resolve_gpu(use_gpu)
    if on_gpu and "HNSW" in factory.upper():
        if use_gpu is True:
            raise ImprintError(f"index {factory!r} is not supported on the GPU")
        on_gpu = False
    base = _normalised(base_f32) if metric == "cosine" else base_f32
    t0 = time.perf_counter()
    idx, placed, kind, nlist = _make_index(base, metric, factory, on_gpu, random_state, use_gpu)
    t_build = time.perf_counter() - t0
    info = {"factory": factory, "index_kind": kind, "n_base": m, "d": d, "metric": metric,
            "on_gpu": placed, "build_s": round(t_build, 3)}
    if nlist:
        info["nlist"] = nlist
    prep = _Prepared(idx, base_f32, metric, _refine_factor(factory), placed, info)
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
                k: int = 10, n_threads: int | None = None, return_info: bool = False):
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
                    float(target_recall), None, k)
    return (prep.index, prep.info) if return_info else prep.index


# --------------------------------------------------------------------------- #
# searching
# --------------------------------------------------------------------------- #
def _exact_distances(base: np.ndarray, q: np.ndarray, idx: np.ndarray, metric: str) -> np.ndarray:
    """Exact float64 distances between q[i] and base[idx[i, j]] (inf where idx < 0)."""
    n, kk = idx.shape
    d = base.shape[1]
    out = np.empty((n, kk), dtype=np.float64)
    step = max(1, (1 << 21) // max(1, kk * d))
    safe = np.where(idx < 0, 0, idx)
    for s in range(0, n, step):
        b = base[safe[s : s + step]].astype(np.float64)  # [b, kk, d]
        qq = q[s : s + step].astype(np.float64)[:, None, :]
        if metric == "l2":
            diff = b - qq
            out[s : s + step] = np.einsum("ijk,ijk->ij", diff, diff)
        else:  # q is unit-norm; normalise the gathered base rows (zero rows stay zero)
            nb = np.sqrt(np.einsum("ijk,ijk->ij", b, b))
            nb[nb == 0] = 1.0
            cos = np.einsum("ijk,ijk->ij", b, qq) / nb
            out[s : s + step] = np.clip(1.0 - cos, 0.0, 2.0)
    if not np.isfinite(out).all():
        raise ImprintError("base contains NaN or infinite values")
    out[idx < 0] = np.inf
    return out


def _sort_rows(dist: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (distance, index) with padding (-1, inf) last."""
    ikey = np.where(idx < 0, np.iinfo(np.int64).max, idx)
    order = np.lexsort((ikey, dist), axis=-1)
    return np.take_along_axis(dist, order, axis=1), np.take_along_axis(idx, order, axis=1)


def _search_block(prep: _Prepared, q: np.ndarray, kk: int, exact_distances: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Search prepared (normalised) queries; returns sorted (float64 dist, int64 idx) [n, kk]."""
    m = prep.base.shape[0]
    n = q.shape[0]
    if m == 0 or n == 0:
        return np.full((n, kk), np.inf), np.full((n, kk), -1, dtype=np.int64)
    k_search = min(m, kk * prep.refine)
    if prep.on_gpu:  # pragma: no cover - GPU only
        k_search = min(k_search, _GPU_MAX_K)
    d_raw, i_raw = prep.index.search(q, k_search)
    i_raw = i_raw.astype(np.int64, copy=False)
    if exact_distances or prep.refine > 1:
        dist = _exact_distances(prep.base, q, i_raw, prep.metric)
    else:
        dist = d_raw.astype(np.float64)
        dist = np.maximum(dist, 0.0) if prep.metric == "l2" else np.clip(1.0 - dist, 0.0, 2.0)
        dist[i_raw < 0] = np.inf
    dist, idx = _sort_rows(dist, i_raw)
    if k_search < kk:
        dist = np.concatenate([dist, np.full((n, kk - k_search), np.inf)], axis=1)
        idx = np.concatenate([idx, np.full((n, kk - k_search), -1, dtype=np.int64)], axis=1)
    return dist[:, :kk], idx[:, :kk]


def _hash_codes(base_hashes: Any, query_hashes: Any, m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary hashable hashes to int64 codes shared by base and queries."""
    bh = list(base_hashes)
    qh = list(query_hashes)
    if len(bh) != m:
        raise ImprintError(f"base_hashes has {len(bh)} entries but base has {m} rows")
    if len(qh) != n:
        raise ImprintError(f"query_hashes has {len(qh)} entries but queries has {n} rows")
    table: dict = {}
    try:
        bc = np.fromiter((table.setdefault(h, len(table)) for h in bh), dtype=np.int64, count=m)
        qc = np.array([table.get(h, -1 - i) for i, h in enumerate(qh)], dtype=np.int64)
    except TypeError:
        raise ImprintError("hashes must be hashable values (str, bytes or int)") from None
    return bc, qc


class KnnBatch(NamedTuple):
    """One batch of :func:`knn_stream` output.

    Attributes
    ----------
    start : int
        Row of ``queries`` that ``dist[0]`` / ``idx[0]`` belong to.
    dist : float32 [b, k]
        Distances (squared L2 or 1-cos), ``inf`` for padding.
    idx : int64 [b, k]
        Base row indices, ``-1`` for padding.
    """

    start: int
    dist: np.ndarray
    idx: np.ndarray


def _validate_knn(base, queries, k, metric, exclude_self, base_hashes, query_hashes, batch_size,
                  nprobe, target_recall, index):
    metric = _check_metric(metric)
    k = _check_pos_int("k", k)
    batch_size = _check_pos_int("batch_size", batch_size)
    if nprobe is not None:
        nprobe = _check_pos_int("nprobe", nprobe)
    if not (0.0 < float(target_recall) <= 1.0):
        raise ImprintError(f"target_recall must be in (0, 1], got {target_recall!r}")
    b = _as_matrix("base", base, check_finite=isinstance(index, str))
    same = queries is base
    q = b if same else _as_matrix("queries", queries)
    if same and not isinstance(index, str):
        _as_matrix("queries", q)
    if q.shape[1] != b.shape[1]:
        raise ImprintError(f"dimension mismatch: base has d={b.shape[1]}, queries have d={q.shape[1]}")
    if exclude_self and q.shape[0] != b.shape[0]:
        raise ImprintError(f"exclude_self=True needs queries to be the base rows ({q.shape[0]} != {b.shape[0]})")
    codes = None
    if base_hashes is not None or query_hashes is not None:
        if base_hashes is None:
            raise ImprintError("query_hashes given without base_hashes")
        if query_hashes is None:
            if not exclude_self:
                raise ImprintError("query_hashes is required unless exclude_self=True")
            query_hashes = base_hashes
        codes = _hash_codes(base_hashes, query_hashes, b.shape[0], q.shape[0])
    return metric, k, batch_size, nprobe, b, q, same, codes


def knn_stream(base: Any, queries: Any, k: int, *, metric: str = "l2", index: Any = "auto",
               exclude_self: bool = False, base_hashes: Sequence | None = None,
               query_hashes: Sequence | None = None, use_gpu: Any = "auto", batch_size: int = 65536,
               nprobe: int | None = None, ef_search: int | None = None, random_state: int = 0,
               target_recall: float = 0.95, memory_budget: float = DEFAULT_MEMORY_BUDGET,
               exact_distances: bool = True, n_threads: int | None = None,
               info: dict | None = None) -> Iterator[KnnBatch]:
    """k nearest neighbours, yielded per query batch of ``batch_size`` rows.

    Inputs are validated and the index is built when this function is called;
    the returned iterator then searches one batch per step, so peak memory is
    the index plus O(batch_size * k) (plus the inputs themselves).

    Parameters
    ----------
    base : array-like float [M, d]
        Vectors searched in.
    queries : array-like float [N, d]
        Query vectors (may be ``base`` itself).
    k : int
        Neighbours per query (>= 1).  Rows are padded (idx -1, dist inf) when
        fewer than ``k`` neighbours exist.
    metric : {"l2", "cosine"}
        Squared L2, or ``1 - cos`` on normalised copies (inner-product index).
    index : "auto", str or faiss.Index
        ``"auto"`` (:func:`choose_index`), a FAISS factory string, or an index
        from :func:`build_index` built on this ``base`` with the same metric.
    exclude_self : bool
        Within-store search (``queries`` are the base rows): drop neighbour
        ``i`` from row ``i``, and every base row whose hash equals the query's
        hash when hashes are given.
    base_hashes, query_hashes : sequence of hashable or None
        Content hashes (``len M`` / ``len N``).  When given, base rows with the
        same hash as the query are excluded (exact duplicates).  With
        ``exclude_self=True`` ``query_hashes`` defaults to ``base_hashes``.
    use_gpu : "auto" or bool
    batch_size : int
        Queries per FAISS call / yielded batch.
    nprobe, ef_search : int or None
        Override the calibrated IVF ``nprobe`` / HNSW ``efSearch``.
    random_state : int
        Seeds the training and calibration samples.
    target_recall : float
        Recall@k the calibration aims for (measured on a query sample).
    memory_budget : float
        Bytes for index codes before "auto" compresses (SQ8/PQ).
    exact_distances : bool
        Recompute the returned distances exactly in float64 (default True).
    n_threads : int or None
        FAISS threads (default: ``$IMPRINT_THREADS``, ``$OMP_NUM_THREADS`` or CPU affinity).
    info : dict or None
        If given, filled with a JSON-able description of the index used.

    Yields
    ------
    KnnBatch
        ``(start, dist float32[b, k], idx int64[b, k])`` in query order.
    """
    _require_faiss()
    metric, k, batch_size, nprobe, b, q, same, codes = _validate_knn(
        base, queries, k, metric, exclude_self, base_hashes, query_hashes, batch_size, nprobe,
        target_recall, index)
    if ef_search is not None:
        ef_search = _check_pos_int("ef_search", ef_search)
    _set_threads(n_threads)
    m, n = b.shape[0], q.shape[0]
    prep = _prepare(b, metric, index, use_gpu, int(random_state), n, memory_budget, float(target_recall),
                    None if (exclude_self or same) else q, k)
    kind = prep.info.get("index_kind") or _index_kind(prep.index)
    prep.info["index_kind"] = kind
    if nprobe is not None and kind == "ivf":
        _set_param(prep.index, "nprobe", nprobe, prep.on_gpu)
        prep.info["nprobe"] = nprobe
    if ef_search is not None and kind == "hnsw":
        _set_param(prep.index, "efSearch", ef_search, prep.on_gpu)
        prep.info["efSearch"] = ef_search
    key = {"ivf": "nprobe", "hnsw": "efSearch"}.get(kind)
    if key is not None and key not in prep.info:
        val = _get_param(prep.index, kind)
        if val is not None:
            prep.info[key] = val
    if info is not None:
        info.update(prep.info)
    # how many extra candidates the exclusions can eat
    if codes is not None:
        bc, qc = codes
        counts = np.bincount(bc, minlength=1) if bc.size else np.zeros(1, dtype=np.int64)
        dup_per_query = np.where(qc >= 0, counts[np.clip(qc, 0, None)], 0)
    else:
        bc = qc = dup_per_query = None

    def _gen() -> Iterator[KnnBatch]:
        for s in range(0, n, batch_size):
            e = min(n, s + batch_size)
            qb = q[s:e]
            if metric == "cosine":
                qb = _normalised(qb)
            extra = 1 if exclude_self else 0
            if dup_per_query is not None and e > s:
                extra = max(extra, int(dup_per_query[s:e].max()))
            kk = min(max(m, 1), k + extra)
            dist, idx = _search_block(prep, np.ascontiguousarray(qb), kk, exact_distances)
            excl = np.zeros(idx.shape, dtype=bool)
            if exclude_self:
                excl |= idx == np.arange(s, e, dtype=np.int64)[:, None]
            if bc is not None:
                excl |= (idx >= 0) & (bc[np.clip(idx, 0, None)] == qc[s:e, None])
            if excl.any():
                dist = np.where(excl, np.inf, dist)
                idx = np.where(excl, -1, idx)
                dist, idx = _sort_rows(dist, idx)
            if idx.shape[1] < k:
                pad = k - idx.shape[1]
                dist = np.concatenate([dist, np.full((e - s, pad), np.inf)], axis=1)
                idx = np.concatenate([idx, np.full((e - s, pad), -1, dtype=np.int64)], axis=1)
            yield KnnBatch(s, dist[:, :k].astype(np.float32), np.ascontiguousarray(idx[:, :k]))

    return _gen()


def knn(base: Any, queries: Any, k: int, *, metric: str = "l2", index: Any = "auto",
        exclude_self: bool = False, base_hashes: Sequence | None = None,
        query_hashes: Sequence | None = None, use_gpu: Any = "auto", batch_size: int = 65536,
        nprobe: int | None = None, random_state: int = 0, return_info: bool = False,
        **kwargs: Any):
    """k nearest neighbours of each query among ``base``.

    Parameters are those of :func:`knn_stream` (``ef_search``, ``target_recall``,
    ``memory_budget``, ``exact_distances``, ``n_threads`` pass through ``kwargs``).

    Returns
    -------
    dist : float32 [N, k]
        Squared L2 (``metric="l2"``) or ``1 - cos`` (``"cosine"``), ascending per
        row; ``inf`` for padding.
    idx : int64 [N, k]
        Row indices into ``base``; ``-1`` for padding.
    info : dict
        Only with ``return_info=True``: the index used (factory, nprobe, recall calibration).
    """
    info: dict = {}
    it = knn_stream(base, queries, k, metric=metric, index=index, exclude_self=exclude_self,
                    base_hashes=base_hashes, query_hashes=query_hashes, use_gpu=use_gpu,
                    batch_size=batch_size, nprobe=nprobe, random_state=random_state, info=info,
                    **kwargs)
    n = np.asarray(queries).shape[0]
    dist = np.empty((n, k), dtype=np.float32)
    idx = np.empty((n, k), dtype=np.int64)
    for batch in it:
        e = batch.start + batch.idx.shape[0]
        dist[batch.start : e] = batch.dist
        idx[batch.start : e] = batch.idx
    return (dist, idx, info) if return_info else (dist, idx)


# --------------------------------------------------------------------------- #
# Parquet output
# --------------------------------------------------------------------------- #
def _check_ids(name: str, ids: Any, n: int) -> np.ndarray | None:
    if ids is None:
        return None
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != n or arr.dtype.kind not in "iu":
        raise ImprintError(f"{name} must be a 1-D integer array of length {n}")
    return arr.astype(np.int64)


def knn_to_parquet(path: str | os.PathLike, base: Any, queries: Any, k: int, *,
                   query_ids: Any = None, base_ids: Any = None, keep_padding: bool = False,
                   row_group_size: int = 1 << 20, **knn_kwargs: Any) -> dict:
    """Stream the k-NN table of ``queries`` against ``base`` into a Parquet file.

    Columns: ``query_id int64, neighbor_id int64, rank int32, distance float32``;
    ``rank`` is 1 for the nearest neighbour.  Padding entries (fewer than ``k``
    neighbours) are left out unless ``keep_padding``.  The file is written to a
    temporary file in the same folder, fsynced and moved into place with
    ``os.replace`` (readers never see a partial file).  The schema metadata key
    ``b"imprint.knn"`` holds the JSON index description.

    Parameters
    ----------
    path : str or PathLike
        Output ``.parquet`` file.
    base, queries, k
        As in :func:`knn`.
    query_ids, base_ids : int array-like or None
        Ids written instead of the row numbers (length N / M).
    keep_padding : bool
        Also write the ``-1`` / ``inf`` padding rows.
    row_group_size : int
        Maximum rows per Parquet row group.
    **knn_kwargs
        Passed to :func:`knn_stream` (``metric``, ``index``, ``exclude_self``, ``batch_size``...).

    Returns
    -------
    dict
        ``{"path", "rows", "queries", "k", "index": info}``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    row_group_size = _check_pos_int("row_group_size", row_group_size)
    info: dict = {}
    n = np.asarray(queries).shape[0] if np.ndim(queries) == 2 else 0
    m = np.asarray(base).shape[0] if np.ndim(base) == 2 else 0
    qids = _check_ids("query_ids", query_ids, n)
    bids = _check_ids("base_ids", base_ids, m)
    stream = knn_stream(base, queries, k, info=info, **knn_kwargs)
    meta = {"k": int(k), **{kk: v for kk, v in info.items()}}
    schema = pa.schema([("query_id", pa.int64()), ("neighbor_id", pa.int64()), ("rank", pa.int32()),
                        ("distance", pa.float32())],
                       metadata={b"imprint.knn": json.dumps(meta, default=str).encode()})
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ImprintError(f"output folder does not exist: {folder}")
    fd, tmp = tempfile.mkstemp(prefix=".knn-", suffix=".parquet.tmp", dir=folder)
    rows = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            writer = pq.ParquetWriter(fh, schema)
            try:
                for batch in stream:
                    b, kk = batch.idx.shape
                    qcol = np.repeat(np.arange(batch.start, batch.start + b, dtype=np.int64), kk)
                    ncol = batch.idx.reshape(-1)
                    rcol = np.tile(np.arange(1, kk + 1, dtype=np.int32), b)
                    dcol = batch.dist.reshape(-1)
                    if not keep_padding:
                        keep = ncol >= 0
                        qcol, ncol, rcol, dcol = qcol[keep], ncol[keep], rcol[keep], dcol[keep]
                    if qids is not None:
                        qcol = qids[qcol]
                    if bids is not None:
                        ncol = np.where(ncol >= 0, bids[np.clip(ncol, 0, None)], -1)
                    table = pa.table({"query_id": qcol, "neighbor_id": ncol, "rank": rcol,
                                      "distance": dcol}, schema=schema)
                    writer.write_table(table, row_group_size=row_group_size)
                    rows += table.num_rows
            finally:
                writer.close()
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # persist the rename
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - platforms without directory fsync
        pass
    return {"path": path, "rows": rows, "queries": n, "k": int(k), "index": info}


# --------------------------------------------------------------------------- #
# cost model
# --------------------------------------------------------------------------- #
def cost_model_text() -> str:
    """How search time and memory grow with the problem size, and where the index type switches.

    Returns
    -------
    str
        A plain-text paragraph (also in ``benchmarks/RESULTS.md``, search).
    """
    return (
        "Cost model (M base vectors, N queries, dimension d, k neighbours; real images R, generated G).\n"
        "Exact (Flat): time ~ N*M*d multiply-adds (BLAS; ~2-6e10/s on 2 CPU cores, i.e. "
        "1000 x 1M x 128 in ~4.5 s), memory 4*M*d bytes for the vectors + 8*N*k*2 for results; "
        "k only adds an O(N*M*log k) selection term.\n"
        "IVF{nlist},Flat (nlist ~ 4*sqrt(M)): build ~ (40*nlist)*nlist*d*iters (k-means) + M*nlist*d "
        "(assignment); query ~ N*(nlist + nprobe*M/nlist)*d, i.e. per query ~ 4*sqrt(M)*d + nprobe*sqrt(M)/4*d "
        "-- sub-linear in M; memory 4*M*d + 8*M bytes (SQ8: M*d + 8*M, PQm: M*m + 8*M).\n"
        "HNSW32: build ~ M*log(M)*efConstruction*d (slow on few cores), query ~ efSearch*log(M)*d, "
        "memory 4*M*d + ~2*32*4*M bytes.\n"
        "Membership (generated -> real and real -> generated): M=R, N=G and M=G, N=R; work R*G*d each. "
        "Within-store duplicate/attribution graphs: N=M=G, work G^2*d -- the quadratic term that forces "
        "approximate search first.\n"
        f"Switch rule ('auto'): exact while M < {AUTO_MIN_M_APPROX:,} or N*M*d <= {AUTO_EXACT_MAX_WORK:.0e} "
        "(a few seconds on this CPU); otherwise IVF-Flat if 4*M*d bytes fit the memory budget "
        f"({DEFAULT_MEMORY_BUDGET / 1024**3:.0f} GiB), else IVF-SQ8, else IVF-PQ; nprobe calibrated for "
        "recall@k >= 0.95. On a GPU, exact search stays competitive ~50-100x longer (move the threshold up)."
    )
