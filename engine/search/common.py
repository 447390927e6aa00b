"""Shared pieces of :mod:`engine.search`: constants, FAISS import, validation and index introspection."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from imprint.engine.errors import ImprintError

try:  # pragma: no cover - import guard
    import faiss
except ImportError as _exc:  # pragma: no cover
    faiss = None
    _FAISS_IMPORT_ERROR = _exc
else:
    _FAISS_IMPORT_ERROR = None

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
    cpu_copy: Any = None  # CPU copy of a GPU index, for searches with k above the GPU limit



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
