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
``use_gpu="auto"`` follows the process-wide device choice (:mod:`engine.device`, ``--device``: FAISS runs on
the GPU only when a trial GPU index really works there); ``use_gpu=True`` requires a GPU, ``False`` forbids it.
On the GPU (:mod:`engine.search.gpu`): one ``StandardGpuResources`` per GPU per process; a trained index is
cloned onto one GPU or sharded over all (a sharded index is filled with a single ``add``); ``float16=True``
stores vectors in float16 (GPU: ``useFloat16``; CPU: an ``SQfp16`` codec), candidates re-ranked exactly;
``k > 2048`` searches a CPU copy of the index (never a truncated GPU result); ``nprobe`` is capped at 2048;
IVF-PQ code sizes are limited to those GPU IVF-PQ supports.  Index types FAISS cannot put on a GPU (HNSW, or
an IVF-PQ the GPU rejects) stay on the CPU under ``"auto"`` and are an error with ``use_gpu=True``.

Package layout: ``common`` (constants, validation), ``gpu`` (placement and limits), ``index`` (choice and
construction), ``tune`` (recall calibration), ``block`` (searching one block), ``stream`` (the entry points).
"""

from __future__ import annotations

from .block import _exact_distances, _search_block, _sort_rows
from .common import (AUTO_EXACT_MAX_WORK, AUTO_MIN_M_APPROX, CALIBRATION_MARGIN, CALIBRATION_QUERIES,
                     DEFAULT_MEMORY_BUDGET, TRAIN_POINTS_PER_LIST, KnnBatch, _as_matrix, _normalised, _Prepared,
                     faiss)
from .gpu import GPU_MAX_K, GPU_MAX_NPROBE
from .index import _pq_m, _prepare, _refine_factor, build_index, choose_index
from .stream import knn, knn_stream, knn_to_parquet
from .tune import _calibrate, _drop_self, recall_at_k

__all__ = [
    "AUTO_EXACT_MAX_WORK",
    "AUTO_MIN_M_APPROX",
    "DEFAULT_MEMORY_BUDGET",
    "GPU_MAX_K",
    "GPU_MAX_NPROBE",
    "KnnBatch",
    "build_index",
    "choose_index",
    "cost_model_text",
    "knn",
    "knn_stream",
    "knn_to_parquet",
    "recall_at_k",
]


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
