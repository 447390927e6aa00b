"""FAISS on GPUs: placement, the GPU limits (k, nprobe, IVF-PQ sub-quantizers), one resources object per GPU.

* **Placement** (:func:`to_gpu`): a trained CPU index is cloned onto one GPU (``index_cpu_to_gpu`` with the
  process's resources) or sharded over all of them (``index_cpu_to_gpu_multiple`` -> ``IndexShards``);
  ``float16=True`` stores the vectors / IVF lists in float16 (``GpuClonerOptions.useFloat16``).
* **Filling** (:func:`fill`): a sharded index with successive ids accepts a single ``add()`` only (FAISS
  ``IndexShards``: "only add() in a single pass is supported"), so it is filled in one call; other indexes are
  filled in chunks.
* **k limit**: GPU k-selection handles ``k <= GPU_MAX_K`` (2048).  Larger searches go to a CPU copy of the
  index (cached, same nprobe), never to a clamped, padded GPU result.
* **nprobe limit**: GPU IVF searches ``nprobe <= GPU_MAX_NPROBE`` (2048); calibration stops there and an
  explicit larger value is capped (recorded in the index info).
* **IVF-PQ**: GPU IVF-PQ accepts only some code sizes ``m`` (bytes per vector) and sub-vector dimensions
  ``d/m``; :func:`pq_ok` checks a factory string and ``choose_index(..., gpu=True)`` picks a valid ``m``.
* **Resources**: :func:`resources` creates one ``StandardGpuResources`` per GPU per process (temporary
  memory, streams and cuBLAS handles are expensive) and every index build reuses them.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np

from imprint.engine.errors import ImprintError

from . import common

#: FAISS GPU k-selection limit (GPU_MAX_SELECTION_K)
GPU_MAX_K = 2048
#: FAISS GPU IVF nprobe limit
GPU_MAX_NPROBE = 2048
#: bytes per code (sub-quantizers) that GPU IVF-PQ supports
GPU_PQ_M = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
#: sub-vector dimensions (d / m) that GPU IVF-PQ supports
GPU_PQ_SUBDIM = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32)
#: above this many bytes per code GPU IVF-PQ needs float16 lookup tables
GPU_PQ_M_FLOAT32_MAX = 48

_RES_LOCK = threading.Lock()
_RESOURCES: list = []


def _gpu_count() -> int:
    """Number of GPUs visible to FAISS (0 for faiss-cpu); cheap."""
    fn = getattr(common.faiss, "get_num_gpus", None)
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
        return _auto_gpu()
    if isinstance(use_gpu, (bool, np.bool_)):
        if use_gpu and _gpu_count() == 0:
            raise ImprintError("use_gpu=True but FAISS sees no GPU (install faiss-gpu or use use_gpu='auto')")
        if use_gpu:
            # the same trial as "auto" (cached per process): a faiss-gpu build without kernels for this GPU aborts
            # the process on its first search, so it must fail here, as one line, instead
            from imprint.engine.device import faiss_gpu_trial

            ok, why = faiss_gpu_trial()
            if not ok:
                raise ImprintError(f"use_gpu=True but FAISS cannot search on this GPU: {why}")
        return bool(use_gpu)
    raise ImprintError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}")


def _auto_gpu() -> bool:
    """``use_gpu="auto"``: the process-wide device choice (a real trial, :mod:`engine.device`)."""
    if _gpu_count() == 0:
        return False
    from imprint.engine.device import active

    return active().faiss == "cuda"


def resources(n: int | None = None) -> list:
    """The process's ``StandardGpuResources``, one per GPU (created on first use, then reused).

    Parameters
    ----------
    n : int or None
        How many GPUs' resources are needed (None: all GPUs FAISS sees).

    Returns
    -------
    list of faiss.StandardGpuResources
    """
    want = _gpu_count() if n is None else int(n)
    with _RES_LOCK:
        while len(_RESOURCES) < want:
            _RESOURCES.append(common.faiss.StandardGpuResources())
        return list(_RESOURCES[:want])


def cloner_options(float16: bool, shard: bool):
    """``GpuMultipleClonerOptions`` with float16 storage (vectors / IVF lists) and sharding set."""
    co = common.faiss.GpuMultipleClonerOptions()
    co.shard = bool(shard)
    co.useFloat16 = bool(float16)
    if hasattr(co, "useFloat16CoarseQuantizer"):
        co.useFloat16CoarseQuantizer = False
    return co


def to_gpu(cpu_index: Any, *, float16: bool = False, n_gpus: int | None = None) -> Any:
    """Clone a trained (empty or filled) CPU index onto one GPU or shard it over ``n_gpus`` GPUs.

    Uses the process's :func:`resources` (never new ones per build).
    """
    res = resources(n_gpus)
    if not res:
        raise ImprintError("FAISS sees no GPU")
    co = cloner_options(float16, shard=len(res) > 1)
    f = common.faiss
    if len(res) == 1:
        return f.index_cpu_to_gpu(res[0], 0, cpu_index, co)
    return f.index_cpu_to_gpu_multiple_py(res, cpu_index, co=co, gpus=list(range(len(res))))


def is_sharded(index: Any) -> bool:
    """True for an ``IndexShards`` (or a wrapper of one), which accepts a single ``add()`` only."""
    name = type(common.faiss.downcast_index(index)).__name__ if hasattr(index, "this") else type(index).__name__
    return "Shards" in name


def fill(index: Any, base: np.ndarray, chunk: int = 262144) -> None:
    """Add ``base`` (float32 [M, d]) to ``index``: one ``add()`` for a sharded index, else ``chunk`` rows at a time."""
    m = base.shape[0]
    if is_sharded(index):
        index.add(base)
        return
    for s in range(0, m, chunk):
        index.add(base[s : s + chunk])


def pq_m_of(factory: str) -> int | None:
    """Bytes per code of an IVF-PQ factory string (``"IVF1024,PQ32"`` -> 32; ``PQ32x8`` -> 32), else None."""
    m = re.search(r"(?:^|,)PQ(\d+)(?:x(\d+))?", factory.upper().replace(" ", ""))
    if not m or "IVF" not in factory.upper():
        return None
    return int(m.group(1))


def pq_m_ok(m: int, d: int) -> bool:
    """Can GPU IVF-PQ use ``m`` sub-quantizers on dimension ``d`` (float32 lookup tables)?"""
    return (m in GPU_PQ_M and m <= GPU_PQ_M_FLOAT32_MAX and d % m == 0 and (d // m) in GPU_PQ_SUBDIM)


def pq_ok(factory: str, d: int) -> tuple[bool, str]:
    """Is ``factory`` acceptable to GPU IVF-PQ?  Returns ``(ok, reason)`` (non-PQ strings are ok)."""
    m = pq_m_of(factory)
    if m is None or pq_m_ok(m, d):
        return True, ""
    return False, (f"GPU IVF-PQ supports PQm with m in {[x for x in GPU_PQ_M if x <= GPU_PQ_M_FLOAT32_MAX]} "
                   f"and d/m in {list(GPU_PQ_SUBDIM)}; {factory!r} has m={m}, d/m={d / m:g}")


def nprobe_candidates(nlist: int, on_gpu: bool) -> list[int]:
    """nprobe values the calibration tries: powers of two below ``nlist`` then ``nlist``; capped on a GPU."""
    cands = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384) if p < nlist]
    cands.append(max(1, int(nlist)))
    if on_gpu:
        cands = sorted({min(p, GPU_MAX_NPROBE) for p in cands})
    return cands


def search_k_limited(prep: Any, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(q, k)`` that honours the GPU k limit: a GPU index searches ``k <= GPU_MAX_K`` itself; a
    larger k is searched on a CPU copy of the index (made once, same nprobe), so no row is ever truncated."""
    if not prep.on_gpu or k <= GPU_MAX_K:
        return prep.index.search(q, k)
    cpu = prep.cpu_copy
    if cpu is None:
        cpu = cpu_copy(prep.index)
        nprobe = prep.info.get("nprobe")
        if nprobe is not None:
            try:
                common.faiss.ParameterSpace().set_index_parameter(cpu, "nprobe", int(nprobe))
            except Exception:  # pragma: no cover - not an IVF index
                pass
        prep.cpu_copy = cpu
    return cpu.search(q, k)


def cpu_copy(index: Any) -> Any:
    """A CPU copy of a GPU index (``index_gpu_to_cpu``)."""
    return common.faiss.index_gpu_to_cpu(index)
